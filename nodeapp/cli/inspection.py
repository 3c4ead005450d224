"""``orderflow inspect``: the streams, the consumer and the buckets, read straight from JetStream,
for machines without the ``nats`` CLI (the fields match what ``nats stream info``,
``nats consumer info`` and ``nats kv status`` print).

It talks to the broker, not the api, so it still works when the api is down.
"""

from __future__ import annotations

import asyncio
from typing import Final

import msgspec
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from nodeapp.broker.connection import broker_errors, connect, jetstream
from nodeapp.broker.kv import live_keys
from nodeapp.broker.resources import (
    DLQ_STREAM,
    IDEMPOTENCY_BUCKET,
    NODES_BUCKET,
    ORDERS_BUCKET,
    ORDERS_STREAM,
    WORKERS_CONSUMER,
)
from nodeapp.core.settings import Settings

CLIENT_NAME: Final = "orderflow-inspect"


class ServerReport(msgspec.Struct, frozen=True):
    url: str
    version: str


class StreamReport(msgspec.Struct, frozen=True):
    name: str
    description: str | None
    subjects: list[str]
    retention: str
    storage: str
    replicas: int
    leader: str | None
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    consumer_count: int


class ConsumerReport(msgspec.Struct, frozen=True):
    stream: str
    name: str
    ack_policy: str
    ack_wait: float | None
    max_deliver: int | None
    max_ack_pending: int | None
    max_waiting: int | None
    delivered_stream_seq: int
    ack_floor_stream_seq: int
    num_pending: int
    num_ack_pending: int
    num_redelivered: int
    num_waiting: int


class BucketReport(msgspec.Struct, frozen=True):
    bucket: str
    values: int
    history: int
    ttl: float | None
    bytes: int
    keys: list[str] | None = None  # listed for the small ``nodes`` bucket only


class Inspection(msgspec.Struct, frozen=True):
    """What exists; ``missing`` names what does not (``orderflow init`` creates it)."""

    server: ServerReport
    streams: list[StreamReport]
    consumers: list[ConsumerReport]
    buckets: list[BucketReport]
    missing: list[str]


def _name(value: object) -> str:
    """nats-py enums print as ``RetentionPolicy.WORK_QUEUE``; the CLI says ``workqueue``."""
    raw = getattr(value, "value", value)
    return str(raw) if raw is not None else "-"


async def _stream(js: JetStreamContext, name: str) -> StreamReport:
    info = await js.stream_info(name)
    c, s = info.config, info.state
    return StreamReport(
        name=name,
        description=c.description,
        subjects=list(c.subjects or []),
        retention=_name(c.retention),
        storage=_name(c.storage),
        replicas=c.num_replicas or 1,
        leader=info.cluster.leader if info.cluster else None,
        messages=s.messages,
        bytes=s.bytes,
        first_seq=s.first_seq,
        last_seq=s.last_seq,
        consumer_count=s.consumer_count,
    )


async def _consumer(js: JetStreamContext, stream: str, name: str) -> ConsumerReport:
    info = await js.consumer_info(stream, name)
    c = info.config
    return ConsumerReport(
        stream=stream,
        name=name,
        ack_policy=_name(c.ack_policy),
        ack_wait=c.ack_wait,
        max_deliver=c.max_deliver,
        max_ack_pending=c.max_ack_pending,
        max_waiting=c.max_waiting,
        delivered_stream_seq=info.delivered.stream_seq if info.delivered else 0,
        ack_floor_stream_seq=info.ack_floor.stream_seq if info.ack_floor else 0,
        num_pending=info.num_pending or 0,
        num_ack_pending=info.num_ack_pending or 0,
        num_redelivered=info.num_redelivered or 0,
        num_waiting=info.num_waiting or 0,
    )


async def _bucket(js: JetStreamContext, name: str, list_keys: bool = False) -> BucketReport:
    kv = await js.key_value(name)
    status = await kv.status()
    keys: list[str] | None = None
    if list_keys:
        keys = await live_keys(js, kv)
    return BucketReport(
        bucket=name,
        values=status.values,
        history=status.history,
        ttl=status.ttl or None,
        bytes=status.stream_info.state.bytes,
        keys=keys,
    )


async def inspect_broker(nc: NATS, js: JetStreamContext) -> Inspection:
    """Read every orderflow resource; a missing one is listed in ``missing``, not an error."""
    streams, consumers, buckets, missing = [], [], [], []
    for name in (ORDERS_STREAM, DLQ_STREAM):
        try:
            streams.append(await _stream(js, name))
        except nats.js.errors.NotFoundError:
            missing.append(f"stream {name}")
    try:
        consumers.append(await _consumer(js, ORDERS_STREAM, WORKERS_CONSUMER))
    except nats.js.errors.NotFoundError:
        missing.append(f"consumer {ORDERS_STREAM} > {WORKERS_CONSUMER}")
    for name in (ORDERS_BUCKET, NODES_BUCKET, IDEMPOTENCY_BUCKET):
        try:
            buckets.append(await _bucket(js, name, list_keys=name == NODES_BUCKET))
        except nats.js.errors.NotFoundError:  # BucketNotFoundError is one
            missing.append(f"bucket {name}")
    version = nc.connected_server_version
    server = ServerReport(
        url=nc.connected_url.geturl() if nc.connected_url else "-",
        version=f"{version.major}.{version.minor}.{version.patch}",
    )
    return Inspection(server, streams, consumers, buckets, missing)


async def inspect_at(settings: Settings) -> Inspection:
    """Connect (trying each server twice, not forever: a person is waiting), read, close."""
    within = max(5.0, 4 * settings.request_timeout)
    with broker_errors(f"inspecting the broker at {settings.nats_url_shown}"):
        async with asyncio.timeout(within):
            # max_reconnect_attempts > 0 is what makes nats-py give up on a first connect.
            nc = await connect(
                settings,
                CLIENT_NAME,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.2,
            )
            try:
                return await inspect_broker(nc, jetstream(nc, settings))
            finally:
                await nc.close()
