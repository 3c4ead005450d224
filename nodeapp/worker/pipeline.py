"""Driving one order on one node: claim, run the steps from where the order stands, compensate
on failure, store the terminal state, then ack.

Every decision about the work message is explicit here: ack after the terminal state is stored,
``nak(delay)`` while another node's lease is live, ``nak()`` when handing back on drain, no
answer at all after a lost compare-and-set (the order is someone else's now) or a broker outage
(the message comes back after the ack wait and the lease tells who continues).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from nodeapp.broker.connection import broker_errors
from nodeapp.cluster.membership import NodeStats
from nodeapp.core.errors import BrokerUnavailable, OrderNotFound, RevisionConflict
from nodeapp.core.tracing import extract_context, tracer
from nodeapp.orders import lifecycle
from nodeapp.orders.model import Order, StepRecord, utcnow
from nodeapp.orders.store import OrderStore
from nodeapp.worker.steps import SimulatedSteps, StepCall, StepFailed

log = logging.getLogger("orderflow.pipeline")


class Outcome(enum.Enum):
    COMPLETED = "completed"
    FAILED = "failed"
    ALREADY_DONE = "already_done"
    DEFERRED = "deferred"  # another node holds a live lease
    HANDED_BACK = "handed_back"  # draining: lease released, message nak'ed
    LOST = "lost"  # a compare-and-set lost: someone else owns the order
    ABANDONED = "abandoned"  # the broker went away mid-order
    NO_DOCUMENT = "no_document"
    PARKED = "parked"  # dead-lettered: waits for a replay, not for a stray message


class HandBack(Exception):
    """Raised between steps when the node drains."""


class Fenced(Exception):
    """Raised between steps when the node could not heart-beat for longer than its lease:
    others will take its orders over, so it must not advance them."""


class Observer:
    """Hooks for metrics; this base does nothing. Called on the hot path: keep them cheap."""

    def step_finished(self, step: str, seconds: float, outcome: str) -> None:
        """A step's action ended: ``outcome`` is ``completed`` or ``failed``."""

    def order_finished(self, status: str, failed_step: str | None, latency: float) -> None:
        """An order reached ``completed`` or ``failed``, ``latency`` seconds after submit."""


