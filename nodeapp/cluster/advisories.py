"""Acting on JetStream's max-deliveries advisory: the work message of a poison order.

A work-queue stream keeps a message that reached ``max_deliver`` and never delivers it again, so
its order would stall without a trace. JetStream announces it once, on core NATS, on
``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ORDERS.workers``; every node listens in one queue
group, so exactly one node moves each such message to ``ORDERS_DLQ``
(``nodeapp.cluster.dead_letters``).

JetStream sends the advisory when it would otherwise redeliver, i.e. while a pull request waits,
and a node subscribes before it pulls, so someone listens. An advisory is lost only if its node
dies while handling it; the message then stays in ``ORDERS`` (ADR 0006 says what follows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from nodeapp.broker.connection import ANY_NATS_ERROR, broker_errors
from nodeapp.broker.resources import ORDERS_STREAM, WORKERS_CONSUMER
from nodeapp.cluster.dead_letters import Exhausted, move_exhausted, read_exhausted
from nodeapp.cluster.membership import NodeStats
from nodeapp.core.errors import BrokerUnavailable, RevisionConflict
from nodeapp.orders.store import OrderStore

log = logging.getLogger("orderflow.advisories")

MAX_DELIVERIES_SUBJECT: Final = (
    f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{ORDERS_STREAM}.{WORKERS_CONSUMER}"
)
QUEUE_GROUP: Final = "orderflow-dead-letters"
ATTEMPTS: Final = 4
RETRY_PAUSE: Final = 0.5
CLOSE_GRACE: Final = 5.0
# Worth another try: the broker was away or slow, or the order document moved under us.
RETRYABLE: Final[tuple[type[BaseException], ...]] = (
    BrokerUnavailable,
    RevisionConflict,
    nats.errors.Error,
)


class MaxDeliveries(msgspec.Struct):
    """The advisory's fields we use (``io.nats.jetstream.advisory.v1.max_deliver``)."""

    stream_seq: int
    deliveries: int


_decoder: Final = msgspec.json.Decoder(MaxDeliveries)


@contextlib.asynccontextmanager
async def watch_max_deliveries(
    nc: NATS, js: JetStreamContext, store: OrderStore, stats: NodeStats, node_id: str
) -> AsyncIterator[None]:
    """Dead-letter exhausted work messages for as long as the ``async with`` lasts.

    Enter it before the node's first pull; on the way out the advisory in hand is finished
    (within a few seconds) and the rest are left to the other nodes of the queue group.
    """
    with broker_errors("subscribing to max-deliveries advisories"):
        sub = await nc.subscribe(MAX_DELIVERIES_SUBJECT, queue=QUEUE_GROUP)
        await nc.flush()  # the server knows we listen before our first pull can trigger one
    watcher = _Watcher(js, store, stats, node_id)
    task = asyncio.create_task(watcher.run(sub), name="max-deliveries")
    try:
        yield
    finally:
        try:
            await sub.unsubscribe()  # ends watcher.run() after the advisory in hand
        except ANY_NATS_ERROR:
            task.cancel()  # the connection is gone: nothing in hand can be finished anyway
        done, _ = await asyncio.wait({task}, timeout=CLOSE_GRACE)
        if not done:
            task.cancel()
            await asyncio.wait({task})


class _Watcher:
    """Handles advisories one at a time (they are rare); retries what the broker refused."""

    def __init__(
        self, js: JetStreamContext, store: OrderStore, stats: NodeStats, node_id: str
    ) -> None:
        self.js = js
        self.store = store
        self.stats = stats
        self.node_id = node_id

    async def run(self, sub: Subscription) -> None:
        async for msg in sub.messages:
            try:
                await self._handle(msg.data)
            except Exception:
                # A bug, not the broker: say so loudly, and keep serving the next advisories.
                self.stats.errors += 1
                log.exception(
                    "handling a max-deliveries advisory failed",
                    extra={"event": "advisory.error", "node_id": self.node_id},
                )

    async def _handle(self, data: bytes) -> None:
        try:
            advisory = _decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.stats.errors += 1
            log.error(  # noqa: TRY400 - bad data, a traceback adds nothing
                "undecodable max-deliveries advisory: %s",
                exc,
                extra={"event": "advisory.undecodable", "node_id": self.node_id},
            )
            return
        msg: Exhausted | None = None
        for attempt in range(1, ATTEMPTS + 1):
            try:
                msg = await read_exhausted(self.js, advisory.stream_seq, advisory.deliveries)
                if msg is not None and await move_exhausted(self.js, self.store, msg):
                    self.stats.dead_lettered += 1
                return
            except RETRYABLE as exc:
                if attempt == ATTEMPTS:
                    self._gave_up(advisory, msg, exc)
                    return
                log.warning(
                    "dead-lettering ORDERS message %d failed, retrying: %s",
                    advisory.stream_seq,
                    exc,
                    extra={
                        "event": "order.dead_letter_retry",
                        "order_id": msg.order_id if msg else None,
                        "attempt": attempt,
                    },
                )
                await asyncio.sleep(RETRY_PAUSE * attempt)

    def _gave_up(self, advisory: MaxDeliveries, msg: Exhausted | None, exc: BaseException) -> None:
        """The message stays in ``ORDERS``, undelivered; its order is neither parked nor moving."""
        self.stats.errors += 1
        log.error(
            "could not dead-letter ORDERS message %d after %d attempts: %s",
            advisory.stream_seq,
            ATTEMPTS,
            exc,
            extra={
                "event": "order.dead_letter_failed",
                "order_id": msg.order_id if msg else None,
                "stream_seq": advisory.stream_seq,
                "deliveries": advisory.deliveries,
                "node_id": self.node_id,
            },
        )
