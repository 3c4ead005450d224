"""A rolling restart under load: every node is drained (SIGTERM) and replaced in turn. Nothing is
lost, and no order stalls for much longer than one step, because a drained node hands its orders
back at once instead of leaving them to the ack wait."""

from __future__ import annotations

import asyncio
import itertools
import signal

import msgspec

from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from tests.support.invariants import assert_history_sane
from tests.support.orders import submit, wait_all_terminal
from tests.support.processes import NodeProcesses, wait_registered

STEP = 0.5


async def test_rolling_restart_loses_nothing_and_stalls_little(
    settings: Settings, broker: Handles, node_processes: NodeProcesses
) -> None:
    # A long ack wait: an order left to it would stall ~20 s and fail the stall bound below.
    node_processes.settings = msgspec.structs.replace(
        settings, step_seconds=STEP, ack_wait=20.0, lease_seconds=20.0, concurrency=50
    )
    nodes = [node_processes.start(f"node-{i}") for i in range(3)]
    for node in nodes:
        await wait_registered(broker, node)
    order_ids: list[str] = []

    async def load() -> None:
        for _ in range(60):  # ~10 orders/s: well under capacity, so queueing adds no stall
            order_ids.append(await submit(broker.intake))
            await asyncio.sleep(0.1)

    submitter = asyncio.create_task(load())
    for generation, old in zip(itertools.count(1), list(nodes), strict=False):
        replacement = node_processes.start(f"{old.node_id}-gen{generation}")
        await wait_registered(broker, replacement)
        old.signal(signal.SIGTERM)
        assert await asyncio.to_thread(old.proc.wait, 30) == 0
    await submitter

    orders = await wait_all_terminal(broker.store, order_ids, within=60)
    assert all(o.status == "completed" for o in orders)
    worst = 0.0
    for order in orders:
        history = await broker.store.history(order.order_id)
        assert_history_sane(history)
        times = [h.time for h in history if h.time is not None]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        worst = max(worst, *gaps)
    # A step, plus the drain's wait for its last pull request (1 s), plus scheduling slack.
    assert worst < STEP + 3.0, worst
