"""The JetStream resources orderflow uses, created idempotently by whichever process is first.

Names are public: operators inspect them with the ``nats`` CLI.
"""

from __future__ import annotations

import logging
from typing import Final

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from nodeapp.broker import broker_errors
from nodeapp.settings import Settings

log = logging.getLogger("orderflow.resources")

ORDERS_STREAM: Final = "ORDERS"
WORK_SUBJECT: Final = "orders.work"
WORKERS_CONSUMER: Final = "workers"
DLQ_STREAM: Final = "ORDERS_DLQ"
DLQ_SUBJECT: Final = "orders.dlq"
ORDERS_BUCKET: Final = "orders"
NODES_BUCKET: Final = "nodes"
IDEMPOTENCY_BUCKET: Final = "idempotency"

DUPLICATE_WINDOW: Final = 120.0
NODE_TTL: Final = 10.0
IDEMPOTENCY_TTL: Final = 24 * 3600.0
MAX_ACK_PENDING: Final = 10_000
ORDER_HISTORY: Final = 64


class Buckets(msgspec.Struct, frozen=True):
    orders: KeyValue
    nodes: KeyValue
    idempotency: KeyValue


def consumer_config(settings: Settings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=WORKERS_CONSUMER,
        name=WORKERS_CONSUMER,
        description="orderflow worker nodes",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait,
        max_deliver=settings.max_deliver,
        max_ack_pending=MAX_ACK_PENDING,
        max_waiting=512,
        filter_subject=WORK_SUBJECT,
        num_replicas=settings.replicas,
    )


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        # 10058: a stream with this name exists with another config; keep what the operator has.
        if exc.err_code != 10058:
            raise
        log.info("stream %s exists with a different config; leaving it", config.name)


async def _ensure_bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    try:
        return await js.key_value(config.bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != 10058:  # raced with another process creating it
            raise
        return await js.key_value(config.bucket)


async def ensure_resources(js: JetStreamContext, settings: Settings) -> Buckets:
    """Create the streams, consumer and buckets if missing; return handles to the buckets."""
    storage = StorageType.FILE
    with broker_errors("creating JetStream resources"):
        await _ensure_stream(
            js,
            StreamConfig(
                name=ORDERS_STREAM,
                description="orderflow work items: one message per order",
                subjects=[WORK_SUBJECT],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=storage,
                num_replicas=settings.replicas,
                duplicate_window=DUPLICATE_WINDOW,
                discard=DiscardPolicy.OLD,
            ),
        )
        await _ensure_stream(
            js,
            StreamConfig(
                name=DLQ_STREAM,
                description="orderflow dead letters, kept for inspection and replay",
                subjects=[DLQ_SUBJECT],
                retention=RetentionPolicy.LIMITS,
                storage=storage,
                num_replicas=settings.replicas,
                duplicate_window=DUPLICATE_WINDOW,
            ),
        )
        await js.add_consumer(ORDERS_STREAM, consumer_config(settings))
        orders = await _ensure_bucket(
            js,
            KeyValueConfig(
                bucket=ORDERS_BUCKET,
                description="orderflow order documents (JSON)",
                history=ORDER_HISTORY,
                storage=storage,
                replicas=settings.replicas,
            ),
        )
        nodes = await _ensure_bucket(
            js,
            KeyValueConfig(
                bucket=NODES_BUCKET,
                description="orderflow node heartbeats",
                history=1,
                ttl=NODE_TTL,
                storage=storage,
                replicas=settings.replicas,
            ),
        )
        idempotency = await _ensure_bucket(
            js,
            KeyValueConfig(
                bucket=IDEMPOTENCY_BUCKET,
                description="orderflow Idempotency-Key -> order id",
                history=1,
                ttl=IDEMPOTENCY_TTL,
                storage=storage,
                replicas=settings.replicas,
            ),
        )
    return Buckets(orders=orders, nodes=nodes, idempotency=idempotency)


async def open_buckets(js: JetStreamContext) -> Buckets:
    """Handles to existing buckets, without creating anything (``readyz`` uses this)."""
    with broker_errors("opening buckets"):
        return Buckets(
            orders=await js.key_value(ORDERS_BUCKET),
            nodes=await js.key_value(NODES_BUCKET),
            idempotency=await js.key_value(IDEMPOTENCY_BUCKET),
        )
