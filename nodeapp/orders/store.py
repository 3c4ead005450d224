"""Order documents in the KV bucket ``orders``, written by compare-and-set.

The first write is ``create`` (fails if the key exists); every later write is
``update(..., last=revision)``, so a writer that read a stale document loses instead of
overwriting someone else's progress.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Final

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

from nodeapp.broker.connection import broker_errors
from nodeapp.broker.kv import each_entry, stored_at
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
        can emit before the stored values arrive (nats-io/nats.py#842), and then an order that
        has a history gets none; ``each_entry`` reads until the broker has nothing pending.
        """
        reading = each_entry(self.kv, order_id, include_history=True, stall=HISTORY_TIMEOUT)
        async with contextlib.aclosing(reading) as entries:
            out = [_history_entry(entry) async for entry in entries]
        if not out:  # no revision at all; a deleted order still has its delete marker
            raise OrderNotFound(order_id)
        return out


def order_at(entry: KeyValue.Entry) -> Order | None:
    """The document a watched entry of the bucket holds, with its revision; None for a delete
    or purge marker."""
    order = decode_order(entry.value) if entry.value and not entry.operation else None
    if order is not None:
        order.revision = entry.revision
    return order


def _history_entry(entry: KeyValue.Entry) -> HistoryEntry:
    return HistoryEntry(revision=entry.revision, order=order_at(entry), time=stored_at(entry))
