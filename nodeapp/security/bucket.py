"""The ``tokens`` KV bucket, created idempotently like the core's resources.

One key per token id, the value a ``StoredToken`` (JSON, the secret only as a hash), so
``nats kv get tokens <id>`` shows a token's record and nothing that would let anyone use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from nodeapp.broker.connection import broker_errors
from nodeapp.broker.resources import ensure_bucket
from nodeapp.core.settings import Settings

TOKENS_BUCKET: Final = "tokens"


def tokens_bucket_config(settings: Settings) -> KeyValueConfig:
    return KeyValueConfig(
        bucket=TOKENS_BUCKET,
        description="orderflow API tokens: {token_id, name, scopes, ...} and a secret hash",
        history=1,  # a revocation is the last word on a token; nothing to go back to
        storage=StorageType.FILE,
        replicas=settings.replicas,
    )


async def ensure_tokens_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    """The ``tokens`` bucket, created if missing (replicas from ``settings``);
    ``BrokerUnavailable`` while the broker is away."""
    with broker_errors("opening the tokens bucket"):
        return await ensure_bucket(js, tokens_bucket_config(settings))


class TokensBucket:
    """The bucket's handle, made on first use and kept while the JetStream context stays.

    For a process whose broker link comes up after it starts serving (the api): ``jetstream``
    raises ``BrokerUnavailable`` until then, so a request answers 503 instead of waiting.
    """

    def __init__(self, jetstream: Callable[[], JetStreamContext], settings: Settings) -> None:
        self._jetstream = jetstream
        self._settings = settings
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None

    async def get(self) -> KeyValue:
        js = self._jetstream()
        if self._kv is None or self._js is not js:
            self._kv = await ensure_tokens_bucket(js, self._settings)
            self._js = js
        return self._kv
