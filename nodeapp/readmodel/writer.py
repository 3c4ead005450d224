"""The read model's one writer: batches written one at a time, each with its checkpoint.

A batch is written in the background (aiosqlite runs it on the connection's thread) while the
projector collects the next one from the stream (SQLite releases the GIL while it works). Only
one batch is in flight: the next one's compare-and-set expects the checkpoint this one leaves.
``checkpoint`` moves when a batch commits, never before; what was handed over but not committed
is replayed from the stored checkpoint if the write fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiosqlite

from nodeapp.core.errors import OrderflowError
from nodeapp.readmodel.cancellation import shielded
from nodeapp.readmodel.changes import Change, apply_batch
from nodeapp.readmodel.schema import load_checkpoint, remember_stream, reset

log = logging.getLogger("orderflow.readmodel")


class BatchWriter:
    """Owns the checkpoint of ``db`` (the writer connection) and wakes whoever waits for it."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        self.checkpoint = 0  # the last stream sequence committed
        self.handed = 0  # the last stream sequence handed to a write (>= checkpoint)
        self.applied = 0  # stream messages committed since this writer started
        self._writing: asyncio.Task[None] | None = None
        self._moved = asyncio.Event()

    def wake(self) -> None:
        """Wake the waiters of ``reached``: the checkpoint moved (a commit, a reload after
        another writer moved it, a reset) or the projection stopped."""
        self._moved.set()
        self._moved = asyncio.Event()

    async def reached(self, seq: int, within: float, check: Callable[[], None]) -> int:
        """Wait until ``seq`` is committed; ``check`` raises if it never will be."""
        try:
            async with asyncio.timeout(within):
                while self.checkpoint < seq:
                    moved = self._moved
                    check()
                    await moved.wait()
        except TimeoutError:
            raise OrderflowError(
                f"read model not caught up within {within:g}s: at {self.checkpoint} of {seq}"
            ) from None
        return self.checkpoint

    async def load(self) -> tuple[int, str | None]:
        """The stored checkpoint (and the stream's creation time), now the writer's."""
        await self.settle()
        self.checkpoint, created = await load_checkpoint(self.db)
        self.handed = self.checkpoint
        self.wake()
        return self.checkpoint, created

    async def write(self, changes: list[Change], upto: int, count: int) -> None:
        """Start writing ``changes`` (``count`` stream messages, up to sequence ``upto``) once
        the batch before it has committed; raises that batch's error if it failed."""
        await self.settle()
        task = asyncio.ensure_future(apply_batch(self.db, changes, self.checkpoint, upto))
        task.add_done_callback(lambda done: self._done(done, upto, count))
        self._writing, self.handed = task, upto

    async def settle(self) -> None:
        """Wait for the batch in flight; its error, if it failed."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await shielded(writing)

    async def abandon(self) -> None:
        """Let the batch in flight end without raising (the connection must not be left inside
        its transaction); a failure is logged, and the stored checkpoint stays where it was."""
        writing, self._writing = self._writing, None
        if writing is None:
            return
        await asyncio.wait([writing])
        if not writing.cancelled() and (exc := writing.exception()) is not None:
            log.warning(
                "read model batch up to %d not written: %r",
                self.handed,
                exc,
                extra={"event": "readmodel.batch_dropped"},
            )
        self.handed = self.checkpoint

    async def reset(self, stream_created: str | None = None) -> None:
        """Empty the tables; the checkpoint is 0 (a rebuild, or a recreated stream)."""
        await self.settle()
        await shielded(reset(self.db, stream_created))
        self.checkpoint = self.handed = 0
        self.wake()

    async def remember_stream(self, stream_created: str) -> None:
        await shielded(remember_stream(self.db, stream_created))

    def _done(self, task: asyncio.Task[None], upto: int, count: int) -> None:
        if task.cancelled() or task.exception() is not None:
            return  # raised by settle(), or logged by abandon()
        self.checkpoint = upto
        self.applied += count
        self.wake()
