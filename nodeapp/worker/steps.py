"""The four steps' actions and compensations (simulated work).

Each action sleeps for the configured duration and fails with the configured probability, or
always when the order asks for it (``fail_at``, with fault injection on). ``poison_at`` (fault
injection on) kills the node process outright when the order reaches that step: a real poison
order, which crashes every node that takes it until it is dead-lettered. The failure draw is a
hash of (order id, step): re-running a step after a crash gives the same answer, so actions are
idempotent, keyed by (order id, step). A real action would also get the lease ``epoch`` to refuse
a stale owner at its side-effect (fencing).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import Final, NoReturn

import msgspec

from nodeapp.core.settings import Settings

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


class SimulatedSteps:
    """Sleep-bound actions with a failure rate, as the original requirements describe."""

    def __init__(self, settings: Settings) -> None:
        self.seconds = settings.step_seconds
        self.failure_rate = settings.failure_rate
        self.fault_injection = settings.fault_injection

    async def action(
        self, call: StepCall, fail_at: str | None, poison_at: str | None = None
    ) -> None:
        if self.fault_injection and poison_at == call.step:
            self._die(call)
        if self.seconds > 0:
            await asyncio.sleep(self.seconds)
        if self.fault_injection and fail_at == call.step:
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

    async def compensate(self, call: StepCall) -> None:
        """Undo the step's effect; simulated as instantaneous and always successful."""
        await asyncio.sleep(0)
