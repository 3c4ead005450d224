"""A node holds at most ``concurrency`` orders at once, and does hold that many while work waits."""

from __future__ import annotations

import asyncio
from datetime import datetime

import msgspec

from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import Order
from tests.support.nodes import running_node
from tests.support.orders import submit, wait_all_terminal


def max_overlap(orders: list[Order]) -> int:
    """Most orders between their first step's start and their completion at any instant."""
    events: list[tuple[datetime, int]] = []
    for order in orders:
        start = order.steps[0].start_time
        assert start is not None
        assert order.complete_time is not None
        events += [(start, 1), (order.complete_time, -1)]
    events.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


async def test_fifty_in_flight(settings: Settings, broker: Handles) -> None:
    node_settings = msgspec.structs.replace(settings, step_seconds=0.2, concurrency=50)
    order_ids = list(await asyncio.gather(*(submit(broker.intake) for _ in range(120))))
    async with running_node(node_settings):
        orders = await wait_all_terminal(broker.store, order_ids, within=60)
    assert all(o.status == "completed" for o in orders)
    peak = max_overlap(orders)
    assert peak <= 50
    # With 120 queued the node must fill its 50 slots, not trickle.
    assert peak >= 45, peak
    # And it works the backlog in waves of ~50: orders started in the first 0.2 s window are 50.
    first = min(o.steps[0].start_time for o in orders if o.steps[0].start_time)
    early = [
        o
        for o in orders
        if o.steps[0].start_time and (o.steps[0].start_time - first).total_seconds() < 0.1
    ]
    assert 45 <= len(early) <= 50, len(early)
