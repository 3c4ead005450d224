"""The cluster as the broker sees it: live nodes from the ``nodes`` registry, and the state of the
work stream, its consumer, the dead letters and the buckets.

The api's ``GET /cluster`` serves this; every read is a plain JetStream request, so it shows the
same numbers ``nats stream info`` and ``nats consumer info`` would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Final, TypeVar

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from nodeapp.broker.connection import broker_errors
from nodeapp.broker.kv import live_keys
from nodeapp.broker.resources import DLQ_STREAM, ORDERS_STREAM, WORKERS_CONSUMER, Buckets
from nodeapp.cluster.membership import Heartbeat
from nodeapp.core.errors import ResourceMissing

log = logging.getLogger("orderflow.clusterview")

T = TypeVar("T")
_heartbeat_decoder: Final = msgspec.json.Decoder(Heartbeat)


class StreamState(msgspec.Struct, frozen=True):
    name: str
    messages: int
    bytes: int
    consumer_count: int
    first_seq: int
    last_seq: int


class ConsumerState(msgspec.Struct, frozen=True):
    name: str
    num_pending: int
    num_ack_pending: int
    num_redelivered: int
    num_waiting: int
    ack_wait: float | None
    max_deliver: int | None


class DeadLetters(msgspec.Struct, frozen=True):
    messages: int


class OrdersBucket(msgspec.Struct, frozen=True):
    values: int
    history: int


class NodesBucket(msgspec.Struct, frozen=True):
    values: int


class BucketsState(msgspec.Struct, frozen=True):
    orders: OrdersBucket
    nodes: NodesBucket


class ClusterView(msgspec.Struct, frozen=True):
    """``capacity`` and ``in_flight`` sum the listed nodes, draining ones included."""

    nodes: list[Heartbeat]
    stream: StreamState
    consumer: ConsumerState
    dead_letters: DeadLetters
    buckets: BucketsState
    capacity: int
    in_flight: int


async def _present(what: str, read: Awaitable[T]) -> T:
    """Await a JetStream read, turning "not found" into ``ResourceMissing`` naming ``what``."""
    try:
        return await read
    except nats.js.errors.NotFoundError:
        raise ResourceMissing(what) from None


async def stream_state(js: JetStreamContext, name: str) -> StreamState:
    info = await _present(f"stream {name}", js.stream_info(name))
    s = info.state
    return StreamState(name, s.messages, s.bytes, s.consumer_count, s.first_seq, s.last_seq)


async def consumer_state(js: JetStreamContext) -> ConsumerState:
    info = await _present(
        f"consumer {WORKERS_CONSUMER}", js.consumer_info(ORDERS_STREAM, WORKERS_CONSUMER)
    )
    return ConsumerState(
        name=info.name,
        num_pending=info.num_pending or 0,
        num_ack_pending=info.num_ack_pending or 0,
        num_redelivered=info.num_redelivered or 0,
        num_waiting=info.num_waiting or 0,
        ack_wait=info.config.ack_wait,
        max_deliver=info.config.max_deliver,
    )


def decode_heartbeat(key: str, data: bytes | None) -> Heartbeat | None:
    """A heartbeat, or None (logged) for a value no version of the node would write."""
    try:
        return _heartbeat_decoder.decode(data or b"")
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning(
            "unreadable heartbeat under %s: %s", key, exc, extra={"event": "cluster.bad_heartbeat"}
        )
        return None


async def heartbeats(js: JetStreamContext, nodes: KeyValue) -> list[Heartbeat]:
    """Every live node's heartbeat, by node id.

    Keys come from the bucket stream's subjects, not a KV watch: nats-py's watcher can announce
    "no more values" before the values arrive (nats-io/nats.py#842) and show an empty cluster.
    """
    found = []
    for node_id in await live_keys(js, nodes):
        beat = await heartbeat(nodes, node_id)
        if beat is not None:
            found.append(beat)
    return sorted(found, key=lambda b: b.node_id)


async def heartbeat(nodes: KeyValue, node_id: str) -> Heartbeat | None:
    """The node's heartbeat, or None when it is not in the registry."""
    try:
        entry = await nodes.get(node_id)
    except nats.js.errors.KeyNotFoundError:  # also raised for a deleted key
        return None
    return decode_heartbeat(node_id, entry.value)


async def cluster_view(js: JetStreamContext, buckets: Buckets, within: float) -> ClusterView:
    """Read it all, one request after another (a few milliseconds; nothing left running if one
    fails); ``BrokerUnavailable`` if it takes longer than ``within`` seconds."""
    with broker_errors("reading the cluster state"):
        async with asyncio.timeout(within):
            nodes = await heartbeats(js, buckets.nodes)
            stream = await stream_state(js, ORDERS_STREAM)
            consumer = await consumer_state(js)
            dlq = await stream_state(js, DLQ_STREAM)
            orders = await _present("bucket orders", buckets.orders.status())
            registry = await _present("bucket nodes", buckets.nodes.status())
    return ClusterView(
        nodes=nodes,
        stream=stream,
        consumer=consumer,
        dead_letters=DeadLetters(dlq.messages),
        buckets=BucketsState(
            orders=OrdersBucket(values=orders.values, history=orders.history),
            nodes=NodesBucket(values=registry.values),
        ),
        capacity=sum(n.concurrency for n in nodes),
        in_flight=sum(n.in_flight for n in nodes),
    )
