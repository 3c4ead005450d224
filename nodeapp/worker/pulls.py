"""Pull requests on the ``workers`` consumer, over an inbox the node owns.

The requests (JetStream's pull protocol, ``nodeapp.broker.pulls``) go to
``$JS.API.CONSUMER.MSG.NEXT.ORDERS.workers``. Speaking it directly instead of through nats-py's
``fetch`` gives the node two things: each delivery is handed on as it arrives, and the node
knows when no request of ours is open on the server any more. Only then is a nak on drain
safe; one sent earlier could come straight back to the draining node (ADR 0004).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

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
from nodeapp.broker.resources import ORDERS_STREAM, WORKERS_CONSUMER

log = logging.getLogger("orderflow.node")

PULL_SUBJECT: Final = pull_subject(ORDERS_STREAM, WORKERS_CONSUMER)


class WorkPulls:
    """One pull request open at a time; every delivery goes to ``deliver`` as it arrives."""

    def __init__(self, nc: NATS, node_id: str, deliver: Callable[[Msg], None]) -> None:
        self.nc = nc
        self.node_id = node_id
        self.deliver = deliver
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._sent = 0  # requests sent; numbers each one's reply subject
        self._waiting = 0  # messages the open request may still deliver
        self._deadline = 0.0
        self._trouble = False  # the open request ended otherwise than by filling or expiring
        self._ended = asyncio.Event()
        self._ended.set()

    @property
    def requests_sent(self) -> int:
        return self._sent

    @property
    def _reply(self) -> str:
        return f"{self._inbox}.{self._sent}"

    async def start(self) -> None:
        """Listen on the inbox; before the first request, so no delivery finds nobody there."""
        with broker_errors("subscribing to the pull inbox"):
            self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._received)

    async def request(self, batch: int, expires: float) -> None:
        """Ask for up to ``batch`` messages over the next ``expires`` seconds."""
        self._sent += 1
        self._waiting = batch
        self._trouble = False
        self._deadline = asyncio.get_running_loop().time() + expires + END_GRACE
        self._ended.clear()
        body = pull_request(batch, expires)
        try:
            with broker_errors("pull request"):
                await self.nc.publish(PULL_SUBJECT, body, reply=self._reply)
        except BaseException:
            self._ended.set()  # never sent: nothing is open
            raise

    async def ended(self, stop: asyncio.Event | None = None) -> bool:
        """Wait until no request of ours is open (or its deadline passed), or ``stop`` is set.

        False when the request ended in trouble (an error status, or no word at all before its
        deadline): worth a pause before the next one.
        """
        if not self._ended.is_set():
            await self._wait_ended(stop)
        return not self._trouble

    async def _wait_ended(self, stop: asyncio.Event | None) -> None:
        waits = {asyncio.ensure_future(self._ended.wait())}
        if stop is not None:
            waits.add(asyncio.ensure_future(stop.wait()))
        remaining = self._deadline - asyncio.get_running_loop().time()
        try:
            done, _ = await asyncio.wait(
                waits, timeout=max(0.0, remaining), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiting in waits:
                waiting.cancel()
            await asyncio.wait(waits)
        if not done:
            log.warning(
                "pull request ended without a word from the server",
                extra={"event": "node.pull_unanswered", "node_id": self.node_id},
            )
            self._end(trouble=True)

    async def _received(self, msg: Msg) -> None:
        status = status_of(msg)
        if status is None and is_delivery(msg):
            self._waiting -= 1
            self.deliver(msg)
            if self._waiting <= 0:
                self._end()  # the batch filled: the server ends the request without a word
        elif status is None:
            log.warning(
                "ignored a message on the pull inbox that is no delivery: %s",
                msg.subject,
                extra={"event": "node.stray_message", "node_id": self.node_id},
            )
        elif msg.subject == self._reply and status != HEARTBEAT_STATUS:
            self._ended_by(status, description_of(msg))
        # Otherwise an earlier request's last word, or an idle heartbeat: nothing ends.

    def _ended_by(self, status: str, description: str) -> None:
        trouble = status not in EXPECTED_ENDS
        if trouble:
            log.warning(
                "pull request ended: %s %s",
                status,
                description,
                extra={"event": "node.fetch_failed", "node_id": self.node_id},
            )
        self._end(trouble)

    def _end(self, trouble: bool = False) -> None:
        self._trouble = trouble
        self._ended.set()

    async def close(self) -> None:
        """Stop listening; a failure is logged: the subscription ends with the connection."""
        if self._sub is None:
            return
        try:
            await self._sub.unsubscribe()
        except ANY_NATS_ERROR as exc:
            log.warning(
                "could not unsubscribe from the pull inbox (it ends with the connection): %r",
                exc,
                extra={"event": "node.unsubscribe_failed", "node_id": self.node_id},
            )
