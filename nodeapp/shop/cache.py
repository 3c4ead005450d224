"""The catalog served from memory, for the api's submit path (ADR 0010: "catalog lookups are
served from a watched cache on the api").

One watch over the ``catalog`` bucket keeps the latest product of every key with its revision.
A lookup the watch has not delivered yet (the cache just started, the product was created a
moment ago) falls back to one direct read, and keeps what it read. Whatever arrives is applied
only if its revision is newer than the one held, so the watch and direct reads may interleave
in any order. nats-py's "no more values" marker is not trusted (it can come before the stored
values: nats-io/nats.py#842); ``loaded`` is set by the entry delivered with nothing pending.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any, Final

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from nodeapp.broker.connection import broker_errors
from nodeapp.broker.kv import ALL_KEYS
from nodeapp.core.errors import BrokerUnavailable
from nodeapp.shop.keys import product_key
from nodeapp.shop.products import Product, decode_product

log = logging.getLogger("orderflow.shop.cache")

FIRST_PAUSE: Final = 0.2  # seconds before watching again after the watch failed; doubles
MAX_PAUSE: Final = 5.0
CANCEL_AGAIN: Final = 0.5  # seconds to wait for the watching task to end before cancelling again


class CatalogCache:
    """``async with CatalogCache(buckets.catalog) as cache``: ``await cache.find(id)``.

    The context owns the watching task: cancelled and awaited on exit. If that task is not
    running (between a failure and the next watch), lookups read the bucket directly instead of
    trusting memory that may have missed a change.
    """

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.loaded = asyncio.Event()
        self.hits = 0
        self.misses = 0
        self.restarts = 0
        self._held: dict[str, tuple[int, Product | None]] = {}
        self._watching = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CatalogCache:
        self._task = asyncio.create_task(self._follow(), name="catalog-cache")
        self._task.add_done_callback(_log_crash)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Cancel the watching task and wait until it has ended. The cancellation is repeated:
        one that lands as a nats-py request completes can be lost inside it (Python 3.11's
        ``asyncio.wait_for``), and the task would then wait for entries forever."""
        task, self._task = self._task, None
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=CANCEL_AGAIN)
        self._watching = False

    async def find(self, product_id: str) -> Product | None:
        """The product (None if there is none), from memory when the watch has delivered it."""
        key = product_key(product_id)
        held = self._held.get(key)
        if held is not None and self._watching:
            self.hits += 1
            return held[1]
        self.misses += 1
        with broker_errors(f"reading product {product_id}"):
            try:
                entry = await self.kv.get(key)
            except nats.js.errors.KeyNotFoundError:  # never stored, or deleted
                return None
        self._keep(key, entry.revision, entry.value)
        return self._held[key][1]

    def _keep(self, key: str, revision: int | None, value: bytes | None) -> None:
        """Hold the entry unless a newer revision of the key is held already."""
        revision = revision or 0
        held = self._held.get(key)
        if held is None or revision > held[0]:
            self._held[key] = (revision, _decode(key, value))

    async def _follow(self) -> None:
        """Watch until cancelled; after a failure, log it, pause, and watch again (the pause
        doubles while watching keeps failing at once)."""
        pause = FIRST_PAUSE
        while True:
            try:
                await self._watch()
            except (BrokerUnavailable, nats.errors.Error) as exc:
                self.restarts += 1
                log.warning(
                    "catalog cache: watch failed (%s); reading directly, watching again in %.1fs",
                    exc, pause, extra={"event": "catalog_cache.watch_failed"},
                )  # fmt: skip
            pause = FIRST_PAUSE if self._watching else min(pause * 2, MAX_PAUSE)
            self._watching = False
            await asyncio.sleep(pause)

    async def _watch(self) -> None:
        with broker_errors("watching the catalog"):
            if (await self.kv.status()).values == 0:
                self.loaded.set()
            watcher: Any = await self.kv.watch(ALL_KEYS)  # nats-py leaves it untyped
        self._watching = True
        try:
            async for entry in watcher:
                if entry is None:  # "no more values": can come too early, see above
                    continue
                value = None if entry.operation else entry.value
                self._keep(entry.key, entry.revision, value)
                if entry.delta == 0:
                    self.loaded.set()
        finally:
            with broker_errors("stopping the catalog watch"):
                await watcher.stop()


def _decode(key: str, value: bytes | None) -> Product | None:
    """The product in ``value``; a deleted key, or one holding what is not a product (written
    by hand), is no product, said once in the log."""
    if not value:
        return None
    try:
        return decode_product(value)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        log.warning("catalog key %s holds no product: %s", key, exc)
        return None


def _log_crash(task: asyncio.Task[None]) -> None:
    """A watching task that ended other than by cancellation is a bug: say so loudly (lookups
    go on, reading the bucket directly)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("catalog cache: watching stopped", exc_info=exc)
