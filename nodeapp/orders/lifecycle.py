"""Pure transitions of an order document: what changes when a node claims, starts, completes,
fails, compensates, is cancelled or hands back. No I/O here; ``pipeline`` decides when to store.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from nodeapp.orders.model import (
    CANCELLED,
    COMPLETED,
    FAILED,
    STEP_NAMES,
    Failure,
    Order,
    Owner,
    StepRecord,
)


def live_owner(order: Order, now: datetime) -> Owner | None:
    """The owner whose lease has not expired, if any."""
    owner = order.owner
    if owner is not None and owner.lease_expires_at > now:
        return owner
    return None


def claim(order: Order, node_id: str, now: datetime, lease: float) -> bool:
    """Make ``node_id`` the owner; return True when this takes the order over from another node.

    The epoch rises whenever the owner changes, so a step action can refuse a stale owner.
    """
    previous = order.owner
    takeover = previous is not None and previous.node_id != node_id
    if previous is None:
        epoch = 1
    elif takeover:
        epoch = previous.epoch + 1
    else:
        epoch = previous.epoch
    order.owner = Owner(node_id, now + timedelta(seconds=lease), epoch)
    order.attempts += 1
    if order.status == "accepted":
        order.status = "running"
    return takeover


def renew(order: Order, now: datetime, lease: float) -> None:
    if order.owner is not None:
        order.owner.lease_expires_at = now + timedelta(seconds=lease)


def release(order: Order, now: datetime) -> None:
    """Hand the order back: the lease ends now, the epoch stays so the next claim raises it."""
    if order.owner is not None:
        order.owner.lease_expires_at = now


def next_step(order: Order) -> StepRecord | None:
    """The first step not completed (a step left ``running`` by a crash is re-run)."""
    for step in order.steps:
        if step.status != "completed":
            return step
    return None


def start_step(order: Order, step: StepRecord, node_id: str, now: datetime) -> None:
    step.status = "running"
    step.start_time = now
    step.complete_time = None
    step.node_id = node_id
    step.attempt += 1
    order.current_step = step.name


def complete_step(step: StepRecord, now: datetime) -> None:
    step.status = "completed"
    step.complete_time = now


def fail_step(order: Order, step: StepRecord, reason: str, now: datetime) -> None:
    step.status = "failed"
    step.complete_time = now
    order.failure = Failure(step=step.name, reason=reason, time=now)
    order.status = "rolling_back"


def to_compensate(order: Order) -> list[StepRecord]:
    """Steps whose effects must be undone, latest first: the failed one and those before it,
    and on a cancel the step that was interrupted (left ``running``)."""
    return [
        s
        for s in reversed(order.steps)
        if s.status in ("completed", "failed", "running") and s.rollback_time is None
    ]


def compensated(step: StepRecord, now: datetime) -> None:
    step.rollback_time = now
    if step.status in ("completed", "running"):
        step.status = "rolled_back"


def begin_cancel(order: Order, now: datetime, lease: float) -> None:
    """A cancel request was seen: from here on the order only compensates (ADR 0013).
    ``current_step`` names the last step that ran (the first compensated), as on a failure."""
    order.status = "rolling_back"
    order.complete_time = None
    ran = [s.name for s in order.steps if s.status != "pending"]
    order.current_step = ran[-1] if ran else STEP_NAMES[0]
    renew(order, now, lease)


def cancel_unstarted(order: Order, now: datetime) -> None:
    """The api's cancel of an order no node has claimed: nothing ran, nothing to undo."""
    order.cancel_requested_at = order.cancel_requested_at or now
    order.status = "cancelled"
    order.current_step = CANCELLED
    order.complete_time = now


def finish(order: Order, now: datetime) -> None:
    """Terminal state: Cancelled once a cancel was requested, else Failed after a failure's
    compensations, else Completed. Safe to apply again after a cancel arrived meanwhile."""
    if order.cancel_requested_at is not None:
        order.status, order.current_step = "cancelled", CANCELLED
    elif order.failure is not None:
        order.status, order.current_step = "failed", FAILED
    else:
        order.status, order.current_step = "completed", COMPLETED
    order.complete_time = now
    release(order, now)  # the last owner and its epoch stay on record
