"""Writing a product's stock document by compare-and-set, the changes of one process combined.

A hot product serializes on its one key. If each of a process's 50 callers ran its own
compare-and-set, 49 would lose every round. Instead callers queue their change per product;
whoever holds the product's lock takes the whole queue, reads the document once, applies every
change in order and writes once. A change the stock refuses (``OutOfStock``, ``Fenced``, ...)
raises before it alters anything, so it leaves the document as the others find it. A write
lost to another process re-reads and re-applies the batch after a short random pause, up to
``attempts`` times. Each caller gets its own outcome once the write carrying its change has
landed: no interleaving of processes can oversell, as every write is checked against the
revision it was computed from.

A process that is a product's only writer (its last read found the revision of its own last
write) keeps the document it wrote, and the next batch applies its changes to that copy and
writes with its revision, skipping the read: with one node, every stock change after the first
two is one round trip instead of two. The broker takes the write only if the copy was still
the stored document, so the outcomes are those a fresh read would have given; a copy gone
stale (another process, or the api, wrote) costs one refused write and is dropped, and a batch
that changes nothing or is refused on the copy is decided again on a fresh read. Products with
several writers, the hot product across nodes, are read first as before (ADR 0018).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import Final, NamedTuple

import nats.js.errors
from nats.js.kv import KeyValue

from nodeapp.broker.connection import broker_errors
from nodeapp.broker.requests import Replies
from nodeapp.core.errors import Fenced
from nodeapp.core.shop_errors import HoldConflict, OutOfStock, StockConflict, StockContention
from nodeapp.shop.keys import product_key
from nodeapp.shop.products import StockLevel, StockView, decode_stock, encode
from nodeapp.shop.resources import STOCK_BUCKET

log = logging.getLogger("orderflow.shop.stock")

ATTEMPTS: Final = 100  # compare-and-sets per batch before StockContention
FIRST_PAUSE: Final = 0.001  # seconds; the random pause after a lost write doubles up to MAX_PAUSE
MAX_PAUSE: Final = 0.05
REMEMBERED: Final = 1024  # products whose last write this process keeps track of
REFUSALS: Final = (OutOfStock, Fenced, HoldConflict, StockConflict)
SUBJECT: Final = f"$KV.{STOCK_BUCKET}."  # + the product's key: a write's subject

Change = Callable[[StockLevel], bool]  # True if the level changed; raises a refusal untouched


class _Written(NamedTuple):
    """This process's last write of a product's document."""

    revision: int
    data: bytes | None  # the document as written, kept while this process is its only writer


class _Pending:
    __slots__ = ("abandoned", "change", "future", "operation")

    def __init__(self, operation: str, change: Change) -> None:
        self.operation = operation
        self.change = change
        self.abandoned = False  # its caller was cancelled while someone else carried it
        self.future: asyncio.Future[StockView] = asyncio.get_running_loop().create_future()


class StockWriter:
    """Changes of products' stock documents, combined per product within this process.
    ``retries`` counts the changes re-applied after a lost write, by operation; ``writes``
    counts the writes that landed, ``reads`` the documents read, ``stale`` the writes on a kept
    copy that another writer had overtaken. ``combine=False`` gives every change its own
    compare-and-set, from a read (what combining saves is measured by
    ``benchmarks.hot_product``). With ``replies`` (the process's, ``nodeapp.broker.requests``)
    a compare-and-set costs less CPU than nats-py's ``update`` (ADR 0020)."""

    def __init__(
        self,
        kv: KeyValue,
        attempts: int = ATTEMPTS,
        *,
        combine: bool = True,
        replies: Replies | None = None,
    ) -> None:
        self.kv = kv
        self.replies = replies
        self.attempts = attempts
        self.combine = combine
        self.retries: Counter[str] = Counter()
        self.writes = 0
        self.reads = 0
        self.stale = 0
        self._written: dict[str, _Written] = {}
        self._queues: dict[str, list[_Pending]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def change(self, product_id: str, operation: str, change: Change) -> StockView:
        """Apply ``change`` to the product's document and store it; the stock as written (or as
        read, when nothing changed). Raises what ``change`` raised, or what the write met."""
        mine = _Pending(operation, change)
        if not self.combine:
            await self._write_batch(product_id, [mine], mine)
            return mine.future.result()
        self._queues.setdefault(product_id, []).append(mine)
        try:
            async with self._locks.setdefault(product_id, asyncio.Lock()):
                if not mine.future.done():  # nobody took it along: take everything queued
                    await self._write_batch(product_id, self._queues.pop(product_id), mine)
        except asyncio.CancelledError:
            queue = self._queues.get(product_id, [])
            if mine in queue:  # not taken along by anyone: it never happens
                queue.remove(mine)
            else:  # on its way in someone's batch: its outcome has no reader any more
                mine.abandoned = True
                mine.future.add_done_callback(_outcome_dropped)
            raise
        return mine.future.result()

    async def read(self, product_id: str) -> tuple[StockLevel, int | None]:
        """The document and its revision; a product without one reads as zeros, revision None."""
        self.reads += 1
        with broker_errors(f"reading the stock of {product_id}"):
            try:
                entry = await self.kv.get(product_key(product_id))
            except nats.js.errors.KeyNotFoundError:  # never stocked, or deleted by hand
                return StockLevel(product_id=product_id), None
        if not entry.value:
            return StockLevel(product_id=product_id), None
        return decode_stock(entry.value), entry.revision

    async def write(self, level: StockLevel, revision: int | None) -> bool:
        """Whether the write landed; False if someone wrote since ``revision`` (None: since
        the document did not exist)."""
        return await self._put(level, revision, keep=False)

    async def _put(self, level: StockLevel, revision: int | None, *, keep: bool) -> bool:
        """``write``, noting its revision (and with ``keep`` the document) as this process's
        last write of the product; a lost write forgets the kept document."""
        product_id = level.product_id
        key = product_key(product_id)
        data = encode(level)
        with broker_errors(f"writing the stock of {product_id}"):
            try:
                if revision is None:  # nats-py's create: it also re-creates a deleted key
                    written = await self.kv.create(key, data)
                elif self.replies is not None:
                    written = await self.replies.compare_and_set(SUBJECT + key, data, revision)
                else:
                    written = await self.kv.update(key, data, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                if (last := self._written.get(product_id)) is not None and last.data is not None:
                    self._written[product_id] = last._replace(data=None)
                return False
        self.writes += 1
        self._written.pop(product_id, None)  # re-inserted last: the oldest is dropped first
        self._written[product_id] = _Written(written, data if keep else None)
        if len(self._written) > REMEMBERED:
            del self._written[next(iter(self._written))]
        return True

    async def _write_batch(self, product_id: str, batch: list[_Pending], mine: _Pending) -> None:
        """Settle every change of ``batch``. If this caller is cancelled, the others whose
        callers still wait go back to the queue, for the next lock holder (one of them) to apply
        from a fresh read; a change nobody waits for is dropped, never applied later."""
        try:
            view, outcomes = await self._apply(product_id, batch)
        except BaseException as exc:
            others = [p for p in batch if p is not mine and not p.future.done()]
            if isinstance(exc, asyncio.CancelledError):
                for pending in others:
                    if pending.abandoned:
                        pending.future.cancel()
                waiting = [p for p in others if not p.abandoned]
                self._queues.setdefault(product_id, [])[:0] = waiting
            else:  # the broker or the contention every one of them would have met
                for pending in others:
                    pending.future.set_exception(exc)
            raise
        for pending, refusal in zip(batch, outcomes, strict=True):
            if refusal is None:
                pending.future.set_result(view)
            else:
                pending.future.set_exception(refusal)

    async def _apply(
        self, product_id: str, batch: list[_Pending]
    ) -> tuple[StockView, list[Exception | None]]:
        """Read, apply each change, compare-and-set; after a lost write, pause and redo. The
        kept copy, if any, stands in for the first read (the module's doc)."""
        last = self._written.get(product_id) if self.combine else None
        if last is not None and last.data is not None:
            level = decode_stock(last.data)
            changed, outcomes = _outcomes(batch, level)
            if changed:
                if await self._put(level, last.revision, keep=True):
                    return StockView.of(level), outcomes
                self.stale += 1
        for attempt in range(self.attempts):
            level, revision = await self.read(product_id)
            last = self._written.get(product_id)
            alone = self.combine and last is not None and last.revision == revision
            changed, outcomes = _outcomes(batch, level)
            if not changed or await self._put(level, revision, keep=alone):
                return StockView.of(level), outcomes
            self.retries.update(p.operation for p in batch)
            await asyncio.sleep(random.uniform(0, min(MAX_PAUSE, FIRST_PAUSE * 2**attempt)))
        log.warning(
            "stock of %s: %d writes in a row lost to other writers", product_id, self.attempts,
            extra={"event": "stock.contention", "product_id": product_id},
        )  # fmt: skip
        raise StockContention(product_id, self.attempts)


def _outcomes(batch: list[_Pending], level: StockLevel) -> tuple[bool, list[Exception | None]]:
    """Apply each change of ``batch`` to ``level``: whether any changed it, and each one's
    refusal (None: applied)."""
    changed, outcomes = False, list[Exception | None]()
    for pending in batch:
        try:
            changed = pending.change(level) or changed
            outcomes.append(None)
        except REFUSALS as refusal:
            outcomes.append(refusal)
    return changed, outcomes


def _outcome_dropped(future: asyncio.Future[StockView]) -> None:
    """Mark a cancelled caller's outcome as seen, so asyncio does not log it as lost."""
    if not future.cancelled():
        future.exception()
