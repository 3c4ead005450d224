"""Every node is a NATS micro service: ``stats`` reaches all of them, ``drain`` one of them."""

from __future__ import annotations

import asyncio

import msgspec

from nodeapp.broker.kv import live_keys
from nodeapp.cluster.control import decode_drain_reply, drain_subject
from nodeapp.cluster.membership import Heartbeat
from nodeapp.ops.service import STATS_SUBJECT
from nodeapp.orders.handles import Handles
from tests.support.processes import NodeProcesses, wait_registered
from tests.support.waiting import wait_for

_heartbeat = msgspec.json.Decoder(Heartbeat)


async def test_stats_reach_every_node_and_drain_stops_one(
    broker: Handles, node_processes: NodeProcesses
) -> None:
    nodes = [node_processes.start(f"node-{i}") for i in range(3)]
    for node in nodes:
        await wait_registered(broker, node)

    replies: asyncio.Queue[bytes] = asyncio.Queue()

    async def collect(msg: object) -> None:
        await replies.put(msg.data)  # type: ignore[attr-defined]

    inbox = broker.nc.new_inbox()
    sub = await broker.nc.subscribe(inbox, cb=collect)
    await broker.nc.publish(STATS_SUBJECT, b"", reply=inbox)
    seen: set[str] = set()

    async def all_answered() -> bool:
        while not replies.empty():
            seen.add(_heartbeat.decode(replies.get_nowait()).node_id)
        return seen == {"node-0", "node-1", "node-2"}

    await wait_for(all_answered, within=10)
    await sub.unsubscribe()

    reply = await broker.nc.request(drain_subject("node-1"), b"", timeout=5)
    assert decode_drain_reply(reply.data).state == "draining"
    assert nodes[1].proc.wait(20) == 0
    assert "node-1" not in await live_keys(broker.js, broker.buckets.nodes)
    assert nodes[0].alive
    assert nodes[2].alive