class Worker:
    """What every order run on a node shares: identity, settings, store, steps and counters."""

    def __init__(
        self,
        node_id: str,
        store: OrderStore,
        steps: SimulatedSteps,
        stats: NodeStats,
        lease: float,
        ack_wait: float,
        draining: asyncio.Event,
        pulls_closed: asyncio.Event,
        fenced: Callable[[], bool] = lambda: False,
        observer: Observer | None = None,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.steps = steps
        self.stats = stats
        self.lease = lease
        self.draining = draining
        self.pulls_closed = pulls_closed
        self.fenced = fenced
        self.observer = observer or Observer()
        # Keep the message and the lease alive well inside their limits.
        self.keepalive_interval = min(ack_wait, lease) / 3
        self.short_steps = steps.seconds * 2 < self.keepalive_interval


class OrderRun:
    """One node's attempt at one order, for one delivery of its work message.

    ``msg`` may be replaced while running when the same node receives a redelivery of the
    order it is working on, so the ack goes to the newest delivery.
    """

    def __init__(self, worker: Worker, order_id: str, msg: Msg) -> None:
        self.w = worker
        self.order_id = order_id
        self.msg = msg

    def _log(self, level: int, message: str, event: str, **fields: Any) -> None:
        if log.isEnabledFor(level):
            extra = {
                "event": event,
                "order_id": self.order_id,
                "node_id": self.w.node_id,
                "step": None,
                "attempt": None,
            }
            extra.update(fields)
            log.log(level, message, extra=extra)

    async def run(self) -> Outcome:
        parent = extract_context(self.msg.headers)
        with tracer.start_as_current_span(
            "orders.work process", context=parent, kind=SpanKind.CONSUMER
        ) as span:
            span.set_attribute("messaging.system", "nats")
            span.set_attribute("messaging.destination.name", "orders.work")
            span.set_attribute("messaging.message.id", self.order_id)
            span.set_attribute("orderflow.order_id", self.order_id)
            span.set_attribute("orderflow.node_id", self.w.node_id)
            outcome = await self._run()
            span.set_attribute("orderflow.outcome", outcome.value)
            return outcome

    async def _run(self) -> Outcome:
        try:
            order = await self.w.store.get(self.order_id)
        except OrderNotFound:
            return Outcome.NO_DOCUMENT
        except BrokerUnavailable as exc:
            self._log(logging.WARNING, f"broker unavailable: {exc}", "order.abandoned")
            return Outcome.ABANDONED
        if order.terminal:
            await self._ack()
            return Outcome.ALREADY_DONE
        if order.dead_letter is not None:
            # A message published before the order was dead-lettered (a re-drive, say): running
            # it would repeat what exhausted the last one. ``POST /dlq/{id}/replay`` resumes it.
            await self._ack()
            self._log(logging.INFO, "dead-lettered; message dropped", "order.parked")
            return Outcome.PARKED
        now = utcnow()
        holder = lifecycle.live_owner(order, now)
        if holder is not None and holder.node_id != self.w.node_id:
            delay = (holder.lease_expires_at - now).total_seconds() + 0.05
            self.w.stats.deferred += 1
            self._log(
                logging.INFO,
                f"leased by {holder.node_id}; retry in {delay:.2f}s",
                "order.deferred",
                owner=holder.node_id,
            )
            await self._nak(delay)
            return Outcome.DEFERRED
        if lifecycle.claim(order, self.w.node_id, now, self.w.lease):
            self.w.stats.takeovers += 1
            assert order.owner is not None
            self._log(logging.INFO, "took order over", "order.takeover", epoch=order.owner.epoch)
        return await self._drive(order)

    async def _drive(self, order: Order) -> Outcome:
        try:
            if order.status == "rolling_back":
                outcome = await self._roll_back(order)
            else:
                outcome = await self._advance(order)
        except RevisionConflict:
            self.w.stats.cas_conflicts += 1
            self._log(logging.WARNING, "lost the order to another writer", "order.lost")
            return Outcome.LOST
        except BrokerUnavailable as exc:
            self._log(logging.WARNING, f"broker unavailable: {exc}", "order.abandoned")
            return Outcome.ABANDONED
        except HandBack:
            return await self._hand_back(order)
        except Fenced:
            self._log(logging.WARNING, "fenced: not advancing the order", "order.fenced")
            return Outcome.ABANDONED
        return outcome

    async def _advance(self, order: Order) -> Outcome:
        while (step := lifecycle.next_step(order)) is not None:
            if self.w.draining.is_set():
                raise HandBack
            if self.w.fenced():
                raise Fenced
            now = utcnow()
            lifecycle.start_step(order, step, self.w.node_id, now)
            lifecycle.renew(order, now, self.w.lease)
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
        await asyncio.shield(self._finish(order))
        self.w.stats.completed += 1
        return Outcome.COMPLETED

    async def _run_step(self, order: Order, step: StepRecord) -> None:
        assert order.owner is not None
        call = StepCall(self.order_id, step.name, order.owner.epoch, step.attempt)
        with tracer.start_as_current_span(f"step {step.name}") as span:
            span.set_attributes(self._span_attributes(call))
            started = time.monotonic()
            try:
                action = self.w.steps.action(call, order.fail_at, order.poison_at)
                await self._with_keepalive(order, action)
            except StepFailed as exc:
                span.set_attribute("orderflow.outcome", "failed")
                span.set_status(Status(StatusCode.ERROR, exc.reason))
                self.w.observer.step_finished(step.name, time.monotonic() - started, "failed")
                raise
            span.set_attribute("orderflow.outcome", "completed")
            self.w.observer.step_finished(step.name, time.monotonic() - started, "completed")

    def _span_attributes(self, call: StepCall) -> dict[str, str | int]:
        return {
            "orderflow.order_id": call.order_id,
            "orderflow.step": call.step,
            "orderflow.node_id": self.w.node_id,
            "orderflow.attempt": call.attempt,
            "orderflow.epoch": call.epoch,
        }

    async def _fail(self, order: Order, step: StepRecord, reason: str) -> Outcome:
        now = utcnow()
        lifecycle.fail_step(order, step, reason, now)
        lifecycle.renew(order, now, self.w.lease)
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
        await asyncio.shield(self._finish(order))
        self.w.stats.failed += 1
        return Outcome.FAILED

    async def _compensate(self, order: Order, step: StepRecord) -> None:
        assert order.owner is not None
        call = StepCall(self.order_id, step.name, order.owner.epoch, step.attempt)
        with tracer.start_as_current_span(f"compensate {step.name}") as span:
            span.set_attributes(self._span_attributes(call))
            await self._with_keepalive(order, self.w.steps.compensate(call))
            span.set_attribute("orderflow.outcome", "rolled_back")
        now = utcnow()
        lifecycle.compensated(step, now)
        lifecycle.renew(order, now, self.w.lease)
        self._log(
            logging.INFO,
            f"{step.name} rolled back",
            "step.rolled_back",
            step=step.name,
            attempt=step.attempt,
        )

    async def _finish(self, order: Order) -> None:
        """Store the terminal state, then ack: shielded so a shutdown cannot cut in between."""
        now = utcnow()
        lifecycle.finish(order, now)
        await self._save(order)
        failed_step = order.failure.step if order.failure else None
        latency = (now - order.start_time).total_seconds()
        self.w.observer.order_finished(order.status, failed_step, latency)
        try:
            await self._ack()
        except BrokerUnavailable as exc:
            # Stored is what counts: the redelivery will find the order terminal and ack it.
            self._log(logging.WARNING, f"ack not sent: {exc}", "order.ack_failed")
        self._log(logging.INFO, f"order {order.status}", f"order.{order.status}")
        span = trace.get_current_span()
        if order.status == "failed":
            span.set_status(Status(StatusCode.ERROR, "order failed"))

    async def _hand_back(self, order: Order) -> Outcome:
        lifecycle.release(order, utcnow())
        try:
            await self._save(order)
        except (RevisionConflict, BrokerUnavailable) as exc:
            self._log(logging.WARNING, f"hand-back not stored: {exc}", "order.handback_failed")
            return Outcome.LOST
        await self.w.pulls_closed.wait()
        await self._nak(None)
        self.w.stats.handed_back += 1
        self._log(logging.INFO, "handed back (draining)", "order.handed_back")
        return Outcome.HANDED_BACK

    async def _with_keepalive(self, order: Order, work: Coroutine[Any, Any, None]) -> None:
        """Await ``work`` while telling JetStream we are alive and keeping the lease fresh."""
        if self.w.short_steps:
            await work
            return
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.w.keepalive_interval)
                if done:
                    task.result()
                    return
                await self._keepalive(order)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _keepalive(self, order: Order) -> None:
        try:
            with broker_errors("in_progress"):
                await self.msg.in_progress()
        except BrokerUnavailable as exc:
            self._log(logging.WARNING, f"in_progress not sent: {exc}", "order.keepalive_failed")
        owner = order.owner
        now = utcnow()
        if owner is not None and (owner.lease_expires_at - now).total_seconds() < self.w.lease / 2:
            lifecycle.renew(order, now, self.w.lease)
            await self._save(order)

    async def _save(self, order: Order) -> None:
        await self.w.store.update(order)

    async def _ack(self) -> None:
        with broker_errors("ack"):
            await self.msg.ack()

    async def _nak(self, delay: float | None) -> None:
        try:
            with broker_errors("nak"):
                await self.msg.nak(delay=delay)
        except BrokerUnavailable as exc:
            # Not answering is safe: the message comes back after the ack wait.
            self._log(logging.WARNING, f"nak not sent: {exc}", "order.nak_failed")
