"""Notifications to the customer: the ``NOTIFICATIONS`` stream, its schedules, delivery state.

One message per (order, kind) on ``notifications.<kind>``, deduplicated on ``Nats-Msg-Id``
``<order_id>:<kind>``; the ``notifier`` consumer (``nodeapp.shop.notifier``) POSTs each to the
webhook. ``order.delayed`` is a message schedule (nats-server 2.12+, ADR-51) on
``schedules.order_delayed.<order_id>`` that the server itself publishes to
``notifications.order.delayed`` at submit + SLA; purging the subject cancels it. Measured on
nats-server 2.15: a schedule fires once and is then removed, one in the past fires at once, the
fired copy keeps our headers but not ``Nats-Msg-Id``, a target outside the stream is refused.

Delivery state per (order, kind) is KV bucket ``notifications``, key
``<order_id>.<kind with _>``; the notifier writes it (the first state create-only: a key taken
means a delivery began before), ``notifications_for`` reads it. The stream, consumer and bucket
are made by ``nodeapp.shop.notify_resources``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, get_args

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import Header
from nats.js.kv import KeyValue

from nodeapp.broker.connection import broker_errors
from nodeapp.broker.requests import Replies
from nodeapp.orders.model import Contact, Order, is_order_id, utcnow
from nodeapp.shop.notify_resources import BUCKET, SCHEDULE_PREFIX, STREAM, SUBJECT_PREFIX

Kind = Literal["order.completed", "order.failed", "order.cancelled", "order.delayed"]
KINDS: Final[tuple[Kind, ...]] = get_args(Kind)
DELAYED: Final = "order.delayed"
STATE_SUBJECT: Final = f"$KV.{BUCKET}."  # + a state's key: its writes' subject
StateName = Literal["pending", "delivered", "failed", "dead", "skipped"]


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """The message on the stream, and the webhook's JSON body (DESIGN part 2). A scheduled
    ``order.delayed`` carries only its ids and time; the notifier fills in the rest."""

    notification_id: str
    kind: Kind
    order_id: str
    customer_id: str = ""
    contact: Contact | None = None
    status: str = ""
    time: datetime


class DeliveryState(msgspec.Struct, kw_only=True):
    """What became of one (order, kind): ``attempts`` counts POSTs begun."""

    notification_id: str
    kind: Kind
    order_id: str
    state: StateName
    attempts: int = 0
    last_error: str | None = None
    delivered_at: datetime | None = None
    updated_at: datetime


_encoder = msgspec.json.Encoder()
_notification_decoder = msgspec.json.Decoder(Notification)
_state_decoder = msgspec.json.Decoder(DeliveryState)


def encode(obj: Notification | DeliveryState) -> bytes:
    return _encoder.encode(obj)


def decode_notification(data: bytes) -> Notification:
    """``msgspec.DecodeError`` / ``ValidationError`` for a body that is not a notification."""
    return _notification_decoder.decode(data)


def notification_id(order_id: str, kind: str) -> str:
    return f"{order_id}:{kind}"


def state_key(order_id: str, kind: str) -> str:
    """``<order_id>.<kind with _>``: a KV key cannot hold ``:``, and ``.`` separates tokens."""
    return f"{order_id}.{kind.replace('.', '_')}"


async def publish(replies: Replies, order: Order, kind: Kind) -> None:
    """Queue ``kind`` for ``order``. Call it after the owner stored the document that makes it
    true (that compare-and-set is the epoch fence); a repeat is deduplicated by the stream for
    two minutes and by the delivery state after that. Through the process's requests
    (``nodeapp.broker.requests``, ADR 0020)."""
    note = Notification(
        notification_id=notification_id(order.order_id, kind),
        kind=kind,
        order_id=order.order_id,
        customer_id=order.customer_id,
        contact=order.contact,
        status=order.status,
        time=order.complete_time or utcnow(),
    )
    headers: dict[str, str] = {Header.MSG_ID: note.notification_id}
    with broker_errors(f"publishing {kind} for order {order.order_id}"):
        await replies.publish(SUBJECT_PREFIX + kind, encode(note), headers)


async def schedule_delayed(
    js: JetStreamContext, order_id: str, submit_time: datetime, sla: float
) -> None:
    """Have the server publish ``order.delayed`` at ``submit_time + sla`` (no task of ours
    waits). Safe to repeat: the schedule is deduplicated, and one subject holds one schedule."""
    if not is_order_id(order_id):
        raise ValueError(f"not an order id: {order_id!r}")
    due = (submit_time + timedelta(seconds=sla)).astimezone(UTC)
    note = Notification(
        notification_id=notification_id(order_id, DELAYED),
        kind=DELAYED,
        order_id=order_id,
        time=due,
    )
    headers: dict[str, str] = {
        Header.SCHEDULE: "@at " + due.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        Header.SCHEDULE_TARGET: SUBJECT_PREFIX + DELAYED,
        Header.MSG_ID: note.notification_id,  # the fired copy does not carry it
    }
    with broker_errors(f"scheduling {DELAYED} for order {order_id}"):
        await js.publish(SCHEDULE_PREFIX + order_id, encode(note), headers=headers)


async def cancel_delayed(js: JetStreamContext, order_id: str) -> None:
    """Drop the order's ``order.delayed`` schedule (the order ended); a no-op once it fired."""
    if not is_order_id(order_id):
        raise ValueError(f"not an order id: {order_id!r}")
    with broker_errors(f"cancelling {DELAYED} for order {order_id}"):
        await js.purge_stream(STREAM, subject=SCHEDULE_PREFIX + order_id)


async def read_state(kv: KeyValue, order_id: str, kind: str) -> DeliveryState | None:
    with broker_errors(f"reading the {kind} state of order {order_id}"):
        try:
            entry = await kv.get(state_key(order_id, kind))
        except nats.js.errors.KeyNotFoundError:
            return None
    return _state_decoder.decode(entry.value) if entry.value else None


async def create_state(replies: Replies, state: DeliveryState) -> bool:
    """Write the (order, kind)'s first state; False, writing nothing, when it has one already.

    A write expecting no revision, not ``KeyValue.create``: that one reads the key after a
    refusal (to re-create a deleted key; no state is ever deleted), and the caller reads it
    anyway to learn what the state is."""
    key, data = state_key(state.order_id, state.kind), encode(state)
    with broker_errors(f"writing the {state.kind} state of order {state.order_id}"):
        try:
            await replies.compare_and_set(STATE_SUBJECT + key, data, 0)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
    return True


async def write_state(replies: Replies, state: DeliveryState) -> None:
    """Last writer wins: the state reports, only ``delivered`` decides anything."""
    key, data = state_key(state.order_id, state.kind), encode(state)
    with broker_errors(f"writing the {state.kind} state of order {state.order_id}"):
        await replies.publish(STATE_SUBJECT + key, data, {})


async def notifications_for(kv: KeyValue, order_id: str) -> list[DeliveryState]:
    """``GET /orders/{id}/notifications``: the order's notifications with their delivery state,
    in kind order; one not yet tried by the notifier is not listed."""
    found = await asyncio.gather(*(read_state(kv, order_id, kind) for kind in KINDS))
    return [state for state in found if state is not None]
