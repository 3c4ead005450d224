"""One step's work inside an order run: its start stored, its action or its compensation, in a
span, measured, with the work message and the order's lease kept alive while it lasts; and
``RunContext``, what every run on one node shares.

A step's start is stored before its work, except (ADR 0019) after the run's claim, for a short
step with no effect (Processing; Pre-Processing when there is nothing to pay): its simulated work
starts at once and the start write runs alongside. A write that finds a cancel request or loses
the order stops that work at once; it had nothing to undo.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from opentelemetry.trace import Status, StatusCode

from nodeapp.cluster.membership import NodeStats
from nodeapp.core.tracing import span
from nodeapp.orders import lifecycle
from nodeapp.orders.model import Order, StepRecord, utcnow
from nodeapp.orders.store import OrderStore
from nodeapp.worker.delivery import Delivery
from nodeapp.worker.effects import ShopEffects
from nodeapp.worker.keepalive import while_beating
from nodeapp.worker.observer import Observer
from nodeapp.worker.orderlog import log_order
from nodeapp.worker.steps import StepCall, StepFailed, Steps
from nodeapp.worker.writes import CancelNoticed, OrderWrites, restore, snapshot

log = logging.getLogger("orderflow.pipeline")


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


class StepWork:
    """The step-level work of one run. ``interrupt`` is set when a cancel is announced: it
    cuts a payment wait short (``WaitInterrupted``); the simulated work always runs out."""

    def __init__(
        self, ctx: RunContext, delivery: Delivery, writes: OrderWrites, interrupt: asyncio.Event
    ) -> None:
        self.ctx = ctx
        self.delivery = delivery
        self.writes = writes
        self.interrupt = interrupt

    async def begin(self, order: Order, step: StepRecord) -> None:
        """Store the step's start and run its action: ``StepFailed`` when it fails,
        ``CancelNoticed`` (the start undone, the work stopped) when a cancel came first."""
        before = snapshot(order)
        now = utcnow()
        lifecycle.start_step(order, step, self.ctx.node_id, now)
        lifecycle.renew(order, now, self.ctx.lease)
        if not self._may_overlap(order, step):
            await self._store_start(order, step, before)
            await self.action(order, step)
            return
        working = asyncio.ensure_future(self.action(order, step))
        try:
            await self._store_start(order, step, before)
        except BaseException:
            working.cancel()
            await asyncio.wait({working})
            if not working.cancelled():
                working.exception()  # the write's outcome is what counts; the work was stopped
            raise
        await working

    def _may_overlap(self, order: Order, step: StepRecord) -> bool:
        """After the claim (the write that makes the order ours), a short step with nothing but
        simulated work (no effect, no payment wait, no injected poison) need not wait for its
        start to be stored."""
        return (
            self.writes.saved
            and self.ctx.short_steps
            and not self.ctx.effects.acts(step.name, order)
            and order.poison_at != step.name
        )

    async def _store_start(self, order: Order, step: StepRecord, before: Order) -> None:
        try:
            await self.writes.save(order, adopt=False)
        except CancelNoticed:
            restore(order, before)
            raise
        log_order(
            log, logging.INFO, f"{step.name} started", "step.started", order.order_id,
            self.ctx.node_id, step=step.name, attempt=step.attempt,
        )  # fmt: skip

    async def action(self, order: Order, step: StepRecord) -> None:
        """Run the step's action; ``StepFailed`` when it fails."""
        call = self._call(order, step)
        observer = self.ctx.observer
        with span(f"step {step.name}") as sp:
            if sp.is_recording():
                sp.set_attributes(self._span_attributes(call))
            started = time.monotonic()
            try:
                action = self.ctx.steps.action(order, call, self.interrupt)
                await self._with_keepalive(order, action, self.ctx.steps.may_wait(order, step.name))
            except StepFailed as exc:
                sp.set_attribute("orderflow.outcome", "failed")
                sp.set_status(Status(StatusCode.ERROR, exc.reason))
                observer.step_finished(step.name, time.monotonic() - started, "failed")
                raise
            sp.set_attribute("orderflow.outcome", "completed")
            observer.step_finished(step.name, time.monotonic() - started, "completed")

    async def compensate(self, order: Order, step: StepRecord) -> None:
        """Undo the step's effect. A step still ``running`` was interrupted (a cancel during a
        payment wait, or a crash): its effect may be half done, so the undo asks, not assumes."""
        call = self._call(order, step)
        interrupted = step.status == "running"
        with span(f"compensate {step.name}") as sp:
            if sp.is_recording():
                sp.set_attributes(self._span_attributes(call))
            await self._with_keepalive(order, self.ctx.steps.compensate(order, call, interrupted))
            sp.set_attribute("orderflow.outcome", "rolled_back")

    def _call(self, order: Order, step: StepRecord) -> StepCall:
        assert order.owner is not None
        return StepCall(order.order_id, step.name, order.owner.epoch, step.attempt)

    def _span_attributes(self, call: StepCall) -> dict[str, str | int]:
        return {
            "orderflow.order_id": call.order_id,
            "orderflow.step": call.step,
            "orderflow.node_id": self.ctx.node_id,
            "orderflow.attempt": call.attempt,
            "orderflow.epoch": call.epoch,
        }

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
            await self.writes.save(order)  # a cancel request found here is adopted
