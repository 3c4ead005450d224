"""Driving one order on one node: claim, run the steps from where the order stands, compensate
on failure or cancellation, store the terminal state.

A cancel request (ADR 0013) reaches the run through its next write (``nodeapp.worker.writes``)
or a hint (``hint_cancel``): no step starts after it, the step in progress ends (a payment
wait is cut short), and the steps that ran are compensated latest first.

The run says what happened (a ``RunResult``); what the work message gets for it is decided in
``nodeapp.worker.delivery``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from nodeapp.cluster.membership import NodeStats
from nodeapp.core.errors import BrokerUnavailable, Fenced, OrderNotFound, RevisionConflict
from nodeapp.core.shop_errors import (
    GatewayUnavailable,
    HoldConflict,
    PaymentConflict,
    StockContention,
)
from nodeapp.core.tracing import span
from nodeapp.orders import lifecycle
from nodeapp.orders.model import Order, StepRecord, utcnow
from nodeapp.shop.verdicts import WaitInterrupted
from nodeapp.worker.delivery import Delivery, Outcome, RunResult
from nodeapp.worker.orderlog import log_order
from nodeapp.worker.slots import Slot
from nodeapp.worker.steps import StepFailed
from nodeapp.worker.stepwork import RunContext, StepWork
from nodeapp.worker.writes import (
    CancelNoticed,
    FinishedElsewhere,
    OrderWrites,
    restore,
    snapshot,
)

log = logging.getLogger("orderflow.pipeline")


class HandBack(Exception):
    """Raised between steps when the node drains."""


class HeartbeatLapsed(Exception):
    """Raised between steps when the node could not heart-beat for longer than its lease:
    others will take its orders over, so it must not advance them. (Not ``core.errors.Fenced``,
    which an effect raises when a newer owner has already acted.)"""


# Trouble that passes: the message comes back after the ack wait, the lease says who goes on.
TRANSIENT = (BrokerUnavailable, GatewayUnavailable, StockContention)
FINISHED = {s: Outcome(s) for s in ("completed", "failed", "cancelled")}


class ReadAgain(Exception):
    """The claim found the document changed since the run read it, before it waited for its
    slot (the message was fetched ahead): the run reads it again and starts over, once."""


class OrderRun:
    """One node's attempt at one order, for one delivery of its work message."""

    def __init__(self, ctx: RunContext, delivery: Delivery) -> None:
        self.ctx = ctx
        self.delivery = delivery
        self.order_id = delivery.order_id
        self.slot = Slot()  # the node's, once it has spawned the run
        self._read_early = False  # the document was read before the run waited for its slot
        self.writes = OrderWrites(ctx.store)
        self.cancel_hint = asyncio.Event()  # a cancel of this order was announced
        self.work = StepWork(ctx, delivery, self.writes, self.cancel_hint)

    def hint_cancel(self) -> None:
        """The api announced a cancel request: cut a payment wait short, re-read the order."""
        self.cancel_hint.set()

    def _log(self, level: int, message: str, event: str, **fields: Any) -> None:
        log_order(log, level, message, event, self.order_id, self.ctx.node_id, **fields)

    async def run(self) -> RunResult:
        headers = self.delivery.msg.headers or {}
        with span("orders.work process", kind=SpanKind.CONSUMER, parent_headers=headers) as sp:
            if sp.is_recording():
                sp.set_attributes(
                    {
                        "messaging.system": "nats",
                        "messaging.destination.name": "orders.work",
                        "messaging.message.id": self.order_id,
                        "orderflow.order_id": self.order_id,
                        "orderflow.node_id": self.ctx.node_id,
                    }
                )
            result = await self._run()
            sp.set_attribute("orderflow.outcome", result.outcome.value)
            return result

    async def _run(self) -> RunResult:
        try:
            return await self._attempt(first=True)
        except ReadAgain:  # nothing was stored, nothing done: the run keeps its slot, reads again
            return await self._attempt(first=False)

    async def _attempt(self, first: bool) -> RunResult:
        """Read the order and decide; with a slot, claim and drive it."""
        try:
            order = await self.ctx.store.get(self.order_id)
        except OrderNotFound:
            return RunResult(Outcome.NO_DOCUMENT)
        except BrokerUnavailable as exc:
            self._log(logging.WARNING, f"broker unavailable: {exc}", "order.abandoned")
            return RunResult(Outcome.ABANDONED)
        if order.terminal:
            # Its owner may have died between the terminal write and the notification.
            await self.ctx.effects.settle(order)
            return RunResult(Outcome.ALREADY_DONE)
        if order.dead_letter is not None and order.cancel_requested_at is None:
            # A message published before the order was dead-lettered (a re-drive, say): running
            # it would repeat what exhausted the last one. ``POST /dlq/{id}/replay`` resumes it;
            # a cancel re-drives it to compensate only.
            self._log(logging.INFO, "dead-lettered; message dropped", "order.parked")
            return RunResult(Outcome.PARKED)
        now = utcnow()
        holder = lifecycle.live_owner(order, now)
        if holder is not None and holder.node_id != self.ctx.node_id:
            delay = (holder.lease_expires_at - now).total_seconds() + 0.05
            self.ctx.stats.deferred += 1
            self._log(
                logging.INFO,
                f"leased by {holder.node_id}; retry in {delay:.2f}s",
                "order.deferred",
                owner=holder.node_id,
            )
            return RunResult(Outcome.DEFERRED, retry_in=delay)
        self.writes.seen(order)
        if not await self.slot.take():
            return RunResult(Outcome.DECLINED)  # the node drains: nothing started, nothing stored
        self._read_early = first and self.slot.waited
        if lifecycle.claim(order, self.ctx.node_id, utcnow(), self.ctx.lease):
            self.ctx.stats.takeovers += 1
            assert order.owner is not None
            self._log(logging.INFO, "took order over", "order.takeover", epoch=order.owner.epoch)
        return RunResult(await self._drive(order))

    async def _drive(self, order: Order) -> Outcome:
        try:
            if order.cancel_requested_at is not None:
                return await self._cancel(order)
            if order.status == "rolling_back":
                return await self._roll_back(order)
            return await self._advance(order)
        except FinishedElsewhere as done:  # cancelled by the api before our claim was stored
            await self.ctx.effects.settle(done.order)
            return Outcome.ALREADY_DONE
        except RevisionConflict:
            if self._read_early and not self.writes.saved:
                raise ReadAgain from None
            self.ctx.stats.cas_conflicts += 1
            self._log(logging.WARNING, "lost the order to another writer", "order.lost")
            return Outcome.LOST
        except Fenced as exc:  # an effect (stock, gateway) saw a newer owner's epoch
            self._log(logging.WARNING, f"lost the order: {exc}", "order.lost")
            return Outcome.LOST
        except TRANSIENT as exc:
            self._log(logging.WARNING, f"{exc}; retrying later", "order.abandoned")
            return Outcome.ABANDONED
        except (PaymentConflict, HoldConflict) as exc:
            return self._conflict(exc)
        except HandBack:
            return await self._hand_back(order)
        except HeartbeatLapsed:
            self._log(logging.WARNING, "fenced: not advancing the order", "order.fenced")
            return Outcome.ABANDONED

    def _conflict(self, exc: PaymentConflict | HoldConflict) -> Outcome:
        """An effect in a state no step leaves it in: a bug or a hand edit, never a race."""
        self.ctx.stats.errors += 1
        log.error(
            "effect refused, the order cannot go on: %s", exc, exc_info=exc,
            extra={"event": "order.effect_conflict", "order_id": self.order_id,
                   "node_id": self.ctx.node_id},
        )  # fmt: skip
        return Outcome.CRASHED

    async def _advance(self, order: Order) -> Outcome:
        while (step := lifecycle.next_step(order)) is not None:
            if self.cancel_hint.is_set():
                self.cancel_hint.clear()
                await self.writes.refresh(order)
            if order.cancel_requested_at is not None:
                return await self._cancel(order)
            if self.ctx.draining.is_set():
                raise HandBack
            if self.ctx.fenced():
                raise HeartbeatLapsed
            if step is order.steps[-1]:
                self.slot.last_step()  # the slot frees within this step: its successor is fetched
            try:
                await self.work.begin(order, step)
            except CancelNoticed:
                return await self._cancel(order)
            except WaitInterrupted:
                return await self._interrupted(order)
            except StepFailed as exc:
                return await self._fail(order, step, exc.reason)
            lifecycle.complete_step(step, utcnow())
            self._log(
                logging.INFO, f"{step.name} completed", "step.completed",
                step=step.name, attempt=step.attempt,
            )  # fmt: skip
        try:
            return await asyncio.shield(self._finish(order))
        except CancelNoticed:  # requested while the last step ran: it is undone too
            return await self._cancel(order)

    async def _interrupted(self, order: Order) -> Outcome:
        """A cancel hint cut the payment wait short; the document must say so too, else the
        hint was not ours to act on and the message comes back."""
        await self.writes.refresh(order)
        if order.cancel_requested_at is None:
            raise RevisionConflict(self.order_id, order.revision or 0)
        return await self._cancel(order)

    async def _fail(self, order: Order, step: StepRecord, reason: str) -> Outcome:
        now = utcnow()
        lifecycle.fail_step(order, step, reason, now)
        lifecycle.renew(order, now, self.ctx.lease)
        await self.writes.save(order)
        self._log(
            logging.INFO, f"{step.name} failed: {reason}", "step.failed",
            step=step.name, attempt=step.attempt, reason=reason,
        )  # fmt: skip
        return await self._roll_back(order)

    async def _cancel(self, order: Order) -> Outcome:
        lifecycle.begin_cancel(order, utcnow(), self.ctx.lease)
        self._log(logging.INFO, "cancel requested: compensating", "order.cancelling")
        return await self._roll_back(order)

    async def _roll_back(self, order: Order) -> Outcome:
        pending = lifecycle.to_compensate(order)
        for step in pending[:-1]:
            await self._compensate(order, step)
            await self.writes.save(order)
        if pending:
            await self._compensate(order, pending[-1])
        try:
            return await asyncio.shield(self._finish(order))
        except CancelNoticed:  # requested during a failure's compensations: it ends cancelled
            return await asyncio.shield(self._finish(order))

    async def _compensate(self, order: Order, step: StepRecord) -> None:
        await self.work.compensate(order, step)
        now = utcnow()
        lifecycle.compensated(step, now)
        lifecycle.renew(order, now, self.ctx.lease)
        self._log(
            logging.INFO, f"{step.name} rolled back", "step.rolled_back",
            step=step.name, attempt=step.attempt,
        )  # fmt: skip

    async def _finish(self, order: Order) -> Outcome:
        """Store the terminal state, then have the delivery answer: shielded by the callers so
        a shutdown cannot cut in between. ``CancelNoticed`` (nothing stored) when a cancel
        request came meanwhile."""
        before = snapshot(order)
        now = utcnow()
        lifecycle.finish(order, now)
        self.slot.release()  # after the stamp: the next order's first step starts later
        try:
            await self.writes.save(order, adopt=False)
        except CancelNoticed:
            restore(order, before)
            self.slot.retake()
            raise
        outcome = FINISHED[order.status]
        _count(self.ctx.stats, outcome)
        failed_step = order.failure.step if order.failure else None
        latency = (now - order.start_time).total_seconds()
        self.ctx.observer.order_finished(order.status, failed_step, latency)
        # Before the ack: a crash in between brings the message back, and its run settles again.
        await self.ctx.effects.settle(order)
        await self.delivery.answer(RunResult(outcome))
        self._log(logging.INFO, f"order {order.status}", f"order.{order.status}")
        if order.status == "failed":
            trace.get_current_span().set_status(Status(StatusCode.ERROR, "order failed"))
        return outcome

    async def _hand_back(self, order: Order) -> Outcome:
        """Release the lease so another node continues at once; the delivery naks."""
        lifecycle.release(order, utcnow())
        try:
            await self.writes.save(order)
        except (RevisionConflict, FinishedElsewhere, BrokerUnavailable) as exc:
            self._log(logging.WARNING, f"hand-back not stored: {exc}", "order.handback_failed")
            return Outcome.LOST
        return Outcome.HANDED_BACK


def _count(stats: NodeStats, outcome: Outcome) -> None:
    if outcome is Outcome.COMPLETED:
        stats.completed += 1
    elif outcome is Outcome.FAILED:
        stats.failed += 1
    else:
        stats.cancelled += 1
