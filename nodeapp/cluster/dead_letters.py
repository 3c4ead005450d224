"""Dead letters: work messages that cannot be processed are kept in ``ORDERS_DLQ``.

Two ways in. A node that cannot decode a work message, or finds no document for the order it
names, copies it and ``term()``s it (``dead_letter``). A message JetStream stopped redelivering
after ``max_deliver`` (a poison order) is reported by the max-deliveries advisory
(``nodeapp.cluster.advisories``); it is copied, the order document is marked, and the original is
deleted, because a work-queue stream would keep it forever (``move_exhausted``).

The copy keeps the original body and trace headers, adds the reason, order id, delivery count and
original sequence as headers, and goes to ``orders.dlq.<order id>`` (``orders.dlq.unknown`` without
a usable id), so one order's dead letter is found by subject. It is deduplicated on the original
sequence, so a retried copy is stored once; every step here is safe to repeat.
"""

from __future__ import annotations

import logging
from typing import Final

import msgspec
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from nodeapp.broker.connection import broker_errors
from nodeapp.broker.resources import DLQ_PREFIX, ORDERS_STREAM
from nodeapp.core.errors import OrderNotFound
from nodeapp.orders.model import DeadLetterMark, Order, decode_work, is_order_id, utcnow
from nodeapp.orders.store import OrderStore

log = logging.getLogger("orderflow.deadletter")

REASON_HEADER: Final = "Orderflow-Reason"
ORDER_HEADER: Final = "Orderflow-Order-Id"
DELIVERIES_HEADER: Final = "Orderflow-Deliveries"
SEQUENCE_HEADER: Final = "Orderflow-Stream-Seq"
UNKNOWN_ORDER: Final = "unknown"
NO_MESSAGE_FOUND: Final = 10037  # JetStream's answer to reading a message that is gone
SEQUENCE_NOT_FOUND: Final = 10043  # ... and to deleting one


def dlq_subject(order_id: str | None) -> str:
    """``orders.dlq.<id>``; an id that is not an order id could break the subject, so it is
    ``unknown`` (the header still carries it)."""
    return DLQ_PREFIX + (order_id if order_id and is_order_id(order_id) else UNKNOWN_ORDER)


def order_id_of(data: bytes) -> str | None:
    """The order a work message names, or None when it cannot be decoded."""
    try:
        return decode_work(data).order_id
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None


async def publish_dead_letter(
    js: JetStreamContext,
    data: bytes,
    *,
    reason: str,
    order_id: str | None,
    deliveries: int,
    stream_seq: int,
    headers: dict[str, str] | None = None,
) -> None:
    """Store the copy in ``ORDERS_DLQ`` (once, however often this is retried)."""
    # Keep the trace context; drop Nats-* headers, which would mean something to the DLQ stream.
    out = {k: v for k, v in (headers or {}).items() if not k.lower().startswith("nats-")}
    out.update(
        {
            REASON_HEADER: " ".join(reason.split()),  # one line: a header cannot hold a newline
            DELIVERIES_HEADER: str(deliveries),
            SEQUENCE_HEADER: str(stream_seq),
            "Nats-Msg-Id": f"dlq-{stream_seq}",
        }
    )
    if order_id:
        out[ORDER_HEADER] = " ".join(order_id.split())
    with broker_errors(f"dead-lettering {order_id or 'a work message'}"):
        await js.publish(dlq_subject(order_id), data, headers=out)


async def dead_letter(js: JetStreamContext, msg: Msg, reason: str, order_id: str | None) -> None:
    """Copy ``msg`` to the dead-letter stream, then ``term()`` it: never redelivered, and the
    work-queue stream drops it."""
    meta = msg.metadata
    await publish_dead_letter(
        js,
        msg.data,
        reason=reason,
        order_id=order_id,
        deliveries=meta.num_delivered,
        stream_seq=meta.sequence.stream,
        headers=msg.headers,
    )
    with broker_errors("term"):
        await msg.term()
    _logged(reason, order_id, meta.num_delivered, meta.sequence.stream)


class Exhausted(msgspec.Struct, frozen=True):
    """A work message JetStream gave up on, as read back from ``ORDERS``."""

    stream_seq: int
    deliveries: int
    data: bytes
    headers: dict[str, str] | None
    order_id: str | None


async def read_exhausted(
    js: JetStreamContext, stream_seq: int, deliveries: int
) -> Exhausted | None:
    """The message at ``stream_seq`` in ``ORDERS``; None once it is gone (another node moved it,
    or a late ack removed it)."""
    with broker_errors(f"reading ORDERS message {stream_seq}"):
        try:
            raw = await js.get_msg(ORDERS_STREAM, seq=stream_seq)
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code != NO_MESSAGE_FOUND:
                raise
            return None
    data = raw.data or b""
    return Exhausted(stream_seq, deliveries, data, raw.headers, order_id_of(data))


async def move_exhausted(js: JetStreamContext, store: OrderStore, msg: Exhausted) -> bool:
    """Copy, mark the order dead-lettered, delete the original; False when the order had
    finished after all (its ack was lost) and only the leftover message was removed."""
    order = await _document(store, msg.order_id)
    if order is not None and order.terminal:
        await _delete(js, msg.stream_seq)
        log.info(
            "removed an exhausted work message of a finished order",
            extra={"event": "order.leftover_removed", "order_id": msg.order_id},
        )
        return False
    reason = f"max deliveries reached ({msg.deliveries})"
    await publish_dead_letter(
        js,
        msg.data,
        reason=reason,
        order_id=msg.order_id,
        deliveries=msg.deliveries,
        stream_seq=msg.stream_seq,
        headers=msg.headers,
    )
    if order is not None:
        mark = DeadLetterMark(reason=reason, time=utcnow(), deliveries=msg.deliveries)
        await mark_dead_lettered(store, order.order_id, mark)
    await _delete(js, msg.stream_seq)
    _logged(reason, msg.order_id, msg.deliveries, msg.stream_seq)
    return True


async def mark_dead_lettered(store: OrderStore, order_id: str, mark: DeadLetterMark) -> Order:
    """Say so in the order document (compare-and-set, re-read on a conflict); an order that
    finished meanwhile is left as it is."""

    def change(order: Order) -> bool:
        if order.terminal:
            return False
        order.dead_letter = mark
        return True

    return await store.modify(order_id, change)


async def _document(store: OrderStore, order_id: str | None) -> Order | None:
    if order_id is None or not is_order_id(order_id):
        return None
    try:
        return await store.get(order_id)
    except OrderNotFound:
        return None


async def _delete(js: JetStreamContext, stream_seq: int) -> None:
    with broker_errors(f"deleting ORDERS message {stream_seq}"):
        try:
            await js.delete_msg(ORDERS_STREAM, stream_seq)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != SEQUENCE_NOT_FOUND:
                raise


def _logged(reason: str, order_id: str | None, deliveries: int, stream_seq: int) -> None:
    log.error(
        "work message dead-lettered: %s",
        reason,
        extra={
            "event": "order.dead_lettered",
            "order_id": order_id,
            "reason": reason,
            "deliveries": deliveries,
            "stream_seq": stream_seq,
        },
    )
