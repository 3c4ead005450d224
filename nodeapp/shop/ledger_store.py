"""The gateway's ledger in KV bucket ``gateway``: entries read and written by compare-and-set,
each change tried first on the copy this process last wrote or read.

Why the memory: a payment's entry is written four times in its life (authorize, decide,
delivered, capture), nearly always by the one process hosting the gateway, and each write used to
be a read and then a compare-and-set. A change is now applied to the remembered copy and
written with its revision: the broker takes the write only if nothing was written since, so the
copy was the stored entry and the outcome is exactly what a fresh read would have given. A stale
copy (another gateway process wrote) costs one refused write, then the entry is read as before.
A change that finds nothing to do or refuses (``PaymentFenced``, ``PaymentConflict``) on the
remembered copy is decided again on a fresh read, since only a landed write proves the copy
current: every answer comes from the stored entry. The changes of one payment within this
process take turns (the verdict's "delivered" and the node's capture can meet), so they never
overtake each other's copy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Final

import nats.js.errors
from nats.js.kv import KeyValue

from nodeapp.broker.connection import broker_errors
from nodeapp.core.shop_errors import (
    GatewayUnavailable,
    PaymentConflict,
    PaymentFenced,
    PaymentNotFound,
)
from nodeapp.shop.gateway_ledger import LedgerEntry, decode_entry
from nodeapp.shop.payment_messages import encode
from nodeapp.shop.payment_resources import BucketSource

CAS_ATTEMPTS: Final = 10  # compare-and-set rounds on fresh reads before a change gives up (503)
REMEMBERED: Final = 4096  # payments whose last copy is kept (~0.5 KiB each), oldest dropped

Change = Callable[[LedgerEntry], bool]  # True if it changed the entry; may raise a refusal


class LedgerStore:
    """The ledger's entries for one gateway. ``stale`` counts writes on a remembered copy that
    lost to another writer (each then took a read)."""

    def __init__(self, bucket: BucketSource, remember: int = REMEMBERED) -> None:
        self._bucket = bucket
        self._remember = remember
        self._known: dict[str, tuple[bytes, int]] = {}  # payment id -> (stored bytes, revision)
        self._turns: dict[str, tuple[asyncio.Lock, int]] = {}  # payment id -> (lock, users)
        self.stale = 0

    async def create(self, entry: LedgerEntry) -> bool:
        """Store a first entry; False (nothing written) if the payment has one already."""
        kv = await self._bucket()
        data = encode(entry)
        with broker_errors(f"authorizing payment {entry.payment_id}"):
            try:
                revision = await kv.create(entry.payment_id, data)
            except nats.js.errors.KeyWrongLastSequenceError:
                return False
        self._keep(entry.payment_id, data, revision)
        return True

    async def get(self, payment_id: str) -> LedgerEntry:
        entry, _ = await self._read(await self._bucket(), payment_id)
        return entry

    async def change(self, payment_id: str, change: Change) -> LedgerEntry:
        """The entry after ``change`` (raises what it raises on the stored entry)."""
        async with self._turn(payment_id):
            return await self._change(payment_id, change)

    @contextlib.asynccontextmanager
    async def _turn(self, payment_id: str) -> AsyncIterator[None]:
        """One change of ``payment_id`` at a time in this process; the lock lives while used."""
        lock, users = self._turns.get(payment_id) or (asyncio.Lock(), 0)
        self._turns[payment_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._turns[payment_id]
            if users == 1:
                del self._turns[payment_id]
            else:
                self._turns[payment_id] = (lock, users - 1)

    async def _change(self, payment_id: str, change: Change) -> LedgerEntry:
        kv = await self._bucket()
        if (known := self._known.get(payment_id)) is not None:
            entry = decode_entry(known[0])
            try:
                changed = change(entry)
            except (PaymentFenced, PaymentConflict):
                changed = False  # maybe only the copy is behind: decided on a fresh read below
            if changed:
                if await self._write(kv, entry, known[1]):
                    return entry
                self.stale += 1
        for _ in range(CAS_ATTEMPTS):
            entry, revision = await self._read(kv, payment_id)
            if not change(entry):
                return entry
            if await self._write(kv, entry, revision):
                return entry
        raise GatewayUnavailable(f"payment {payment_id} too contended, retry", status=503)

    async def _read(self, kv: KeyValue, payment_id: str) -> tuple[LedgerEntry, int]:
        with broker_errors(f"reading payment {payment_id}"):
            try:
                stored = await kv.get(payment_id)
            except nats.js.errors.KeyNotFoundError:
                self._known.pop(payment_id, None)
                raise PaymentNotFound(payment_id) from None
        if not stored.value:
            self._known.pop(payment_id, None)
            raise PaymentNotFound(payment_id)
        revision = stored.revision or 0
        self._keep(payment_id, stored.value, revision)
        return decode_entry(stored.value), revision

    async def _write(self, kv: KeyValue, entry: LedgerEntry, revision: int) -> bool:
        """Whether the compare-and-set on ``revision`` landed."""
        payment_id = entry.payment_id
        data = encode(entry)
        with broker_errors(f"writing payment {payment_id}"):
            try:
                written = await kv.update(payment_id, data, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                self._known.pop(payment_id, None)
                return False
        self._keep(payment_id, data, written)
        return True

    def _keep(self, payment_id: str, data: bytes, revision: int) -> None:
        known = self._known
        known.pop(payment_id, None)  # re-inserted last: the oldest is dropped first
        known[payment_id] = (data, revision)
        if len(known) > self._remember:
            del known[next(iter(known))]
