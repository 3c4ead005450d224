"""Driving one order on one node: claim, run the steps from where the order stands, compensate
on failure, store the terminal state.

The run says what happened (a ``RunResult``); what the work message gets for it is decided in
``nodeapp.worker.delivery``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from nodeapp.cluster.membership import NodeStats
from nodeapp.core.errors import (
    BrokerUnavailable,
    Fenced,
    GatewayUnavailable,
    HoldConflict,
    OrderNotFound,
    PaymentConflict,
    RevisionConflict,
    StockContention,
)
from nodeapp.core.tracing import extract_context, tracer
from nodeapp.orders import lifecycle
from nodeapp.orders.model import Order, StepRecord, utcnow
from nodeapp.orders.store import OrderStore
from nodeapp.worker.delivery import Delivery, Outcome, RunResult
from nodeapp.worker.effects import ShopEffects
from nodeapp.worker.keepalive import while_beating
from nodeapp.worker.observer import Observer
from nodeapp.worker.orderlog import log_order
from nodeapp.worker.steps import StepCall, StepFailed, Steps

log = logging.getLogger("orderflow.pipeline")


class HandBack(Exception):
    """Raised between steps when the node drains."""


class HeartbeatLapsed(Exception):
    """Raised between steps when the node could not heart-beat for longer than its lease:
    others will take its orders over, so it must not advance them. (Not ``core.errors.Fenced``,
    which an effect raises when a newer owner has already acted.)"""


# Trouble that passes: the message comes back after the ack wait, the lease says who goes on.
TRANSIENT = (BrokerUnavailable, GatewayUnavailable, StockContention)


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What every order run on one node shares: who claims (node id, lease length), where
    orders are stored, the steps and their effects, counters and metrics hooks, and whether the
    node may go on."""

    node_id: str
    lease: float
    store: OrderStore
    steps: Steps
    effects: ShopEffects
    stats: NodeStats
    observer: Observer
    draining: asyncio.Event
    fenced: Callable[[], bool]
    # Keep the message and the lease alive well inside their limits.
    keepalive_interval: float

    @property
    def short_steps(self) -> bool:
        """Steps that end well within a keepalive interval need no keepalive."""
        return self.steps.seconds * 2 < self.keepalive_interval


