"""Pure transitions of an order document: what changes when a node claims, starts, completes,
fails, compensates or hands back. No I/O here; ``pipeline`` decides when to store.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from nodeapp.orders.model import COMPLETED, FAILED, Failure, Order, Owner, StepRecord


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
    """Steps whose effects must be undone, latest first: the failed one and those before it."""
    return [
        s
        for s in reversed(order.steps)
        if s.status in ("completed", "failed") and s.rollback_time is None
    ]


def compensated(step: StepRecord, now: datetime) -> None:
    step.rollback_time = now
    if step.status == "completed":
        step.status = "rolled_back"


def finish(order: Order, now: datetime) -> None:
    """Terminal state: Completed, or Failed after a failure's compensations."""
    failed = order.status == "rolling_back"
    order.status = "failed" if failed else "completed"
    order.current_step = FAILED if failed else COMPLETED
    order.complete_time = now
    release(order, now)  # the last owner and its epoch stay on record
