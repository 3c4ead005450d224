"""The reconciler re-drives an order whose work message never reached the stream, and only one
node runs it at a time."""

from __future__ import annotations

import signal

import msgspec

from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import Item, Order, new_order, new_order_id
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


def _unpublished() -> Order:
    return new_order(new_order_id(), "c-1", [Item("p-1", 1)], None)
