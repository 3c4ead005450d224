"""Several real node processes: leases keep two nodes off one order; a killed node's order is
resumed elsewhere; SIGTERM hands work back at once."""

from __future__ import annotations

import asyncio
import signal

import msgspec
import pytest

from nodeapp.broker.kv import live_keys
from nodeapp.core.errors import OrderNotFound
from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import Order
from tests.support.invariants import assert_history_sane
from tests.support.orders import submit, wait_all_terminal, wait_terminal
from tests.support.processes import NodeProcess, NodeProcesses, wait_registered
from tests.support.waiting import wait_for


@pytest.fixture
def slow_settings(settings: Settings) -> Settings:
    """One-second steps, so a test can act while an order is mid-step; short ack wait and lease."""
    return msgspec.structs.replace(settings, step_seconds=1.0, ack_wait=1.0, lease_seconds=2.0)


async def wait_step(broker: Handles, order_id: str, step_index: int, owner: str) -> Order:
    """Wait until ``owner`` is running step ``step_index`` of the order."""

    async def probe() -> Order | None:
        try:
            order = await broker.store.get(order_id)
        except OrderNotFound:
            return None
        step = order.steps[step_index]
        return order if step.status == "running" and step.node_id == owner else None

    return await wait_for(probe, within=20)


async def test_redelivery_during_live_lease_is_not_started(
    slow_settings: Settings, broker: Handles, node_processes: NodeProcesses
) -> None:
    node_processes.settings = msgspec.structs.replace(slow_settings, lease_seconds=8.0)
    a = node_processes.start("node-a")
    await wait_registered(broker, a)
    order_id = await submit(broker.intake)
    await wait_step(broker, order_id, 1, "node-a")
    b = node_processes.start("node-b")
    await wait_registered(broker, b)
    # Freeze A past its ack wait: JetStream redelivers the message, and B must defer to A's lease.
    a.signal(signal.SIGSTOP)
    try:
        await wait_for(lambda: _logged(b, "order.deferred", order_id), within=20)
    finally:
        a.signal(signal.SIGCONT)
    order = await wait_terminal(broker.store, order_id, within=30)
    assert order.status == "completed"
    assert {s.node_id for s in order.steps} == {"node-a"}
    assert [s.attempt for s in order.steps] == [1, 1, 1, 1]
    assert order.attempts == 1
    assert order.owner is not None
    assert order.owner.epoch == 1
    history = await broker.store.history(order_id)
    for doc in assert_history_sane(history):
        assert doc.owner is None or doc.owner.node_id == "node-a"


async def _logged(node: NodeProcess, event: str, order_id: str) -> bool:
    return any(event in line and order_id in line for line in node.log_lines())


async def test_killed_node_order_resumes_elsewhere(
    slow_settings: Settings, broker: Handles, node_processes: NodeProcesses
) -> None:
    node_processes.settings = slow_settings
    a = node_processes.start("node-a")
    await wait_registered(broker, a)
    order_id = await submit(broker.intake)
    await wait_step(broker, order_id, 1, "node-a")
    b = node_processes.start("node-b")
    await wait_registered(broker, b)
    a.signal(signal.SIGKILL)
    order = await wait_terminal(broker.store, order_id, within=40)
    assert order.status == "completed"
    assert order.steps[0].node_id == "node-a"
    assert order.steps[0].attempt == 1
    # The step A was running is re-run by B (attempt 2), the rest are B's first attempts.
    assert order.steps[1].node_id == "node-b"
    assert order.steps[1].attempt == 2
    assert [s.node_id for s in order.steps[2:]] == ["node-b", "node-b"]
    assert order.owner is not None
    assert order.owner.node_id == "node-b"
    assert order.owner.epoch == 2
    assert order.attempts == 2
    assert_history_sane(await broker.store.history(order_id))


