"""The chaos run's verdict, computed from every stored revision of every order.

The checks of ``tests/invariants.py`` (``assert_history_sane``), kept as counts instead of
asserts so one run reports every violation, plus what only a run with crashes can show: who
took an order over from whom, how long that took, and whether two owners ever overlapped.
Revisions are fed one at a time in stream order, so only the previous document of each order is
held in memory, whatever the run's length.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import msgspec

from benchmarks.common import percentile
from nodeapp.orders.model import Order, Owner

STEP_RANK = {"pending": 0, "running": 1, "completed": 2, "failed": 2, "rolled_back": 3}
ORDER_RANK = {"accepted": 0, "running": 1, "rolling_back": 2, "completed": 3, "failed": 3}
OVERLAP_TOLERANCE = 0.01  # seconds: broker and node clocks are the same host's, not the same call


class Takeover(msgspec.Struct, frozen=True):
    """Ownership passed from one node to another (a higher epoch on another node)."""

    order_id: str
    from_node: str
    to_node: str
    at: datetime  # when the new owner's first revision was stored
    seconds: float  # last revision by the old owner -> first revision by the new one
    handed_back: bool  # the old owner released its lease (a drain), rather than vanishing
    overlap: float  # seconds the new owner wrote while the old lease still ran (0: none)


class OrderTrack:
    """Everything the checks need from one order's revisions, fed oldest first."""

    def __init__(self, order_id: str, lease: float) -> None:
        self.order_id = order_id
        self.lease = lease
        self.last: Order | None = None
        self.last_time: datetime | None = None
        self.revisions = 0
        self.deleted = False
        self.truncated = False  # the first revision kept is not the first written (64 max)
        self.completions: dict[str, int] = {}
        self.completed_twice: list[str] = []
        self.backwards: list[str] = []
        self.stale_writes: list[str] = []
        self.holder: Owner | None = None  # the legitimate owner as of its last revision
        self.holder_time: datetime | None = None
        self.max_gap = 0.0
        self.takeovers: list[Takeover] = []

    def feed(self, stored: datetime, order: Order | None) -> None:
        """One revision: ``order`` is None for a delete or purge marker."""
        self.revisions += 1
        before, before_time = self.last, self.last_time
        if order is None:
            self.deleted = True
            self.last, self.last_time = None, stored
            return
        if before is None and not self.deleted and order.status != "accepted":
            self.truncated = True
        if before is not None and before_time is not None:
            if not before.terminal:
                self.max_gap = max(self.max_gap, (stored - before_time).total_seconds())
            self._compare(before, order)
        self._check_owner(order, stored)
        self.last, self.last_time = order, stored

    def _compare(self, before: Order, after: Order) -> None:
        if ORDER_RANK[after.status] < ORDER_RANK[before.status]:
            self.backwards.append(f"order {before.status}->{after.status}")
        for old, new in zip(before.steps, after.steps, strict=True):
            if STEP_RANK[new.status] < STEP_RANK[old.status]:
                self.backwards.append(f"{new.name} {old.status}->{new.status}")
            elif (
                old.status in ("completed", "rolled_back")
                and old.complete_time is not None
                and new.complete_time != old.complete_time
            ):
                self.completed_twice.append(f"{new.name} recorded complete again")
            if old.status != "completed" and new.status == "completed":
                count = self.completions.get(new.name, 0) + 1
                self.completions[new.name] = count
                if count > 1:
                    self.completed_twice.append(f"{new.name} completed {count} times")

    def _check_owner(self, order: Order, stored: datetime) -> None:
        """Follow the legitimate owner (the highest epoch so far). A revision by a lower epoch,
        or by another node with the same epoch, is a stale owner writing after it lost the
        order; a higher epoch on another node is a takeover."""
        owner = order.owner
        if owner is None:
            return
        holder, since = self.holder, self.holder_time
        if holder is not None and owner.epoch < holder.epoch:
            self.stale_writes.append(f"{owner.node_id} wrote epoch {owner.epoch} < {holder.epoch}")
            return
        if holder is not None and since is not None and owner.node_id != holder.node_id:
            if owner.epoch == holder.epoch:
                self.stale_writes.append(
                    f"{owner.node_id} and {holder.node_id} both hold epoch {owner.epoch}"
                )
                return
            self._takeover(holder, since, owner.node_id, stored)
        self.holder = Owner(owner.node_id, owner.lease_expires_at, owner.epoch)
        self.holder_time = stored

    def _takeover(self, old: Owner, since: datetime, new_node: str, stored: datetime) -> None:
        left = (old.lease_expires_at - since).total_seconds()
        overlap = (old.lease_expires_at - stored).total_seconds()
        self.takeovers.append(
            Takeover(
                order_id=self.order_id,
                from_node=old.node_id,
                to_node=new_node,
                at=stored,
                seconds=(stored - since).total_seconds(),
                handed_back=left < self.lease / 2,
                overlap=overlap if overlap > OVERLAP_TOLERANCE else 0.0,
            )
        )

    @property
    def outcome(self) -> str:
        """``completed``, ``failed``, ``dead_lettered`` (parked for a replay) or ``lost``."""
        order = self.last
        if order is None:
            return "lost"
        if order.terminal:
            return order.status
        return "dead_lettered" if order.dead_letter is not None else "lost"


