"""Reading a KV bucket whole: every entry up to now by watch, and the keys that hold a value;
following one key live (``KeyFollower``).

nats-py's watcher announces "no more values" (a ``None`` entry) from a consumer-info request
that races the deliveries, so the marker can come before the stored values do (often on a
cluster, at times on a restarted server; nats-io/nats.py#842). Here the marker is never trusted:
a read ends at the entry the broker delivers with nothing more pending (``delta == 0``), and
whether there is anything to read at all is asked beforehand. ``KeyValue.keys()`` and
``KeyValue.history()`` end at the marker, so they are not used.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Container
from datetime import datetime
from typing import Any, Final, TypeVar, cast

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from nodeapp.broker.connection import broker_errors

ALL_KEYS: Final = ">"
WATCH_STALL: Final = 10.0  # seconds without an entry before a read gives up
# Seconds the broker keeps a follower's consumer once nobody listens (nats-py's default is
# 5 minutes); the server's own default for an ephemeral consumer.
FOLLOW_CLEANUP: Final = 5.0

T = TypeVar("T")


async def _anything_stored(kv: KeyValue, key: str) -> bool:
    """Whether a watch of ``key`` (a key, or ``ALL_KEYS``) has at least one entry to deliver;
    a deleted key still has its delete marker."""
    if key == ALL_KEYS:
        return (await kv.status()).values > 0
    try:
        await kv.get(key)
    except nats.js.errors.KeyNotFoundError as exc:
        return exc.entry is not None
    return True


async def each_entry(
    kv: KeyValue,
    key: str = ALL_KEYS,
    *,
    include_history: bool = False,
    stall: float = WATCH_STALL,
) -> AsyncGenerator[KeyValue.Entry, None]:
    """Every entry of ``key`` (a key, or ``ALL_KEYS``) stored when called, in stream order:
    the latest per key, or every kept revision with ``include_history``. Delete and purge
    markers are entries too (``operation`` set, empty ``value``); a write that lands during the
    read may be delivered as well.

    ``BrokerUnavailable`` if no entry arrives for ``stall`` seconds (also when the only values
    expired between the question "anything stored?" and the watch, in a bucket with a TTL). An
    async generator: wrap it in ``contextlib.aclosing`` so the watcher stops also when the loop
    ends early.
    """
    where = f"reading {key!r} of a KV bucket"
    with broker_errors(where):
        if not await _anything_stored(kv, key):
            return
        watcher: Any = await kv.watch(key, include_history=include_history)  # untyped
    try:
        while True:
            with broker_errors(f"{where} (waiting up to {stall:g}s for the next entry)"):
                entry: KeyValue.Entry | None = await watcher.updates(timeout=stall)
            if entry is None:  # the "no more values" marker: it can come too early, see above
                continue
            yield entry
            if entry.delta == 0:
                return
    finally:
        with broker_errors(f"{where}: stopping the watcher"):
            await watcher.stop()


def stored_at(entry: KeyValue.Entry) -> datetime:
    """When the broker stored a watched entry. nats-py fills ``created`` from the message
    metadata with a datetime, whatever its type hint says; fail loudly if that changes."""
    created: object = entry.created
    if not isinstance(created, datetime):
        raise TypeError(f"nats-py gave a {type(created).__name__} as the entry's time")
    return created


async def latest_values(
    kv: KeyValue,
    decoder: msgspec.json.Decoder[T],
    wanted: Container[str] | None = None,
    stall: float = WATCH_STALL,
) -> dict[str, T]:
    """The latest value of every key (or of the ``wanted`` ones) that holds one, decoded.

    One watch over the bucket, a request per key would be thousands; decoding only the
    ``wanted`` keys keeps a benchmark's reader off the cores the system under test shares.
    """
    found: dict[str, T] = {}
    async with contextlib.aclosing(each_entry(kv, stall=stall)) as entries:
        async for entry in entries:
            if wanted is not None and entry.key not in wanted:
                continue
            if entry.operation or not entry.value:  # deleted or purged meanwhile
                found.pop(entry.key, None)
            else:
                found[entry.key] = decoder.decode(entry.value)
    return found


async def live_keys(js: JetStreamContext, kv: KeyValue) -> list[str]:
    """The bucket's keys that hold a value, sorted, from its stream's per-subject counts.

    Public API only: the bucket's name and stream come from ``kv.status()``, its subjects are
    ``$KV.<bucket>.<key>`` (the KV layout every NATS client shares). A deleted key keeps a
    marker subject, so each candidate is read once.
    """
    with broker_errors("listing keys"):
        status = await kv.status()
        prefix = f"$KV.{status.bucket}."
        stream = str(status.stream_info.config.name)
        info = await js.stream_info(stream, subjects_filter=f"{prefix}>")
        keys = []
        for subject in sorted(info.state.subjects or {}):
            key = subject[len(prefix) :]
            try:
                await kv.get(key)
            except nats.js.errors.KeyNotFoundError:  # also raised for a deleted or purged key
                continue
            keys.append(key)
    return keys


class KeyFollower:
    """One key's entries as they are stored, each one, in order, for as long as it runs.

    It starts with the key's latest entry, or, given ``after`` (a revision the reader already
    has), with every kept revision newer than that: the bucket's history, so a reader that
    resumes misses nothing the bucket still holds. A watch (an ordered push consumer) delivers
    every later write, none skipped, none twice; nothing polls. ``stop()`` unsubscribes and
    makes a pending ``next()`` return None; the broker deletes the consumer ``FOLLOW_CLEANUP``
    seconds later.
    """

    def __init__(self, watcher: Any, after: int | None) -> None:
        self._watcher = watcher  # nats-py's KeyWatcher, untyped
        self._after = after
        self._stopped = False

    @classmethod
    async def start(
        cls,
        kv: KeyValue,
        key: str,
        *,
        after: int | None = None,
        cleanup: float = FOLLOW_CLEANUP,
    ) -> KeyFollower:
        """Subscribe now, so a broker failure is raised here (``BrokerUnavailable``), before
        the caller has promised anything to its own reader."""
        with broker_errors(f"following {key!r}"):
            watcher = await kv.watch(
                key, include_history=after is not None, inactive_threshold=cleanup
            )
        return cls(watcher, after)

    async def next(self) -> KeyValue.Entry | None:
        """The next entry (a delete or purge marker is one too: ``operation`` set); None once
        stopped. Safe to cancel: an entry not yet taken stays for the next call."""
        async for entry in self._watcher:  # ends when stop() is called
            if entry is None:  # nats-py's "no more stored values" marker: not an entry
                continue
            if self._after is not None and (entry.revision or 0) <= self._after:
                continue
            return cast(KeyValue.Entry, entry)
        return None

    @property
    def stopped(self) -> bool:
        return self._stopped

    async def stop(self) -> None:
        """Unsubscribe (once; later calls do nothing)."""
        if self._stopped:
            return
        self._stopped = True
        with broker_errors("stopping a key follower"):
            await self._watcher.stop()
