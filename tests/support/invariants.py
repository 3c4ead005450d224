"""Checks over an order's KV history: it never goes backwards, no step completes twice."""

from __future__ import annotations

import itertools

from nodeapp.orders.model import Order
from nodeapp.orders.store import HistoryEntry

STEP_RANK = {"pending": 0, "running": 1, "completed": 2, "failed": 2, "rolled_back": 3}
ORDER_RANK = {
    "accepted": 0, "running": 1, "rolling_back": 2, "completed": 3, "failed": 3, "cancelled": 3,
}  # fmt: skip


def assert_history_sane(history: list[HistoryEntry]) -> list[Order]:
    """Assert the invariants over consecutive revisions; return the documents in order."""
    orders = [h.order for h in history if h.order is not None]
    assert orders, "no revisions"
    completions: dict[str, int] = {}
    for before, after in itertools.pairwise(orders):
        assert ORDER_RANK[after.status] >= ORDER_RANK[before.status], (before.status, after.status)
        for old, new in zip(before.steps, after.steps, strict=True):
            rank_old, rank_new = STEP_RANK[old.status], STEP_RANK[new.status]
            # A running step may be re-run after a crash (running -> running); nothing else
            # moves back.
            assert rank_new >= rank_old, (new.name, old.status, new.status)
            if old.complete_time is not None and old.status in ("completed", "rolled_back"):
                assert new.complete_time == old.complete_time, f"{new.name} completed twice"
            if old.status != "completed" and new.status == "completed":
                completions[new.name] = completions.get(new.name, 0) + 1
        if before.owner is not None and after.owner is not None:
            assert after.owner.epoch >= before.owner.epoch
    assert all(count == 1 for count in completions.values()), completions
    return orders
