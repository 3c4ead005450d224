"""Transitions named by diffing two revisions, for the cases a single healthy node never shows:
takeover, re-run, hand-back, renewal, deletion, and revisions skipped by a poller."""

from __future__ import annotations

import copy
from datetime import timedelta

from nodeapp.orders import lifecycle
from nodeapp.orders.model import Item, Order, new_order, utcnow
from nodeapp.orders.store import HistoryEntry
from nodeapp.orders.timeline import describe, timeline

T0 = utcnow()


def _accepted() -> Order:
    return new_order("01ARZ3NDEKTSV4RRFFQ69G5FAV", "c", [Item("p", 1)], None, now=T0)


def _next(order: Order) -> Order:
    return copy.deepcopy(order)


def _claimed_and_started(node: str, order: Order | None = None, at: float = 1.0) -> Order:
    order = _next(order or _accepted())
    now = T0 + timedelta(seconds=at)
    lifecycle.claim(order, node, now, lease=10)
    step = lifecycle.next_step(order)
    assert step is not None
    lifecycle.start_step(order, step, node, now)
    return order


def test_takeover_of_an_interrupted_step() -> None:
    first = _claimed_and_started("node-a")
    second = _claimed_and_started("node-b", first, at=20)
    assert describe(first, second) == (
        "taken over by node-b from node-a (epoch 2), Scheduling restarted (attempt 2)"
    )


def test_hand_back_with_the_step_it_finished() -> None:
    running = _claimed_and_started("node-a")
    handed = _next(running)
    now = T0 + timedelta(seconds=2)
    lifecycle.complete_step(handed.steps[0], now)
    lifecycle.release(handed, now)
    assert describe(running, handed) == "Scheduling completed, handed back by node-a"


def test_a_renewal_alone_is_named_and_otherwise_silent() -> None:
    running = _claimed_and_started("node-a")
    renewed = _next(running)
    lifecycle.renew(renewed, T0 + timedelta(seconds=5), lease=10)
    assert describe(running, renewed) == "lease renewed by node-a"
    assert describe(renewed, renewed) == "updated"


def test_skipped_revisions_are_described_together() -> None:
    running = _claimed_and_started("node-a")
    later = _next(running)
    now = T0 + timedelta(seconds=3)
    for step in later.steps[:2]:
        lifecycle.complete_step(step, now)
    lifecycle.start_step(later, later.steps[2], "node-a", now)
    assert describe(running, later) == (
        "Scheduling completed, Pre-Processing completed, Processing started"
    )


def test_timeline_keeps_delete_markers_and_falls_back_to_document_times() -> None:
    accepted = _accepted()
    accepted.revision = 1
    started = _claimed_and_started("node-a", accepted)
    history = [
        HistoryEntry(revision=1, order=accepted, time=None),
        HistoryEntry(revision=2, order=started, time=None),
        HistoryEntry(revision=3, order=None, time=None),
    ]
    revisions = timeline(history)
    assert [r.transition for r in revisions] == [
        "accepted",
        "claimed by node-a (epoch 1), Scheduling started",
        "deleted",
    ]
    assert revisions[0].time == T0
    assert revisions[1].time == T0 + timedelta(seconds=1)
    assert (revisions[0].node_id, revisions[1].node_id, revisions[2].node_id) == (
        None,
        "node-a",
        None,
    )
