"""A 3-server JetStream cluster with every stream and bucket on 3 replicas loses the server that
leads ``ORDERS`` under load: orders keep finishing, and after its restart nothing is lost or
doubled (issue 3, test 4)."""

from __future__ import annotations

from pathlib import Path

from nodeapp.broker.resources import DLQ_STREAM, ORDERS_STREAM
from nodeapp.core.settings import Settings, load_settings
from nodeapp.local.natscluster import NatsCluster
from nodeapp.orders.handles import Handles, broker_handles
from nodeapp.orders.model import Order
from tests.support.api_fixtures import order_keys
from tests.support.catalog import load_test_catalog
from tests.support.invariants import assert_history_sane
from tests.support.node_logs import events_named, logged
from tests.support.outages import Submitter, Terminals, running, wait_stream_empty
from tests.support.processes import NodeProcess, NodeProcesses, wait_registered
from tests.support.waiting import wait_for

ORDERS = 150
KILL_AFTER = 50  # orders accepted before the leader's server is killed
PROGRESS = 20  # orders accepted after the kill that must finish before the server is back
NODE_CLIENT = "orderflow-node-"  # how a node names its NATS connection


def cluster_settings(cluster: NatsCluster) -> Settings:
    return load_settings(
        {},
        nats_url=cluster.url_for("admin"),
        replicas=3,
        step_seconds=0.2,
        failure_rate=0.0,
        ack_wait=1.0,
        lease_seconds=2.0,
        request_timeout=1.0,
    )


async def pick_victim(cluster: NatsCluster, broker: Handles) -> str:
    """The server that will lead ``ORDERS`` and that a node is connected to: killing it takes
    the stream's leader away and makes at least one node fail over to another server."""
    hosts = [
        name
        for name in cluster.members
        if any(c.startswith(NODE_CLIENT) for c in await cluster.client_names(name))
    ]
    assert hosts, "no node connected to any server"
    leader = await cluster.wait_stream_leader(ORDERS_STREAM)
    if leader in hosts:
        return leader
    await cluster.move_stream_leader(broker.nc, ORDERS_STREAM, hosts[0])
    return hosts[0]


async def test_stream_leader_killed_under_load(nats_cluster: NatsCluster, tmp_path: Path) -> None:
    settings = cluster_settings(nats_cluster)
    nodes = NodeProcesses(tmp_path / "nodes", settings)
    try:
        async with broker_handles(settings, "tests") as broker:
            await load_test_catalog(broker, settings)
            started = [nodes.start("node-a"), nodes.start("node-b")]
            await wait_registered(broker, *started)
            victim = await pick_victim(nats_cluster, broker)
            run = await _submit_through_the_kill(nats_cluster, settings, broker, victim, started)
            order_ids, completed_at_kill = run
            orders = await Terminals(broker.store).wait_all(order_ids, within=60)
            assert [o.status for o in orders] == ["completed"] * ORDERS
            await _assert_nothing_lost_or_doubled(broker, order_ids, orders)
            # Every order moved on its own work message: none waited for the reconciler.
            assert not events_named(started, "order.redriven")
            assert not events_named(started, "node.task_crashed")
            for node, before in zip(started, completed_at_kill, strict=True):
                assert node.alive, "\n".join(node.log_lines()[-20:])
                # Both nodes worked on after the kill (one had to fail over to another server).
                assert logged(node, "order.completed") > before, node.node_id
    finally:
        nodes.stop_all()


async def _submit_through_the_kill(
    cluster: NatsCluster,
    settings: Settings,
    broker: Handles,
    victim: str,
    nodes: list[NodeProcess],
) -> tuple[list[str], list[int]]:
    """Submit ``ORDERS`` orders; kill ``victim`` a third of the way in; require orders submitted
    after the kill to finish while it is down; restart it. Returns the accepted order ids and
    how many orders each node had completed when the server was killed."""
    # The submitter's connection starts on the victim too, so it must fail over as well.
    servers = cluster.urls(first=victim)
    async with broker_handles(settings, "submitter", servers=servers, dont_randomize=True) as own:
        submitter = Submitter(own.intake, ORDERS, interval=0.03)
        async with running(submitter.run(within=60)) as submitting:

            async def accepted(count: int) -> bool:
                if submitting.done():
                    submitting.result()  # raises what stopped the submitter
                return len(submitter.accepted) >= count

            await wait_for(lambda: accepted(KILL_AFTER), within=30)
            await cluster.kill(victim)
            after_kill = len(submitter.accepted)
            completed_at_kill = [logged(node, "order.completed") for node in nodes]
            await cluster.wait_stream_leader(ORDERS_STREAM, not_on=victim)
            # New orders are accepted, delivered and finished by two servers of three.
            await Terminals(broker.store).wait_count(
                lambda: submitter.accepted[after_kill:], at_least=PROGRESS, within=30
            )
            await cluster.restart(victim)
            return await submitting, completed_at_kill


async def _assert_nothing_lost_or_doubled(
    broker: Handles, order_ids: list[str], orders: list[Order]
) -> None:
    assert len(set(order_ids)) == ORDERS
    assert sorted(await order_keys(broker)) == sorted(order_ids)  # one document per order
    for order in orders:
        assert_history_sane(await broker.store.history(order.order_id))
    await wait_stream_empty(broker, ORDERS_STREAM)  # every work message acked
    assert (await broker.js.stream_info(DLQ_STREAM)).state.messages == 0
