"""An order's timeline: every stored revision with a short description of what changed.

The KV bucket keeps the documents, not the events, so the transition is computed by diffing
consecutive revisions. That also makes it work across skipped revisions (``order watch`` polls
and may see two steps move at once): the description then names both changes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import datetime

import msgspec

from nodeapp.orders.model import TERMINAL_STATUSES, Order, StepRecord
from nodeapp.orders.store import HistoryEntry


class Revision(msgspec.Struct, frozen=True):
    """One line of ``GET /orders/{id}/history``; ``document`` is None for a delete marker."""

    revision: int | None
    time: datetime | None
    status: str | None
    current_step: str | None
    node_id: str | None
    transition: str
    document: Order | None


def timeline(history: list[HistoryEntry]) -> list[Revision]:
    """The revisions oldest first, each described against the one before it."""
    out = []
    before: Order | None = None
    for entry in history:
        after = entry.order
        out.append(
            Revision(
                revision=entry.revision,
                time=entry.time or (newest_time(after) if after else None),
                status=after.status if after else None,
                current_step=after.current_step if after else None,
                node_id=_writer(after),
                transition=describe(before, after),
                document=after,
            )
        )
        before = after
    return out


def describe(before: Order | None, after: Order | None) -> str:
    """What changed from ``before`` to ``after``: "Scheduling completed, Processing started"."""
    if after is None:
        return "deleted"
    if before is None:
        return "accepted" if after.status == "accepted" else f"first seen {after.status}"
    parts = [*_ownership(before, after), *_steps(before, after), *_outcome(before, after)]
    parts += _lease(before, after, renewal=not parts)
    return ", ".join(parts) or "updated"


def newest_time(order: Order) -> datetime:
    """The latest timestamp written into the document: when it was last changed, roughly."""
    times: Iterable[datetime | None] = itertools.chain(
        (order.start_time, order.complete_time, order.failure.time if order.failure else None),
        *((s.start_time, s.complete_time, s.rollback_time) for s in order.steps),
    )
    return max(t for t in times if t is not None)


def _writer(order: Order | None) -> str | None:
    """The owner writes every revision after the claim; before that nobody has run anything."""
    if order is None:
        return None
    if order.owner is not None:
        return order.owner.node_id
    running = [s.node_id for s in order.steps if s.node_id]
    return running[-1] if running else None


def _ownership(before: Order, after: Order) -> list[str]:
    owner = after.owner
    if owner is None or after.attempts <= before.attempts:
        return []
    previous = before.owner
    if previous is None:
        return [f"claimed by {owner.node_id} (epoch {owner.epoch})"]
    if previous.node_id != owner.node_id:
        return [f"taken over by {owner.node_id} from {previous.node_id} (epoch {owner.epoch})"]
    return [f"reclaimed by {owner.node_id} (epoch {owner.epoch})"]


def _steps(before: Order, after: Order) -> list[str]:
    pairs = list(zip(before.steps, after.steps, strict=False))
    forward = [text for old, new in pairs if (text := _step_change(old, new, after))]
    # Compensations run latest step first; list them in that order.
    rolled_back = [
        f"{new.name} rolled back"
        for old, new in reversed(pairs)
        if new.rollback_time is not None and old.rollback_time is None
    ]
    return forward + rolled_back


def _step_change(old: StepRecord, new: StepRecord, order: Order) -> str | None:
    if new.status == "running" and (old.status != "running" or new.attempt != old.attempt):
        if new.attempt > 1:
            return f"{new.name} restarted (attempt {new.attempt})"
        return f"{new.name} started"
    if new.status == "completed" and old.status != "completed":
        return f"{new.name} completed"
    if new.status == "rolled_back" and old.status == "running" and new.complete_time is not None:
        return f"{new.name} completed"  # and undone in the same write: a cancel's first step
    if new.status == "failed" and old.status != "failed":
        failure = order.failure
        reason = failure.reason if failure is not None and failure.step == new.name else None
        return f"{new.name} failed: {reason}" if reason else f"{new.name} failed"
    return None


def _outcome(before: Order, after: Order) -> list[str]:
    parts = []
    if after.cancel_requested_at and not before.cancel_requested_at:
        parts.append("cancel requested")
    if after.status != before.status and after.status in TERMINAL_STATUSES:
        parts.append(f"order {after.status}")
    if after.dead_letter and not before.dead_letter:
        parts.append(f"dead-lettered: {after.dead_letter_reason}")
    if before.dead_letter and not after.dead_letter:
        parts.append("replayed from the dead letters")
    return parts


def _lease(before: Order, after: Order, *, renewal: bool) -> list[str]:
    """The same owner ended its lease early (a drain's hand-back), or only renewed it (worth
    naming when nothing else changed: a keep-alive during a long step)."""
    old, new = before.owner, after.owner
    if old is None or new is None or after.terminal or after.attempts != before.attempts:
        return []
    if new.lease_expires_at < old.lease_expires_at:
        return [f"handed back by {new.node_id}"]
    if renewal and new.lease_expires_at > old.lease_expires_at:
        return [f"lease renewed by {new.node_id}"]
    return []
