"""Order documents in the KV bucket ``orders``, written by compare-and-set.

The first write is ``create`` (fails if the key exists); every later write is
``update(..., last=revision)``, so a writer that read a stale document loses instead of
overwriting someone else's progress.

Each revision also carries the order's status in a header (``Orderflow-Status``), stored with
it: the reconciler follows the bucket's headers only (ADR 0019) and learns which orders are
still open without reading a document.
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
from nodeapp.broker.requests import Replies
from nodeapp.broker.resources import ORDERS_BUCKET
from nodeapp.core.errors import OrderExists, OrderNotFound, RevisionConflict
from nodeapp.orders.model import Order, decode_order, encode

HISTORY_TIMEOUT: Final = 5.0  # seconds to wait for the next revision of a history read
STATUS_HEADER: Final = "Orderflow-Status"  # the order's status, stored with each revision
ORDERS_KV_STREAM: Final = f"KV_{ORDERS_BUCKET}"
KV_OPERATION: Final = "KV-Operation"
REMOVED: Final = frozenset({"DEL", "PURGE"})  # a delete or purge marker: no document


class HistoryEntry(msgspec.Struct):
    """One stored revision; ``order`` is None for a delete marker, ``time`` is when the broker
    stored it."""

    revision: int | None
    order: Order | None
    time: datetime | None = None


class OrderStore:
    """Reads and compare-and-set writes of order documents; translates KV errors into ours.

    Requests go through ``replies`` (``nodeapp.broker.requests``); reads are direct gets when
    the bucket allows them (``direct``: one replica, ADR 0019), else the JSON API's."""

    def __init__(self, kv: KeyValue, replies: Replies, *, direct: bool = False) -> None:
        self.kv = kv
        self.replies = replies
        self.direct = direct
        self._subject = f"$KV.{ORDERS_BUCKET}."

    async def get(self, order_id: str) -> Order:
        with broker_errors(f"reading order {order_id}"):
            if self.direct:
                value, revision = await self._direct_get(order_id)
            else:
                try:
                    entry = await self.kv.get(order_id)
                except nats.js.errors.KeyNotFoundError:
                    raise OrderNotFound(order_id) from None
                value, revision = entry.value, entry.revision
        if not value:
            raise OrderNotFound(order_id)
        order = decode_order(value)
        order.revision = revision
        return order

    async def _direct_get(self, order_id: str) -> tuple[bytes | None, int | None]:
        msg = await self.replies.direct_get(ORDERS_KV_STREAM, self._subject + order_id)
        if msg is None or not msg.headers or msg.headers.get(KV_OPERATION) in REMOVED:
            return None, None
        return msg.data, int(msg.headers["Nats-Sequence"])

    async def create(self, order: Order) -> int:
        """Store a new document; ``OrderExists`` if the id is taken."""
        order.revision = None
        with broker_errors(f"creating order {order.order_id}"):
            try:
                revision = await self._write(order, 0)
            except nats.js.errors.KeyWrongLastSequenceError:
                # A withdrawn order's id is free again: its delete marker is the last revision.
                revision = await self._write(order, await self._deleted_at(order.order_id))
        order.revision = revision
        return revision

    async def _deleted_at(self, order_id: str) -> int:
        """The revision of the key's delete marker; ``OrderExists`` if it holds a document."""
        try:
            await self.kv.get(order_id)
        except nats.js.errors.KeyNotFoundError as exc:
            if exc.entry is not None and exc.entry.revision:
                return int(exc.entry.revision)
        raise OrderExists(order_id)

    async def _write(self, order: Order, last: int, document: bytes | None = None) -> int:
        """``KeyValue.update`` with the status header stored alongside the document."""
        subject = self._subject + order.order_id
        data = encode(order) if document is None else document
        return await self.replies.compare_and_set(
            subject, data, last, {STATUS_HEADER: order.status}
        )

    @staticmethod
    def encode(order: Order) -> bytes:
        """The document as stored: its revision is not part of it."""
        revision, order.revision = order.revision, None
        try:
            return encode(order)
        finally:
            order.revision = revision

    async def update(self, order: Order, document: bytes | None = None) -> int:
        """Write ``order`` if nobody wrote since ``order.revision``; sets the new revision.
        ``document``: the order as ``encode`` gives it, when the caller has it already."""
        expected = order.revision
        if expected is None:
            raise ValueError("update() needs an order read from the store")
        order.revision = None
        try:
            with broker_errors(f"updating order {order.order_id}"):
                try:
                    revision = await self._write(order, expected, document)
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
