"""The four steps: each one's real effect (``nodeapp.worker.effects``), then its simulated work.

The simulated work sleeps for the configured duration and fails with the configured
probability, or always when the order asks for it (``fail_at``, with fault injection on).
``poison_at`` (fault injection on) kills the node process outright when the order reaches that
step, before its effect: a real poison order, which crashes every node that takes it until it
is dead-lettered. The failure draw is a hash of (order id, step): re-running a step after a
crash gives the same answer. The effects are idempotent per order and fenced by the owner's
epoch (``StepCall.epoch``), so a step re-run changes nothing twice and a stale owner nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import Final, NoReturn

import msgspec

from nodeapp.core.settings import Settings
from nodeapp.orders.model import Order
from nodeapp.worker.effects import ShopEffects

log = logging.getLogger("orderflow.steps")

POISON_EXIT_CODE: Final = 70  # EX_SOFTWARE: the order, not the environment, killed the node


class StepFailed(Exception):
    """A step's action failed; the order is rolled back."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


class StepCall(msgspec.Struct, frozen=True):
    """What an action or compensation is told: enough to be idempotent and to fence."""

    order_id: str
    step: str
    epoch: int
    attempt: int


def failure_draw(order_id: str, step: str) -> float:
    """A uniform number in [0, 1) fixed by (order id, step)."""
    digest = hashlib.blake2b(f"{order_id}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class Steps:
    """Each step's effect, then its sleep-bound work with a failure rate (the original
    requirements); compensations undo the effect (the simulated work has nothing to undo)."""

    def __init__(self, settings: Settings, effects: ShopEffects) -> None:
        self.seconds = settings.step_seconds
        self.failure_rate = settings.failure_rate
        self.fault_injection = settings.fault_injection
        self.effects = effects

    def may_wait(self, order: Order, step: str) -> bool:
        """Whether the step can take longer than its simulated work (a payment verdict)."""
        return self.effects.may_wait(step, order)

    async def action(
        self, order: Order, call: StepCall, interrupt: asyncio.Event | None = None
    ) -> None:
        """Run the step; ``StepFailed`` with the reason when it fails. ``interrupt`` (a cancel
        was announced) cuts a payment wait short: ``WaitInterrupted``."""
        if self.fault_injection and order.poison_at == call.step:
            self._die(call)
        reason = await self.effects.apply(call.step, order, call.epoch, interrupt)
        if reason is not None:
            raise StepFailed(call.step, reason)
        if self.seconds > 0:
            await asyncio.sleep(self.seconds)
        if self.fault_injection and order.fail_at == call.step:
            raise StepFailed(call.step, "injected failure (fail_at)")
        if self.failure_rate > 0 and failure_draw(call.order_id, call.step) < self.failure_rate:
            raise StepFailed(call.step, "simulated failure")

    @staticmethod
    def _die(call: StepCall) -> NoReturn:
        """Exit at once, as a segfault or an OOM kill would: no drain, no hand-back, no ack."""
        log.critical(
            "injected poison (poison_at): exiting %d",
            POISON_EXIT_CODE,
            extra={"event": "order.poisoned", "order_id": call.order_id, "step": call.step},
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(POISON_EXIT_CODE)

    async def compensate(self, order: Order, call: StepCall, interrupted: bool = False) -> None:
        """Undo the step's effect; Processing's "cancel fulfilment" has nothing to undo.
        ``interrupted``: the step did not finish, its effect may be half done."""
        await self.effects.undo(call.step, order, call.epoch, interrupted=interrupted)
