"""The projector's reading of ``KV_orders``: an ephemeral pull consumer of its own, asked for one
batch at a time, so the broker (not the api's memory) holds whatever the projector has not
applied yet (ADR 0021).

The consumer starts at a stream sequence (the checkpoint + 1), filters ``$KV.orders.>``, is
never acked (``AckPolicy.NONE``: the checkpoint is the projector's own, in SQLite), lives in
memory on one replica, and is removed by the server ``CONSUMER_INACTIVE`` seconds after the
last pull request (an api that died; the api user may not delete consumers, ADR 0015).

At most one request for ``batch`` messages is open, and the next one is sent only once every
delivery of the last one was taken: at most one batch waits here, another is being written.
Deliveries must come in consumer order (1, 2, 3...): one missing (lost on a reconnect, where an
unacked consumer does not send it again), a request that went unanswered past its expiry, or an
error status ends the follower with ``Interrupted``; the projector resumes from its checkpoint
with a new consumer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Final

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from nodeapp.broker.connection import ANY_NATS_ERROR, broker_errors
from nodeapp.broker.pulls import (
    END_GRACE,
    EXPECTED_ENDS,
    HEARTBEAT_STATUS,
    description_of,
    is_delivery,
    pull_request,
    pull_subject,
    status_of,
)
from nodeapp.core.errors import OrderflowError
from nodeapp.readmodel.cancellation import keep_cancellation
from nodeapp.readmodel.stream import KV_STREAM, KV_SUBJECTS

log = logging.getLogger("orderflow.readmodel")

# Longer than any pause between two requests (a batch's write waits at most SQLite's 5 s busy
# timeout), short enough that a dead api's consumer goes soon.
CONSUMER_INACTIVE: Final = 30.0


class Interrupted(OrderflowError):
    """The consumer stopped delivering in order: resume from the checkpoint."""


def consumer_config(start: int) -> ConsumerConfig:
    """The projector's consumer: every revision from stream sequence ``start`` on."""
    return ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start,
        ack_policy=AckPolicy.NONE,
        filter_subject=KV_SUBJECTS,
        mem_storage=True,
        num_replicas=1,
        inactive_threshold=CONSUMER_INACTIVE,
    )


class Follower:
    """``open(start)``, then ``request()`` before each batch and ``next()`` for each message;
    ``close()`` in a ``finally``. Requests expire after ``expires`` seconds."""

    def __init__(self, nc: NATS, js: JetStreamContext, batch: int, expires: float) -> None:
        self.nc = nc
        self.js = js
        self.batch = batch
        self.expires = expires
        self.consumer: str | None = None
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._subject = ""
        self._arrived: deque[Msg] = deque()
        self._sent = 0  # requests sent; numbers each one's reply subject
        self._left = 0  # deliveries the open request may still bring; 0: none is open
        self._deadline = 0.0  # past it, an open request that said nothing is lost
        self._last = 0  # the consumer sequence of the last delivery taken
        self._trouble: str | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def _reply(self) -> str:
        return f"{self._inbox}.{self._sent}"

    async def open(self, start: int) -> None:
        """Listen on the inbox, then create the consumer from stream sequence ``start``."""
        with broker_errors("following the orders bucket"):
            self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._received)
            info = await self.js.add_consumer(KV_STREAM, consumer_config(start))
        keep_cancellation()  # nats-py's request may have dropped one
        self.consumer = info.name
        self._subject = pull_subject(KV_STREAM, info.name)

    async def request(self) -> None:
        """Ask for the next batch, unless a request is open or a delivery is still waiting."""
        if self._left > 0 or self._arrived:
            return
        self._sent += 1
        self._left = self.batch
        self._deadline = asyncio.get_running_loop().time() + self.expires + END_GRACE
        with broker_errors("asking for the next revisions"):
            await self.nc.publish(
                self._subject, pull_request(self.batch, self.expires), reply=self._reply
            )

    def coming(self, msg: Msg) -> bool:
        """Whether more is known to be on its way after ``msg``: arrived, or waiting in the
        stream while the request is open."""
        return bool(self._arrived) or (self._left > 0 and msg.metadata.num_pending > 0)

    async def next(self, wait: float) -> Msg | None:
        """The next revision; None after ``wait`` seconds, or once the request ended without
        more (``request()`` again). ``Interrupted`` when the order broke."""
        if not self._arrived and self._left > 0 and wait > 0:
            await self._wait(wait)
        if self._trouble is not None:
            raise Interrupted(self._trouble)
        if not self._arrived:
            if self._left > 0 and asyncio.get_running_loop().time() >= self._deadline:
                raise Interrupted(f"pull request on {self.consumer} went unanswered")
            return None
        msg = self._arrived.popleft()
        seq = msg.metadata.sequence.consumer
        if seq != self._last + 1:
            raise Interrupted(f"delivery {seq} of {self.consumer} came after {self._last}")
        self._last = seq
        return msg

    async def _wait(self, wait: float) -> None:
        """Until something arrives, ``wait`` passes or the request's deadline does."""
        loop = asyncio.get_running_loop()
        keep_cancellation()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(min(wait, max(0.0, self._deadline - loop.time())), _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def _received(self, msg: Msg) -> None:
        status = status_of(msg)
        if status is None and is_delivery(msg):
            self._arrived.append(msg)
            self._left -= 1  # the server ends a filled request without a word
        elif status is None:
            log.warning(
                "ignored a message on the read model's pull inbox that is no delivery: %s",
                msg.subject,
                extra={"event": "readmodel.stray_message"},
            )
            return
        elif status == HEARTBEAT_STATUS or msg.subject != self._reply:
            return  # a heartbeat, or an earlier request's last word
        elif status in EXPECTED_ENDS:
            self._left = 0
        else:
            self._trouble = f"pull request on {self.consumer} ended: {status} {description_of(msg)}"
            self._left = 0
        if self._waiter is not None:
            _wake(self._waiter)

    async def close(self) -> None:
        """Stop listening; the consumer goes with its inactivity threshold. A failure is
        logged: the subscription ends with the connection."""
        if self._sub is None:
            return
        try:
            await self._sub.unsubscribe()
        except ANY_NATS_ERROR as exc:
            log.warning(
                "could not stop following the orders bucket: %r",
                exc,
                extra={"event": "readmodel.unsubscribe_failed"},
            )


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
