"""A single nats-server with file storage restarted under load: every order finishes once it is
back (issue 3, test 5).

During the outage a node's compare-and-sets fail with ``BrokerUnavailable``: it abandons the
order without answering the message; after the restart JetStream redelivers it once the ack wait
has passed, and the order's lease decides which node carries on.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Literal

import msgspec
import pytest

from nodeapp.broker.resources import DLQ_STREAM, ORDERS_STREAM
from nodeapp.core.settings import Settings
from nodeapp.local.natsserver import NatsServer
from nodeapp.orders.handles import Handles
from tests.support.api_fixtures import order_keys
from tests.support.invariants import assert_history_sane
from tests.support.node_logs import events_named, logged
from tests.support.orders import submit
from tests.support.outages import Terminals, wait_stream_empty
from tests.support.processes import NodeProcess, NodeProcesses, wait_registered
from tests.support.waiting import wait_for

ORDERS = 100
BUSY = 25  # orders each node must be running when the server goes away


async def _both_busy(broker: Handles, order_ids: list[str], nodes: list[NodeProcess]) -> bool:
    """True when each node is mid-way through at least ``BUSY`` of the orders."""
    running: Counter[str] = Counter()
    for order_id in order_ids:
        order = await broker.store.get(order_id)
        if order.status == "running" and order.owner is not None:
            running[order.owner.node_id] += 1
    return all(running[node.node_id] >= BUSY for node in nodes)


def _all_logged(nodes: list[NodeProcess], event: str) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return all(logged(node, event) for node in nodes)

    return probe


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_orders_finish_after_server_restart(
    how: Literal["sigterm", "sigkill"],
    nats_server: NatsServer,
    settings: Settings,
    broker: Handles,
    node_processes: NodeProcesses,
) -> None:
    node_processes.settings = msgspec.structs.replace(
        settings, step_seconds=0.3, ack_wait=1.0, lease_seconds=2.0
    )
    nodes = [node_processes.start("node-a"), node_processes.start("node-b")]
    await wait_registered(broker, *nodes)
    order_ids = [await submit(broker.intake) for _ in range(ORDERS)]
    # Both nodes mid-way through many orders (2 x 50 in flight at most).
    await wait_for(lambda: _both_busy(broker, order_ids, nodes), within=20)

    await asyncio.to_thread(nats_server.stop if how == "sigterm" else nats_server.kill)
    # Both nodes meet the outage at a step boundary: their writes fail, they abandon the order.
    await wait_for(_all_logged(nodes, "order.abandoned"), within=20)
    completed_before = [logged(node, "order.completed") for node in nodes]
    await asyncio.to_thread(nats_server.start)  # same port, same store

    orders = await Terminals(broker.store).wait_all(order_ids, within=60)
    assert [o.status for o in orders] == ["completed"] * ORDERS
    for order in orders:
        assert_history_sane(await broker.store.history(order.order_id))
    assert sorted(await order_keys(broker)) == sorted(order_ids)  # nothing extra, nothing gone
    await wait_stream_empty(broker, ORDERS_STREAM)  # every work message acked
    assert (await broker.js.stream_info(DLQ_STREAM)).state.messages == 0
    assert not events_named(nodes, "node.task_crashed")
    assert not events_named(nodes, "order.redriven")  # none waited for the reconciler
    for node, before in zip(nodes, completed_before, strict=True):
        assert node.alive, "\n".join(node.log_lines()[-20:])
        # Both nodes recovered: each finished orders after the broker came back.
        assert logged(node, "order.completed") > before, node.node_id
