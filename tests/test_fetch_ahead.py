"""Fetching ahead (ADR 0022): a node asks for the next orders while orders run their last step,
holds what comes without starting it, and never has more than C orders between first step and
completion. A held message is never claimed before it has a slot, goes back at once when the
node drains, and a document read ahead that went stale costs one refused write and a re-read."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import msgspec

from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import Owner, utcnow
from nodeapp.worker.node import Node
from tests.support.nodes import running_node
from tests.support.orders import submit, wait_all_terminal, wait_terminal
from tests.support.waiting import wait_for
from tests.test_capacity import max_overlap

# A long ack wait and lease: a held message that were not handed back or re-read at once
# would come back only after 30 s, long past these tests' deadlines.
SLOW_REDELIVERY = {"ack_wait": 30.0, "lease_seconds": 30.0}


async def held(node: Node, count: int = 1) -> bool:
    return node.slots.waiting >= count


async def test_held_messages_never_outnumber_the_orders_in_their_last_step(
    settings: Settings, broker: Handles
) -> None:
    concurrency = 3
    node_settings = msgspec.structs.replace(settings, step_seconds=0.1, concurrency=concurrency)
    order_ids = list(await asyncio.gather(*(submit(broker.intake) for _ in range(12))))
    samples: list[tuple[int, int, int, int]] = []

    async def watch(node: Node) -> None:
        while True:
            slots = node.slots
            samples.append((slots.taken, slots.finishing, slots.waiting, slots.wanted))
            await asyncio.sleep(0.002)

    async with running_node(node_settings) as node:
        watching = asyncio.create_task(watch(node))
        try:
            await wait_for(lambda: held(node), within=10)  # it does fetch ahead
            orders = await wait_all_terminal(broker.store, order_ids, within=30)
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
    assert all(o.status == "completed" for o in orders)
    assert max_overlap(orders) <= concurrency  # a held order is claimed only with a slot
    for taken, finishing, waiting, wanted in samples:
        assert taken <= concurrency
        assert waiting <= finishing, (taken, finishing, waiting)
        assert wanted >= 0, (taken, finishing, waiting, wanted)


async def test_a_draining_node_hands_back_a_held_message_unclaimed(
    settings: Settings, broker: Handles
) -> None:
    one = msgspec.structs.replace(settings, step_seconds=1.0, concurrency=1, **SLOW_REDELIVERY)
    first = await submit(broker.intake)
    second = await submit(broker.intake)
    async with running_node(one, "node-a") as a:
        await wait_for(lambda: held(a), within=10)  # the second, while the first's last step runs
        a.drain()
        async with running_node(one, "node-b"):
            done = await wait_terminal(broker.store, second, within=15)
        finished = await wait_terminal(broker.store, first, within=15)
    assert (done.status, finished.status) == ("completed", "completed")
    assert {step.node_id for step in finished.steps} == {"node-a"}  # its last step ran out
    assert {step.node_id for step in done.steps} == {"node-b"}
    history = await broker.store.history(second)
    assert all(h.order is None or h.order.owner is None or h.order.owner.node_id == "node-b"
               for h in history)  # fmt: skip
    assert a.stats.handed_back == 0  # declined, never started


async def test_a_stale_read_ahead_costs_a_refused_write_and_a_re_read(
    settings: Settings, broker: Handles
) -> None:
    one = msgspec.structs.replace(settings, step_seconds=0.5, concurrency=1, **SLOW_REDELIVERY)
    await submit(broker.intake)
    second = await submit(broker.intake)
    async with running_node(one, "node-a") as a:
        await wait_for(lambda: held(a), within=10)
        # Meanwhile another node claimed the order and let its lease lapse (its crash, say).
        order = await broker.store.get(second)
        order.owner = Owner("node-x", utcnow() - timedelta(seconds=1), 1)
        await broker.store.update(order)
        done = await wait_terminal(broker.store, second, within=15)
    assert done.status == "completed"
    assert done.owner is not None
    assert (done.owner.node_id, done.owner.epoch) == ("node-a", 2)  # taken over, fenced
    assert a.stats.takeovers == 1
    assert a.stats.cas_conflicts == 0  # the refused claim was no lost order
