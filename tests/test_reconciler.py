"""The reconciler re-drives an order whose work message never reached the stream, and only one
node runs it at a time; it keeps only open orders (from the status in each revision's headers)
and leaves alone an order whose message is merely queued."""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta

import msgspec

from nodeapp.broker.resources import ORDERS_STREAM
from nodeapp.cluster.membership import NodeStats
from nodeapp.cluster.reconciler import Reconciler
from nodeapp.core.settings import Settings
from nodeapp.orders import lifecycle
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import Item, Order, new_order, new_order_id, utcnow
from tests.support.orders import wait_terminal
from tests.support.processes import NodeProcesses, wait_registered
from tests.support.waiting import wait_for


async def test_order_without_message_is_redriven_by_one_leader(
    settings: Settings, broker: Handles, node_processes: NodeProcesses
) -> None:
    node_processes.settings = msgspec.structs.replace(settings, reconcile_after=1.0)
    nodes = [node_processes.start(f"node-{i}") for i in range(3)]
    for node in nodes:
        await wait_registered(broker, node)
    # The api "died" between storing the document and publishing its work message.
    order = _unpublished()
    await broker.store.create(order)
    done = await wait_terminal(broker.store, order.order_id, within=30)
    assert done.status == "completed"

    leaders = [
        n.node_id for n in nodes if any("reconciler.leader" in line for line in n.log_lines())
    ]
    redrivers = [
        n.node_id
        for n in nodes
        if any("order.redriven" in line and order.order_id in line for line in n.log_lines())
    ]
    assert len(leaders) == 1, leaders
    assert redrivers == leaders

    # Killing the leader hands the lead to another node, which resumes from the checkpoint.
    leader = next(n for n in nodes if n.node_id == leaders[0])
    leader.signal(signal.SIGKILL)
    second = _unpublished()
    await broker.store.create(second)
    await wait_terminal(broker.store, second.order_id, within=40)

    async def new_leader() -> bool:
        return any(
            "reconciler.leader" in line for n in nodes if n is not leader for line in n.log_lines()
        )

    await wait_for(new_leader, within=10)


async def test_the_leader_keeps_open_orders_only_and_re_drives_a_lapsed_owners_order(
    settings: Settings, broker: Handles
) -> None:
    store, js = broker.store, broker.js
    stats = NodeStats()
    reconciler = Reconciler(
        msgspec.structs.replace(settings, reconcile_after=1.0),
        js,
        broker.buckets.reconciler,
        store,
        "leader-node",
        stats,
    )
    queued = _unpublished()  # its work message waits in the queue: no node is running
    await store.create(queued)
    await broker.intake.publish(queued.order_id)
    done = _unpublished()
    await store.create(done)
    lifecycle.claim(done, "node-x", utcnow(), 3.0)
    lifecycle.finish(done, utcnow())
    await store.update(done)
    lapsed = _unpublished()  # its owner stopped a while ago and its message is gone
    long_ago = utcnow() - timedelta(seconds=30)
    lapsed.start_time = long_ago
    await store.create(lapsed)
    lifecycle.claim(lapsed, "node-gone", long_ago, 3.0)
    lifecycle.start_step(lapsed, lapsed.steps[0], "node-gone", long_ago)
    await store.update(lapsed)

    stop = asyncio.Event()
    running = asyncio.create_task(reconciler.run(stop))
    try:
        await wait_for(lambda: _is(stats.reconciled == 1), within=15)
        # The finished order was never kept; the queued one is, and is left alone.
        assert set(reconciler.tracked) == {queued.order_id, lapsed.order_id}
        info = await js.stream_info(ORDERS_STREAM)
        assert info.state.messages == 2  # the queued order's message and the lapsed one's
        lifecycle.claim(queued, "node-y", utcnow(), 3.0)
        lifecycle.finish(queued, utcnow())
        await store.update(queued)
        await wait_for(lambda: _is(queued.order_id not in reconciler.tracked), within=5)
    finally:
        stop.set()
        await running
    assert stats.reconciled == 1


async def _is(value: bool) -> bool:
    return value


def _unpublished() -> Order:
    return new_order(new_order_id(), "c-1", [Item("p-1", 1)], None)