class Failover(msgspec.Struct, kw_only=True):
    """Takeover times of one cause, in seconds."""

    count: int
    p50: float | None
    p99: float | None
    max: float | None


class Verdict(msgspec.Struct, kw_only=True):
    """The checked outcome of a run; ``violations`` is what must be zero."""

    submitted: int
    completed: int
    failed: int
    dead_lettered: int
    lost: int
    lost_orders: list[str]
    double_advanced: int
    completed_twice: int
    stale_owner_writes: int
    lease_overlaps: int
    backwards: int
    examples: list[str]
    truncated_histories: int
    revisions: int
    max_stall: float
    max_stall_order: str | None
    stall_p99: float | None
    failover: dict[str, Failover]
    slowest_takeovers: list[str]

    @property
    def violations(self) -> int:
        return self.lost + self.double_advanced + self.backwards


def _failover(times: list[float]) -> Failover:
    ordered = sorted(times)
    if not ordered:
        return Failover(count=0, p50=None, p99=None, max=None)
    return Failover(
        count=len(ordered),
        p50=percentile(ordered, 0.5),
        p99=percentile(ordered, 0.99),
        max=ordered[-1],
    )


def cause(t: Takeover, killed: dict[str, datetime], drained: dict[str, datetime]) -> str:
    """Why ownership moved: the old owner had been SIGKILLed, handed back while draining, had
    been drained but not handed back, or (``expired``) was alive and let its lease run out."""
    if t.from_node in killed and killed[t.from_node] <= t.at:
        return "kill"
    if t.handed_back:
        return "handback"
    if t.from_node in drained and drained[t.from_node] <= t.at:
        return "drain"
    return "expired"


def verdict(
    tracks: Iterable[OrderTrack],
    killed: dict[str, datetime],
    drained: dict[str, datetime],
    start: datetime,
) -> Verdict:
    """Count outcomes and violations over every order's track; ``start`` is the wall-clock
    time the run's clock counts from (takeovers are listed relative to it)."""
    tracks = list(tracks)
    takeovers: list[Takeover] = []
    outcomes = {"completed": 0, "failed": 0, "dead_lettered": 0, "lost": 0}
    lost: list[str] = []
    examples: list[str] = []
    by_cause: dict[str, list[float]] = {"all": []}
    stalls: list[float] = []
    worst: OrderTrack | None = None
    for track in tracks:
        outcome = track.outcome
        outcomes[outcome] += 1
        if outcome == "lost":
            lost.append(track.order_id)
        for problem in track.completed_twice + track.stale_writes + track.backwards:
            examples.append(f"{track.order_id}: {problem}")
        takeovers += track.takeovers
        for t in track.takeovers:
            if t.overlap:
                examples.append(f"{t.order_id}: {t.to_node} wrote {t.overlap:.3f}s into the lease")
            by_cause["all"].append(t.seconds)
            by_cause.setdefault(cause(t, killed, drained), []).append(t.seconds)
        stalls.append(track.max_gap)
        if worst is None or track.max_gap > worst.max_gap:
            worst = track
    twice = sum(bool(t.completed_twice) for t in tracks)
    stale = sum(len(t.stale_writes) for t in tracks)
    overlaps = sum(1 for t in tracks for x in t.takeovers if x.overlap)
    return Verdict(
        submitted=len(tracks),
        completed=outcomes["completed"],
        failed=outcomes["failed"],
        dead_lettered=outcomes["dead_lettered"],
        lost=outcomes["lost"],
        lost_orders=lost[:20],
        double_advanced=twice + stale + overlaps,
        completed_twice=twice,
        stale_owner_writes=stale,
        lease_overlaps=overlaps,
        backwards=sum(bool(t.backwards) for t in tracks),
        examples=examples[:20],
        truncated_histories=sum(t.truncated for t in tracks),
        revisions=sum(t.revisions for t in tracks),
        max_stall=worst.max_gap if worst else 0.0,
        max_stall_order=worst.order_id if worst else None,
        stall_p99=percentile(sorted(stalls), 0.99) if stalls else None,
        failover={k: _failover(v) for k, v in sorted(by_cause.items())},
        slowest_takeovers=[
            f"{(t.at - start).total_seconds():.1f}s {t.order_id} {t.from_node} -> {t.to_node} "
            f"after {t.seconds:.2f}s ({cause(t, killed, drained)})"
            for t in sorted(takeovers, key=lambda t: t.seconds, reverse=True)[:5]
        ],
    )
