"""From a ``KV_orders`` message to a row change, and a batch of changes applied with its checkpoint.

A message is one revision of one order: a document (upsert) or a delete/purge marker (remove).
Only the fields the read model keeps are decoded (a view, not ``Order``): faster, and a document
written by a newer node with fields or statuses this one does not know still projects.

Rows are written upsert-if-newer by revision, so applying a revision twice or an older one after
a newer one changes nothing; the checkpoint moves in the same transaction (compare-and-set), so
the rows and the checkpoint never disagree. Product rows and counts follow by triggers
(``schema``), only when a row really changes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Final

import aiosqlite
import msgspec
from nats.aio.msg import Msg

from nodeapp.readmodel.schema import db_time, move_checkpoint, transaction
from nodeapp.readmodel.stream import KV_PREFIX

log = logging.getLogger("orderflow.readmodel")

REMOVING_OPERATIONS: Final = frozenset({"DEL", "PURGE"})
_MICROSECOND: Final = timedelta(microseconds=1)

# order_id, status, current_step, customer_id, amount, start_time, complete_time, latency_us,
# products (JSON), revision
Row = tuple[str, str, str, str, str | None, str, str | None, int | None, str, int]

UPSERT_ORDER: Final = """
INSERT INTO orders (order_id, status, current_step, customer_id, amount, start_time,
                    complete_time, latency_us, products, revision)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (order_id) DO UPDATE SET
    status = excluded.status, current_step = excluded.current_step,
    customer_id = excluded.customer_id, amount = excluded.amount,
    start_time = excluded.start_time, complete_time = excluded.complete_time,
    latency_us = excluded.latency_us, products = excluded.products,
    revision = excluded.revision
WHERE excluded.revision > orders.revision
"""
REMOVE_ORDER: Final = "DELETE FROM orders WHERE order_id = ? AND revision < ?"
_products = msgspec.json.Encoder()


UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]  # a time without a zone is bad data


class _ItemView(msgspec.Struct):
    product_id: str


class _OrderView(msgspec.Struct):
    """The part of the order document (``nodeapp.orders.model.Order``) the read model keeps."""

    status: str
    current_step: str
    start_time: UtcTime
    complete_time: UtcTime | None
    customer_id: str
    items: list[_ItemView]
    amount: Decimal | None = None


_view = msgspec.json.Decoder(_OrderView)


class Upsert(msgspec.Struct, frozen=True):
    row: Row

    @property
    def order_id(self) -> str:
        return self.row[0]


class Remove(msgspec.Struct, frozen=True):
    order_id: str
    revision: int


Change = Upsert | Remove


def change_of(order_id: str, data: bytes, headers: dict[str, str] | None, seq: int) -> Change:
    """The change one revision makes; ``msgspec.DecodeError`` (or ``ValidationError``) for a
    document that is not an order."""
    if (headers and headers.get("KV-Operation") in REMOVING_OPERATIONS) or not data:
        return Remove(order_id, seq)
    view = _view.decode(data)
    latency = None
    if view.complete_time is not None:
        latency = (view.complete_time - view.start_time) // _MICROSECOND
    row: Row = (
        order_id,
        view.status,
        view.current_step,
        view.customer_id,
        None if view.amount is None else str(view.amount),
        db_time(view.start_time),
        None if view.complete_time is None else db_time(view.complete_time),
        latency,
        _products.encode(sorted({item.product_id for item in view.items})).decode(),
        seq,
    )
    return Upsert(row)


class Folded(msgspec.Struct, frozen=True):
    changes: list[Change]  # at most one per order: its last
    upto: int  # the last stream sequence folded in
    count: int  # stream messages folded in
    bad: int  # of those, revisions that were not an order document (logged)


def fold(batch: list[Msg], after: int) -> Folded:
    """What a batch of ``KV_orders`` messages changes after stream sequence ``after`` (an
    ordered consumer's reset can deliver a message again); an order's last change wins."""
    changes: dict[str, Change] = {}
    upto, count, bad = after, 0, 0
    for msg in batch:
        seq = msg.metadata.sequence.stream
        if seq <= upto:
            continue
        upto, count = seq, count + 1
        order_id = msg.subject[len(KV_PREFIX) :]
        try:
            changes[order_id] = change_of(order_id, msg.data, msg.headers, seq)
        except msgspec.DecodeError as exc:
            bad += 1
            log.error(  # noqa: TRY400 - the revision is bad data, a traceback adds nothing
                "undecodable order revision %d: %s",
                seq,
                exc,
                extra={"event": "readmodel.bad_revision", "order_id": order_id},
            )
    return Folded(list(changes.values()), upto, count, bad)


async def apply_batch(
    db: aiosqlite.Connection, changes: Sequence[Change], expected: int, upto: int
) -> None:
    """Apply ``changes`` (at most one per order) and move the checkpoint ``expected`` ->
    ``upto``, all in one transaction; ``CheckpointMoved`` (nothing applied) if another writer
    moved it."""
    upserts = [c for c in changes if isinstance(c, Upsert)]
    removes = [c for c in changes if isinstance(c, Remove)]
    async with transaction(db):
        await move_checkpoint(db, expected, upto)
        if upserts:
            await db.executemany(UPSERT_ORDER, [u.row for u in upserts])
        if removes:
            await db.executemany(REMOVE_ORDER, [(r.order_id, r.revision) for r in removes])