async def test_sigterm_hands_orders_back_at_once(
    slow_settings: Settings, broker: Handles, node_processes: NodeProcesses
) -> None:
    # A long ack wait: if the hand-back did not nak, B would wait 30 s and the test would time out.
    settings = msgspec.structs.replace(slow_settings, ack_wait=30.0, lease_seconds=30.0)
    node_processes.settings = settings
    a = node_processes.start("node-a")
    await wait_registered(broker, a)
    order_ids = [await submit(broker.intake) for _ in range(5)]
    for order_id in order_ids:
        await wait_step(broker, order_id, 0, "node-a")
    b = node_processes.start("node-b")
    await wait_registered(broker, b)
    a.signal(signal.SIGTERM)
    assert a.proc.wait(20) == 0
    assert "node-a" not in await live_keys(broker.js, broker.buckets.nodes)
    orders = await wait_all_terminal(broker.store, order_ids, within=20)
    for order in orders:
        assert order.status == "completed"
        assert order.steps[0].node_id == "node-a"  # finished its current step before leaving
        assert order.steps[0].attempt == 1
        assert {s.node_id for s in order.steps[1:]} == {"node-b"}
        assert_history_sane(await broker.store.history(order.order_id))


async def test_paused_node_does_not_overwrite_after_takeover(
    slow_settings: Settings, broker: Handles, node_processes: NodeProcesses
) -> None:
    """A node frozen past its lease comes back to find the order taken: it writes nothing."""
    node_processes.settings = slow_settings
    a = node_processes.start("node-a")
    await wait_registered(broker, a)
    order_id = await submit(broker.intake)
    await wait_step(broker, order_id, 1, "node-a")
    b = node_processes.start("node-b")
    await wait_registered(broker, b)
    a.signal(signal.SIGSTOP)
    try:
        await wait_for(lambda: _logged(b, "order.takeover", order_id), within=20)
        before = await broker.store.get(order_id)
    finally:
        a.signal(signal.SIGCONT)
    order = await wait_terminal(broker.store, order_id, within=30)
    await wait_for(lambda: _logged_any(a, ("order.lost", "order.fenced"), order_id), within=20)
    assert order.status == "completed"
    assert order.owner is not None
    assert order.owner.node_id == "node-b"
    assert order.owner.epoch == 2
    history = assert_history_sane(await broker.store.history(order_id))
    assert before.revision is not None
    after_takeover = [d for d in history if (d.revision or 0) > before.revision]
    for doc in after_takeover:
        assert doc.owner is not None
        assert doc.owner.node_id == "node-b", "node-a wrote after losing the order"


async def _logged_any(node: NodeProcess, events: tuple[str, ...], order_id: str) -> bool:
    lines = node.log_lines()
    return any(e in line and order_id in line for e in events for line in lines)


async def test_killed_node_with_fifty_orders_all_finish_elsewhere(
    slow_settings: Settings, broker: Handles, node_processes: NodeProcesses
) -> None:
    node_processes.settings = slow_settings
    a = node_processes.start("node-a")
    await wait_registered(broker, a)
    order_ids = list(await asyncio.gather(*(submit(broker.intake) for _ in range(50))))

    async def all_held_by_a() -> bool:
        orders = [await broker.store.get(o) for o in order_ids]
        return all(o.owner is not None and o.owner.node_id == "node-a" for o in orders)

    await wait_for(all_held_by_a, within=20)
    b = node_processes.start("node-b")
    await wait_registered(broker, b)
    a.signal(signal.SIGKILL)
    orders = await wait_all_terminal(broker.store, order_ids, within=60)
    for order in orders:
        assert order.status == "completed"
        assert order.owner is not None
        assert order.owner.node_id == "node-b"
        assert order.owner.epoch == 2
        assert_history_sane(await broker.store.history(order.order_id))


async def test_work_spreads_across_all_nodes(
    settings: Settings, broker: Handles, node_processes: NodeProcesses
) -> None:
    node_processes.settings = msgspec.structs.replace(settings, step_seconds=0.2, concurrency=10)
    nodes = [node_processes.start(f"node-{i}") for i in range(3)]
    for node in nodes:
        await wait_registered(broker, node)
    order_ids = list(await asyncio.gather(*(submit(broker.intake) for _ in range(60))))
    orders = await wait_all_terminal(broker.store, order_ids, within=60)
    finished_by = {o.steps[-1].node_id for o in orders}
    # 60 orders, 10 slots a node: one node alone cannot hold them, so all three must work.
    assert finished_by == {"node-0", "node-1", "node-2"}
