"""The JetStream resources orderflow uses, created idempotently by whichever process is first.

Names are public: operators inspect them with the ``nats`` CLI.
"""

from __future__ import annotations

import asyncio
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

from nodeapp.broker.connection import broker_errors
from nodeapp.core.errors import BrokerUnavailable, OrderflowError
from nodeapp.core.settings import Settings

log = logging.getLogger("orderflow.resources")

ORDERS_STREAM: Final = "ORDERS"
WORK_SUBJECT: Final = "orders.work"
WORKERS_CONSUMER: Final = "workers"
DLQ_STREAM: Final = "ORDERS_DLQ"
DLQ_PREFIX: Final = "orders.dlq."  # + the order id, so one order's dead letter is found by subject
DLQ_SUBJECTS: Final = f"{DLQ_PREFIX}>"
ORDERS_BUCKET: Final = "orders"
NODES_BUCKET: Final = "nodes"
IDEMPOTENCY_BUCKET: Final = "idempotency"
RECONCILER_BUCKET: Final = "reconciler"

DUPLICATE_WINDOW: Final = 120.0
NODE_TTL: Final = 10.0
IDEMPOTENCY_TTL: Final = 24 * 3600.0
MAX_ACK_PENDING: Final = 10_000
ORDER_HISTORY: Final = 64


class Buckets(msgspec.Struct, frozen=True):
    orders: KeyValue
    nodes: KeyValue
    idempotency: KeyValue
    reconciler: KeyValue


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


STREAM_NAME_IN_USE: Final = 10058
REPLICAS_NEED_CLUSTER: Final = 10074


def _refused(what: str, exc: nats.js.errors.APIError) -> OrderflowError:
    """JetStream said no: an operator's problem, told in one line naming the resource."""
    hint = ""
    if exc.err_code == REPLICAS_NEED_CLUSTER:
        hint = " (ORDERFLOW_REPLICAS > 1 needs a JetStream cluster of that many servers)"
    return OrderflowError(f"JetStream refused {what}: {exc.description}{hint}")


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise _refused(f"stream {config.name}", exc) from None
        # It exists with another config: keep what the operator has, but say what differs.
        info = await js.stream_info(str(config.name))
        await _add_missing_subjects(js, info.config, config)
        if info.config.num_replicas != config.num_replicas:
            log.warning(
                "stream %s has %s replicas, settings ask for %s; leaving it as it is",
                config.name, info.config.num_replicas, config.num_replicas,
                extra={"event": "resources.replicas_differ"},
            )  # fmt: skip
    except nats.js.errors.APIError as exc:
        raise _refused(f"stream {config.name}", exc) from None


async def _add_missing_subjects(
    js: JetStreamContext, current: StreamConfig, wanted: StreamConfig
) -> None:
    """Add subjects a newer version listens on (``orders.dlq.>``), keeping the stream's others,
    so a stream created by an older version keeps accepting what this one publishes."""
    have = list(current.subjects or [])
    missing = [s for s in wanted.subjects or [] if s not in have]
    if not missing:
        return
    current.subjects = have + missing
    try:
        await js.update_stream(current)
    except nats.js.errors.APIError as exc:
        raise _refused(f"adding subjects {missing} to stream {current.name}", exc) from None
    log.warning(
        "stream %s: added subjects %s, kept %s", current.name, missing, have,
        extra={"event": "resources.subjects_added"},
    )  # fmt: skip


async def ensure_bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """The bucket, created if missing; a race with another process creating it is fine.

    Every bucket of orderflow is opened here (the shop's too), inside ``broker_errors``."""
    try:
        return await js.key_value(config.bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:  # not a race with another process creating it
            raise _refused(f"bucket {config.bucket}", exc) from None
        return await js.key_value(config.bucket)
    except nats.js.errors.APIError as exc:
        raise _refused(f"bucket {config.bucket}", exc) from None


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
                subjects=[DLQ_SUBJECTS],
                retention=RetentionPolicy.LIMITS,
                storage=storage,
                num_replicas=settings.replicas,
                duplicate_window=DUPLICATE_WINDOW,
            ),
        )
        try:
            await js.add_consumer(ORDERS_STREAM, consumer_config(settings))
        except nats.js.errors.APIError as exc:
            raise _refused(f"consumer {WORKERS_CONSUMER}", exc) from None
        orders = await ensure_bucket(
            js,
            KeyValueConfig(
                bucket=ORDERS_BUCKET,
                description="orderflow order documents (JSON)",
                history=ORDER_HISTORY,
                storage=storage,
                replicas=settings.replicas,
                # Direct gets skip the JSON API (base64 body, headers through ``email``): the
                # node's read of each order costs less. One replica only: on R3 a follower
                # may answer with a stale or missing document (nats-server issue 4710).
                direct=settings.replicas == 1,
            ),
        )
        nodes = await ensure_bucket(
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
        idempotency = await ensure_bucket(
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
        reconciler = await ensure_bucket(
            js,
            KeyValueConfig(
                bucket=RECONCILER_BUCKET,
                description="orderflow reconciler: leader lease and checkpoint",
                history=1,
                storage=storage,
                replicas=settings.replicas,
            ),
        )
    return Buckets(orders=orders, nodes=nodes, idempotency=idempotency, reconciler=reconciler)


async def ensure_resources_patiently(
    js: JetStreamContext, settings: Settings, within: float = 30.0
) -> Buckets:
    """``ensure_resources``, retried while the broker is unreachable or still electing a leader
    (a cluster that just started answers JetStream requests with timeouts for a moment)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    pause = 0.2
    while True:
        try:
            return await ensure_resources(js, settings)
        except BrokerUnavailable as exc:
            if loop.time() + pause > deadline:
                raise
            log.warning("JetStream not ready (%s); retrying in %.1fs", exc, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)
