"""Order documents in the KV bucket ``orders``, written by compare-and-set.

The first write is ``create`` (fails if the key exists); every later write is
``update(..., last=revision)``, so a writer that read a stale document loses instead of
overwriting someone else's progress.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

from nodeapp.broker.connection import broker_errors
from nodeapp.core.errors import OrderExists, OrderNotFound, RevisionConflict
from nodeapp.orders.model import Order, decode_order, encode

HISTORY_TIMEOUT: Final = 5.0  # seconds to wait for the next revision of a history read


class HistoryEntry(msgspec.Struct):
    """One stored revision; ``order`` is None for a delete marker, ``time`` is when the broker
    stored it."""

    revision: int | None
    order: Order | None
    time: datetime | None = None


class OrderStore:
    """Reads and compare-and-set writes of order documents; translates KV errors into ours."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def get(self, order_id: str) -> Order:
        with broker_errors(f"reading order {order_id}"):
            try:
                entry = await self.kv.get(order_id)
            except nats.js.errors.KeyNotFoundError:
                raise OrderNotFound(order_id) from None
        if entry.value is None:
            raise OrderNotFound(order_id)
        order = decode_order(entry.value)
        order.revision = entry.revision
        return order

    async def create(self, order: Order) -> int:
        """Store a new document; ``OrderExists`` if the id is taken."""
        order.revision = None
        with broker_errors(f"creating order {order.order_id}"):
            try:
                revision: int = await self.kv.create(order.order_id, encode(order))
            except nats.js.errors.KeyWrongLastSequenceError:
                raise OrderExists(order.order_id) from None
        order.revision = revision
        return revision

    async def update(self, order: Order) -> int:
        """Write ``order`` if nobody wrote since ``order.revision``; sets the new revision."""
        expected = order.revision
        if expected is None:
            raise ValueError("update() needs an order read from the store")
        order.revision = None
        try:
            with broker_errors(f"updating order {order.order_id}"):
                try:
                    revision: int = await self.kv.update(
                        order.order_id, encode(order), last=expected
                    )
                except nats.js.errors.KeyWrongLastSequenceError:
                    raise RevisionConflict(order.order_id, expected) from None
        except BaseException:
            order.revision = expected
            raise
        order.revision = revision
        return revision

    async def modify(
        self, order_id: str, change: Callable[[Order], bool], attempts: int = 5
    ) -> Order:
        """Read, ``change`` in place, compare-and-set; after a conflict, read and change again.

        For small edits that stand whatever else was written meanwhile (a dead-letter mark),
        never for driving an order. ``change`` returns False to write nothing. Returns the order
        as stored; ``RevisionConflict`` if every attempt lost, ``OrderNotFound`` without one.
        """
        for attempt in range(1, attempts + 1):
            order = await self.get(order_id)
            if not change(order):
                return order
            try:
                await self.update(order)
            except RevisionConflict:
                if attempt == attempts:
                    raise
                continue
            return order
        raise ValueError("modify() needs attempts >= 1")

    async def delete(self, order_id: str, revision: int) -> None:
        """Remove a document that must not be processed (a submit that failed half-way)."""
        with broker_errors(f"deleting order {order_id}"):
            try:
                await self.kv.delete(order_id, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                raise RevisionConflict(order_id, revision) from None

    async def history(self, order_id: str) -> list[HistoryEntry]:
        """Every stored revision of the order, oldest first (up to the bucket's 64).

        Not ``KeyValue.history``: it ends at its watcher's "no more values" marker, which nats-py
        can emit before the stored values arrive (often on a cluster, at times on a restarted
        server; nats-io/nats.py#842), and then an order that has a history gets none. Here the
        key's latest revision is read first and the watch is read up to it.
        """
        with broker_errors(f"reading history of {order_id}"):
            try:
                latest = await self.kv.get(order_id)
            except nats.js.errors.KeyNotFoundError as exc:
                if exc.entry is None:  # no revision at all; a deleted order still has history
                    raise OrderNotFound(order_id) from None
                latest = exc.entry  # the delete marker
            entries = await self._watch_history(order_id, latest.revision or 0)
        out = []
        for entry in entries:
            order = decode_order(entry.value) if entry.value else None
            if order is not None:
                order.revision = entry.revision
            # nats-py fills ``created`` from the message metadata: a datetime, despite its hint.
            stored = entry.created if isinstance(entry.created, datetime) else None
            out.append(HistoryEntry(revision=entry.revision, order=order, time=stored))
        return out

    async def _watch_history(self, order_id: str, last: int) -> list[Any]:
        """The key's entries from a history watch, up to revision ``last`` at least."""
        watcher: Any = await self.kv.watch(order_id, include_history=True)  # untyped in nats-py
        try:
            entries: list[Any] = []
            while not entries or entries[-1].revision < last:
                entry = await watcher.updates(timeout=HISTORY_TIMEOUT)
                if entry is not None:  # skip the "no more values" marker: it can come too early
                    entries.append(entry)
            return entries
        finally:
            await watcher.stop()


async def live_keys(kv: KeyValue) -> list[str]:
    """The bucket's keys that hold a value, read from its stream's subjects.

    ``KeyValue.keys()`` rides on a watcher that can end early (nats-io/nats.py#842); the stream's
    per-subject counts cannot. Deleted keys keep a marker subject, so each candidate is checked.
    """
    prefix = f"$KV.{kv._name}."  # nats-py keeps the bucket name private
    with broker_errors("listing keys"):
        info = await kv._js.stream_info(kv._stream, subjects_filter=f"{prefix}>")
        keys = []
        for subject in sorted(info.state.subjects or {}):
            key = subject[len(prefix) :]
            try:
                await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                continue  # deleted or purged
            keys.append(key)
    return keys