class OrderRun:
    """One node's attempt at one order, for one delivery of its work message."""

    def __init__(self, ctx: RunContext, delivery: Delivery) -> None:
        self.ctx = ctx
        self.delivery = delivery
        self.order_id = delivery.order_id

    def _log(self, level: int, message: str, event: str, **fields: Any) -> None:
        log_order(log, level, message, event, self.order_id, self.ctx.node_id, **fields)

    async def run(self) -> RunResult:
        parent = extract_context(self.delivery.msg.headers)
        with tracer.start_as_current_span(
            "orders.work process", context=parent, kind=SpanKind.CONSUMER
        ) as span:
            span.set_attribute("messaging.system", "nats")
            span.set_attribute("messaging.destination.name", "orders.work")
            span.set_attribute("messaging.message.id", self.order_id)
            span.set_attribute("orderflow.order_id", self.order_id)
            span.set_attribute("orderflow.node_id", self.ctx.node_id)
            result = await self._run()
            span.set_attribute("orderflow.outcome", result.outcome.value)
            return result

    async def _run(self) -> RunResult:
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
        if order.dead_letter is not None:
            # A message published before the order was dead-lettered (a re-drive, say): running
            # it would repeat what exhausted the last one. ``POST /dlq/{id}/replay`` resumes it.
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
        if lifecycle.claim(order, self.ctx.node_id, now, self.ctx.lease):
            self.ctx.stats.takeovers += 1
            assert order.owner is not None
            self._log(logging.INFO, "took order over", "order.takeover", epoch=order.owner.epoch)
        return RunResult(await self._drive(order))

    async def _drive(self, order: Order) -> Outcome:
        try:
            if order.status == "rolling_back":
                return await self._roll_back(order)
            return await self._advance(order)
        except RevisionConflict:
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
            if self.ctx.draining.is_set():
                raise HandBack
            if self.ctx.fenced():
                raise HeartbeatLapsed
            now = utcnow()
            lifecycle.start_step(order, step, self.ctx.node_id, now)
            lifecycle.renew(order, now, self.ctx.lease)
            await self._save(order)
            self._log(
                logging.INFO,
                f"{step.name} started",
                "step.started",
                step=step.name,
                attempt=step.attempt,
            )
            try:
                await self._run_step(order, step)
            except StepFailed as exc:
                return await self._fail(order, step, exc.reason)
            lifecycle.complete_step(step, utcnow())
            self._log(
                logging.INFO,
                f"{step.name} completed",
                "step.completed",
                step=step.name,
                attempt=step.attempt,
            )
        await asyncio.shield(self._finish(order, Outcome.COMPLETED))
        self.ctx.stats.completed += 1
        return Outcome.COMPLETED

    async def _run_step(self, order: Order, step: StepRecord) -> None:
        assert order.owner is not None
        call = StepCall(self.order_id, step.name, order.owner.epoch, step.attempt)
        observer = self.ctx.observer
        with tracer.start_as_current_span(f"step {step.name}") as span:
            span.set_attributes(self._span_attributes(call))
            started = time.monotonic()
            try:
                action = self.ctx.steps.action(order, call)
                await self._with_keepalive(order, action, self.ctx.steps.may_wait(order, step.name))
            except StepFailed as exc:
                span.set_attribute("orderflow.outcome", "failed")
                span.set_status(Status(StatusCode.ERROR, exc.reason))
                observer.step_finished(step.name, time.monotonic() - started, "failed")
                raise
            span.set_attribute("orderflow.outcome", "completed")
            observer.step_finished(step.name, time.monotonic() - started, "completed")

    def _span_attributes(self, call: StepCall) -> dict[str, str | int]:
        return {
            "orderflow.order_id": call.order_id,
            "orderflow.step": call.step,
            "orderflow.node_id": self.ctx.node_id,
            "orderflow.attempt": call.attempt,
            "orderflow.epoch": call.epoch,
        }

    async def _fail(self, order: Order, step: StepRecord, reason: str) -> Outcome:
        now = utcnow()
        lifecycle.fail_step(order, step, reason, now)
        lifecycle.renew(order, now, self.ctx.lease)
        await self._save(order)
        self._log(
            logging.INFO,
            f"{step.name} failed: {reason}",
            "step.failed",
            step=step.name,
            attempt=step.attempt,
            reason=reason,
        )
        return await self._roll_back(order)

    async def _roll_back(self, order: Order) -> Outcome:
        pending = lifecycle.to_compensate(order)
        for step in pending[:-1]:
            await self._compensate(order, step)
            await self._save(order)
        if pending:
            await self._compensate(order, pending[-1])
        await asyncio.shield(self._finish(order, Outcome.FAILED))
        self.ctx.stats.failed += 1
        return Outcome.FAILED

    async def _compensate(self, order: Order, step: StepRecord) -> None:
        assert order.owner is not None
        call = StepCall(self.order_id, step.name, order.owner.epoch, step.attempt)
        with tracer.start_as_current_span(f"compensate {step.name}") as span:
            span.set_attributes(self._span_attributes(call))
            await self._with_keepalive(order, self.ctx.steps.compensate(order, call))
            span.set_attribute("orderflow.outcome", "rolled_back")
        now = utcnow()
        lifecycle.compensated(step, now)
        lifecycle.renew(order, now, self.ctx.lease)
        self._log(
            logging.INFO,
            f"{step.name} rolled back",
            "step.rolled_back",
            step=step.name,
            attempt=step.attempt,
        )

    async def _finish(self, order: Order, outcome: Outcome) -> None:
        """Store the terminal state, then have the delivery answer: shielded by the callers so
        a shutdown cannot cut in between."""
        now = utcnow()
        lifecycle.finish(order, now)
        await self._save(order)
        failed_step = order.failure.step if order.failure else None
        latency = (now - order.start_time).total_seconds()
        self.ctx.observer.order_finished(order.status, failed_step, latency)
        # Before the ack: a crash in between brings the message back, and its run settles again.
        await self.ctx.effects.settle(order)
        await self.delivery.answer(RunResult(outcome))
        self._log(logging.INFO, f"order {order.status}", f"order.{order.status}")
        span = trace.get_current_span()
        if order.status == "failed":
            span.set_status(Status(StatusCode.ERROR, "order failed"))

    async def _hand_back(self, order: Order) -> Outcome:
        """Release the lease so another node continues at once; the delivery naks."""
        lifecycle.release(order, utcnow())
        try:
            await self._save(order)
        except (RevisionConflict, BrokerUnavailable) as exc:
            self._log(logging.WARNING, f"hand-back not stored: {exc}", "order.handback_failed")
            return Outcome.LOST
        return Outcome.HANDED_BACK

    async def _with_keepalive(
        self, order: Order, work: Coroutine[Any, Any, None], may_wait: bool = False
    ) -> None:
        """Await ``work`` while telling JetStream we are alive and keeping the lease fresh;
        ``may_wait``: the work can outlast its simulated seconds (a payment verdict)."""
        if self.ctx.short_steps and not may_wait:
            await work
            return
        await while_beating(work, self.ctx.keepalive_interval, lambda: self._keepalive(order))

    async def _keepalive(self, order: Order) -> None:
        await self.delivery.keepalive()
        owner = order.owner
        now = utcnow()
        if (
            owner is not None
            and (owner.lease_expires_at - now).total_seconds() < self.ctx.lease / 2
        ):
            lifecycle.renew(order, now, self.ctx.lease)
            await self._save(order)

    async def _save(self, order: Order) -> None:
        await self.ctx.store.update(order)
