"""A process's copy of the ``tokens`` bucket, kept current by one watcher.

Every request is verified; a broker round trip for each would double the api's latency. The
cache keeps the stored tokens (hashes only) and one watcher applies each change as JetStream
delivers it, so a revocation reaches every api process within milliseconds, with no restart. A
token the cache has not seen (created a moment ago elsewhere) is read from the bucket. An entry
not confirmed for ``max_age`` seconds is read again: even a watcher stuck on a broken
subscription cannot keep a revoked token alive longer than that.

nats-py's watcher may announce "no more values" before the stored values arrive
(nats-io/nats.py#842, see ``nodeapp.broker.kv``). The cache never relies on that marker: it
applies entries whenever they come, keeps the highest revision per key, and answers a miss
from the bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Final, NamedTuple

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from nodeapp.broker.connection import broker_errors
from nodeapp.broker.kv import ALL_KEYS
from nodeapp.core.errors import OrderflowError
from nodeapp.core.settings import Settings
from nodeapp.security.bucket import TokensBucket
from nodeapp.security.scopes import Principal
from nodeapp.security.store import utcnow
from nodeapp.security.tokens import StoredToken, decode_token, is_token_id
from nodeapp.security.verify import admin_token, standing, verify

log = logging.getLogger("orderflow.security")

MAX_AGE: Final = 10.0  # seconds an entry is trusted without the watcher confirming it
RETRY_MIN: Final = 0.1
RETRY_MAX: Final = 5.0


class _Cached(NamedTuple):
    revision: int
    token: StoredToken | None  # None: deleted, purged or unreadable
    seen: float  # monotonic time the value was last confirmed by the broker


class TokenCache:
    """``async with TokenCache(jetstream, settings) as tokens: await tokens.verify(text)``.

    ``jetstream`` gives the current JetStream context (the api's broker link raises
    ``BrokerUnavailable`` while it is down; then verification answers 503 for tokens it must
    read, and the watcher retries). ``settings.admin_token`` is the bootstrap admin.
    """

    def __init__(
        self,
        jetstream: Callable[[], JetStreamContext],
        settings: Settings,
        *,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bucket = TokensBucket(jetstream, settings)
        self._admin = admin_token(settings.admin_token)
        self._max_age = max_age
        self._clock = clock
        self._entries: dict[str, _Cached] = {}
        self._task: asyncio.Task[None] | None = None
        self._following = False

    @property
    def following(self) -> bool:
        """Whether the watcher is running (revocations arrive within milliseconds)."""
        return self._following

    async def verify(self, presented: str | None) -> Principal:
        """The principal of a bearer token; ``Unauthenticated`` saying why not."""
        return await verify(presented, self._lookup, self._admin, utcnow())

    async def standing(self, token_id: str | None) -> Principal:
        """The principal of a token verified earlier, by its id, as the cache has it now: a
        console session checks it on every request, so a revocation ends the session."""
        return await standing(token_id, self._lookup, self._admin, utcnow())

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: object) -> AsyncIterator[None]:
        """For ``Litestar(lifespan=[...])``: the cache follows the bucket while the app runs."""
        async with self:
            yield

    async def __aenter__(self) -> TokenCache:
        self._task = asyncio.create_task(self._follow_forever(), name="orderflow-token-cache")
        self._task.add_done_callback(_report_crash)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # its crash, if any, was logged; keep our own cancel

    async def _lookup(self, token_id: str) -> StoredToken | None:
        cached = self._entries.get(token_id)
        # While the watcher follows the bucket the cache is current: no read per request.
        # Without it, an entry is trusted for ``max_age`` and then read again.
        if cached is not None and (self._following or self._clock() - cached.seen < self._max_age):
            return cached.token
        if not is_token_id(token_id):
            return None
        kv = await self._bucket.get()
        try:
            with broker_errors("reading an API token"):
                entry = await kv.get(token_id)
        except nats.js.errors.KeyNotFoundError as exc:
            marker = exc.entry  # a deleted or purged key still has its marker
            if marker is not None and marker.revision:
                self._remember(token_id, marker.revision, None)
            return None
        self._apply(entry)
        remembered = self._entries.get(token_id)
        return remembered.token if remembered is not None else None

    def _apply(self, entry: KeyValue.Entry) -> None:
        """One entry from the watcher or a read: a value, or a delete or purge marker."""
        if entry.revision is None:
            return
        token = None
        if not entry.operation and entry.value:
            try:
                token = decode_token(entry.value)
            except msgspec.DecodeError:  # fail closed: the token is unknown until fixed
                log.exception(
                    "unreadable API token record %s", entry.key,
                    extra={"event": "token.unreadable", "token_id": entry.key},
                )  # fmt: skip
        self._remember(entry.key, entry.revision, token)

    def _remember(self, token_id: str, revision: int, token: StoredToken | None) -> None:
        current = self._entries.get(token_id)
        if current is not None and current.revision > revision:
            return  # a late, older answer: the newer one stays
        self._entries[token_id] = _Cached(revision, token, self._clock())

    async def _follow_forever(self) -> None:
        """Watch the bucket for the cache's lifetime, starting again after any broker trouble."""
        failures = 0
        while True:
            _keep_cancellation()
            try:
                kv = await self._bucket.get()
                with broker_errors("watching the tokens bucket"):
                    watcher: Any = await kv.watch(ALL_KEYS)  # untyped in nats-py
                failures = 0
                await self._follow(watcher)
            except (OrderflowError, nats.errors.Error) as exc:
                failures += 1
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(
                    level, "token watcher down (%s); retrying", exc,
                    extra={"event": "token.watcher_down", "failures": failures},
                )  # fmt: skip
            await asyncio.sleep(min(RETRY_MIN * 2**failures, RETRY_MAX))

    async def _follow(self, watcher: Any) -> None:
        self._following = True
        try:
            _keep_cancellation()  # before the wait that may last the process's lifetime
            async for entry in watcher:
                if entry is not None:  # None: the "no more values" marker, maybe early
                    self._apply(entry)
        finally:
            self._following = False
            with broker_errors("stopping the token watcher"):
                await watcher.stop()


def _keep_cancellation() -> None:
    """nats-py swallows a cancellation that lands in its flush (``Client._flush_pending``), so
    a call made while the cache is closing returns normally; raise the cancellation it ate."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error(
            "token watcher crashed; tokens are re-read every %.0fs instead", MAX_AGE,
            exc_info=exc, extra={"event": "token.watcher_crashed"},
        )  # fmt: skip
