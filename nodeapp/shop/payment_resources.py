"""The payments' KV buckets (ADR 0010): ``gateway`` (the simulated network's ledger) and
``payments`` (the callbacks the api received, one per order). Names are public: operators read
them with ``nats kv get``.

Whoever hosts the gateway ensures ``gateway``; the api and the nodes ensure ``payments``. An api
whose broker link comes up later reaches both through ``LazyBucket``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from nodeapp.broker.resources import ensure_bucket
from nodeapp.core.settings import Settings

GATEWAY_BUCKET: Final = "gateway"
PAYMENTS_BUCKET: Final = "payments"
STREAM_NAME_IN_USE: Final = 10058

# Where a component finds its bucket when it needs it (a fixed handle, or ``LazyBucket.get``).
BucketSource = Callable[[], Awaitable[KeyValue]]


def gateway_bucket_config(settings: Settings) -> KeyValueConfig:
    return KeyValueConfig(
        bucket=GATEWAY_BUCKET,
        description="orderflow simulated payment gateway: ledger per payment (= order id)",
        history=1,
        storage=StorageType.FILE,
        replicas=settings.replicas,
    )


def payments_bucket_config(settings: Settings) -> KeyValueConfig:
    return KeyValueConfig(
        bucket=PAYMENTS_BUCKET,
        description="orderflow payment callbacks received, one per order id (write-once)",
        history=1,
        storage=StorageType.FILE,
        replicas=settings.replicas,
    )


async def ensure_gateway_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    return await ensure_bucket(js, gateway_bucket_config(settings))


async def ensure_payments_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    return await ensure_bucket(js, payments_bucket_config(settings))


def fixed_bucket(kv: KeyValue) -> BucketSource:
    """A ``BucketSource`` for a process that opened its bucket before serving."""

    async def source() -> KeyValue:
        return kv

    return source


class LazyBucket:
    """A bucket handle made on first use and kept while the JetStream context stays the same.

    ``jetstream`` raises ``BrokerUnavailable`` while the broker is away (the api's broker link
    does), so a request then answers 503 instead of waiting.
    """

    def __init__(self, jetstream: Callable[[], JetStreamContext], config: KeyValueConfig) -> None:
        self._jetstream = jetstream
        self._config = config
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None

    async def get(self) -> KeyValue:
        js = self._jetstream()
        if self._kv is None or self._js is not js:
            self._kv = await ensure_bucket(js, self._config)
            self._js = js
        return self._kv
