"""The orders bucket's stream ``KV_orders`` as the projector reads it: an ordered consumer from a
stream sequence, and how far a checkpoint is behind the stream.

``kv.watch`` cannot resume from a revision, so the projector reads the stream itself; a KV
revision is its stream sequence, and ``$KV.orders.<order id>`` its subject.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, NamedTuple

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, RawStreamMsg

from nodeapp.broker.connection import ANY_NATS_ERROR, broker_errors
from nodeapp.broker.resources import ORDERS_BUCKET
from nodeapp.orders.model import utcnow
from nodeapp.readmodel.cancellation import keep_cancellation

log = logging.getLogger("orderflow.readmodel")

KV_STREAM: Final = f"KV_{ORDERS_BUCKET}"
KV_PREFIX: Final = f"$KV.{ORDERS_BUCKET}."
KV_SUBJECTS: Final = f"{KV_PREFIX}>"
HEARTBEAT: Final = 2.0  # nats-py recreates an ordered consumer after two missed heartbeats

Subscription = JetStreamContext.PushSubscription


class Lag(msgspec.Struct, frozen=True):
    """How far the read model is behind the bucket: ``messages`` is the stream's last sequence
    minus the checkpoint (0 when every later revision is gone), ``seconds`` the age of the
    oldest revision not applied yet (0 when caught up)."""

    messages: int
    seconds: float
    checkpoint: int
    stream_last_seq: int


async def follow(js: JetStreamContext, start: int) -> Subscription:
    """An ordered consumer delivering every revision from stream sequence ``start`` on.

    A cancellation waits for the subscribe to end and then unsubscribes: nats-py subscribes
    before it creates the consumer, and a subscription nobody reads holds up ``nc.drain()``.
    """
    subscribing = asyncio.ensure_future(_subscribe(js, start))
    try:
        return await asyncio.shield(subscribing)
    except asyncio.CancelledError:
        await asyncio.wait([subscribing])
        if not subscribing.cancelled() and subscribing.exception() is None:
            await unfollow(subscribing.result())
        raise


async def _subscribe(js: JetStreamContext, start: int) -> Subscription:
    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
    with broker_errors("following the orders bucket"):
        sub: Subscription = await js.subscribe(
            KV_SUBJECTS,
            stream=KV_STREAM,
            ordered_consumer=True,
            config=config,
            idle_heartbeat=HEARTBEAT,
        )
    return sub


async def next_message(sub: Subscription, wait: float) -> Msg | None:
    """The next message, or None after ``wait`` seconds.

    nats-py waits (here, and in its requests) with ``wait_for``, which returns an answer that
    arrives together with a cancellation and drops the cancellation (Python 3.11). Every wait of
    the projector passes here, so a dropped cancellation is put back before waiting and before
    a message is used.
    """
    keep_cancellation()
    with broker_errors("following the orders bucket"):
        try:
            msg: Msg = await sub.next_msg(timeout=wait)
        except nats.errors.TimeoutError:
            keep_cancellation()
            return None
    keep_cancellation()
    return msg


async def unfollow(sub: Subscription) -> None:
    try:
        await sub.unsubscribe()
    except ANY_NATS_ERROR as exc:  # the ephemeral consumer ends with its inactivity threshold
        log.warning(
            "could not stop following the orders bucket: %r",
            exc,
            extra={"event": "readmodel.unsubscribe_failed"},
        )


async def stream_identity(js: JetStreamContext) -> tuple[int, str | None]:
    """The stream's last sequence and its creation time (a recreated stream starts at 1)."""
    with broker_errors("reading the orders bucket's stream"):
        info = await js.stream_info(KV_STREAM)
    last: int = info.state.last_seq
    return last, None if info.created is None else str(info.created)


class Behind(NamedTuple):
    """Where the stream stands against a checkpoint."""

    last_seq: int
    created: str | None  # the stream's creation time: a recreated stream starts again at 1
    first: RawStreamMsg | None  # the oldest message after the checkpoint, None if none


async def behind(js: JetStreamContext, checkpoint: int) -> Behind:
    last, created = await stream_identity(js)
    if last <= checkpoint:
        return Behind(last, created, None)
    with broker_errors("reading the orders bucket's stream"):
        try:
            first = await js.get_msg(KV_STREAM, seq=checkpoint + 1, subject=KV_SUBJECTS, next=True)
        except nats.js.errors.NotFoundError:
            first = None
    return Behind(last, created, first)


async def measure_lag(js: JetStreamContext, checkpoint: int) -> Lag:
    last, _, first = await behind(js, checkpoint)
    if first is None:
        return Lag(0, 0.0, checkpoint, last)
    age = (utcnow() - first.time).total_seconds() if first.time else 0.0
    return Lag(last - checkpoint, max(0.0, age), checkpoint, last)
