"""What each work message gets: the one module that acks, naks, terms or leaves one unanswered.

The pipeline says what happened to the order (a ``RunResult``); the delivery decides:

- ``completed``/``failed``/``cancelled``: ack once the terminal state is stored (the pipeline
  answers from inside the shield that stores it, so a shutdown cannot cut in between);
- ``already_done``/``parked``: ack (nothing to run; a parked order waits for a replay);
- ``deferred``: nak with a delay, until the other node's lease ends;
- ``handed_back`` (draining), ``declined`` (fetched ahead, still waiting for a slot when the node
  began to drain: never claimed), and a message that arrives while draining: nak once no pull
  request of ours is open, else the server could hand it straight back to us (ADR 0004);
- ``lost`` (a compare-and-set lost, or an effect fenced by a newer owner's epoch) and
  ``abandoned`` (broker, payment gateway away, stock too contended, the node's heartbeat
  lapsed): no answer; the message comes back after the ack wait and the order's lease says
  who continues;
- ``no_document``, and a message that cannot be decoded: dead-letter, then term;
- ``crashed`` (a bug, or an effect in a state no step leaves it in): nak with the ack wait as
  delay, so a bad order does not spin.

And ``in_progress`` while a long step runs, so JetStream does not redeliver under our feet.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable
from typing import Any, Final, NamedTuple

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from nodeapp.broker.connection import broker_errors
from nodeapp.cluster.dead_letters import dead_letter
from nodeapp.cluster.membership import NodeStats
from nodeapp.core.errors import BrokerUnavailable
from nodeapp.worker.orderlog import log_order

log = logging.getLogger("orderflow.delivery")


class Outcome(enum.Enum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ALREADY_DONE = "already_done"
    DEFERRED = "deferred"  # another node holds a live lease
    HANDED_BACK = "handed_back"  # draining: lease released, message nak'ed
    DECLINED = "declined"  # draining before the run had a slot: never claimed, message nak'ed
    LOST = "lost"  # a compare-and-set lost, or an effect was fenced: someone else owns the order
    ABANDONED = "abandoned"  # broker or gateway away, stock contended, or the node is fenced
    NO_DOCUMENT = "no_document"
    PARKED = "parked"  # dead-lettered: waits for a replay, not for a stray message
    CRASHED = "crashed"  # the run raised something unexpected: a bug


ACKED: Final = frozenset(
    {Outcome.COMPLETED, Outcome.FAILED, Outcome.CANCELLED, Outcome.ALREADY_DONE, Outcome.PARKED}
)


class RunResult(NamedTuple):
    outcome: Outcome
    retry_in: float | None = None  # deferred: seconds until the other node's lease ends


class WorkAnswers:
    """The node's side of its work messages, shared by all its deliveries."""

    def __init__(
        self,
        js: JetStreamContext,
        node_id: str,
        stats: NodeStats,
        ack_wait: float,
        draining: asyncio.Event,
        pulls_closed: asyncio.Event,
    ) -> None:
        self.js = js
        self.node_id = node_id
        self.stats = stats
        self.ack_wait = ack_wait
        self.draining = draining
        # Set once no pull request of ours can still be open on the server.
        self.pulls_closed = pulls_closed

    def delivery(self, msg: Msg, order_id: str) -> Delivery:
        return Delivery(self, msg, order_id)

    async def reject(self, msg: Msg, reason: str) -> None:
        """A message that names no order we can read: dead-letter it and term it."""
        await self.dead_letter(msg, reason, None)

    async def decline(self, msg: Msg, order_id: str) -> None:
        """A message that arrived while draining: another node runs it."""
        await self.nak(msg, order_id, None)

    async def nak(self, msg: Msg, order_id: str, delay: float | None) -> None:
        """The one nak. While draining, only once our pull requests are closed (ADR 0004); a
        failed nak is safe: the message comes back after the ack wait."""
        if self.draining.is_set():
            await self.pulls_closed.wait()
        try:
            with broker_errors("nak"):
                await msg.nak(delay=delay)
        except BrokerUnavailable as exc:
            self.log_event(logging.WARNING, f"nak not sent: {exc}", "order.nak_failed", order_id)

    async def dead_letter(self, msg: Msg, reason: str, order_id: str | None) -> None:
        try:
            await dead_letter(self.js, msg, reason, order_id)
            self.stats.dead_lettered += 1
        except BrokerUnavailable as exc:
            log.warning(
                "dead-lettering failed, message will be redelivered: %s",
                exc,
                extra={"event": "order.dead_letter_failed", "order_id": order_id},
            )

    def log_event(self, level: int, message: str, event: str, order_id: str, **fields: Any) -> None:
        log_order(log, level, message, event, order_id, self.node_id, **fields)


class Delivery:
    """One order's work message on this node, answered once.

    ``msg`` is replaced when the node receives a redelivery of the order it is working on, so
    the answer goes to the newest delivery.
    """

    def __init__(self, answers: WorkAnswers, msg: Msg, order_id: str) -> None:
        self.answers = answers
        self.msg = msg
        self.order_id = order_id
        self.answered = False

    async def settle(self, running: Awaitable[RunResult]) -> None:
        """Await the order's run, then answer what it did."""
        try:
            result = await running
        except Exception:
            self.answers.stats.errors += 1
            log.exception(
                "order run failed unexpectedly; retrying after the ack wait",
                extra={
                    "event": "order.error",
                    "order_id": self.order_id,
                    "node_id": self.answers.node_id,
                },
            )
            result = RunResult(Outcome.CRASHED)
        await self.answer(result)

    async def answer(self, result: RunResult) -> None:
        """Give the message the answer ``result`` calls for; later calls do nothing."""
        if self.answered:
            return
        self.answered = True
        answers, outcome = self.answers, result.outcome
        if outcome in ACKED:
            await self._ack()
        elif outcome is Outcome.DEFERRED:
            await answers.nak(self.msg, self.order_id, result.retry_in)
        elif outcome is Outcome.HANDED_BACK:
            await answers.nak(self.msg, self.order_id, None)
            answers.stats.handed_back += 1
            answers.log_event(
                logging.INFO, "handed back (draining)", "order.handed_back", self.order_id
            )
        elif outcome is Outcome.DECLINED:
            await answers.nak(self.msg, self.order_id, None)
        elif outcome is Outcome.NO_DOCUMENT:
            await answers.dead_letter(self.msg, "no order document", self.order_id)
        elif outcome is Outcome.CRASHED:
            await answers.nak(self.msg, self.order_id, answers.ack_wait)
        elif outcome is Outcome.ABANDONED:
            answers.stats.abandoned += 1
        # LOST: no answer; the order is someone else's now.

    async def keepalive(self) -> None:
        """Tell JetStream the message is still being worked on."""
        try:
            with broker_errors("in_progress"):
                await self.msg.in_progress()
        except BrokerUnavailable as exc:
            self.answers.log_event(
                logging.WARNING,
                f"in_progress not sent: {exc}",
                "order.keepalive_failed",
                self.order_id,
            )

    async def _ack(self) -> None:
        """A failed ack is safe: the redelivery finds the order finished and acks it."""
        try:
            with broker_errors("ack"):
                await self.msg.ack()
        except BrokerUnavailable as exc:
            self.answers.log_event(
                logging.WARNING, f"ack not sent: {exc}", "order.ack_failed", self.order_id
            )
