"""The projector: one task keeping the read model's SQLite file in step with the orders bucket.

It reads ``KV_orders`` through a pull consumer of its own from the stored checkpoint
(``follower``), asking for one batch at a time (up to ``batch_size`` messages, or what came
within ``batch_wait`` seconds while more is known to be coming), and applies each in one
transaction with the checkpoint (``changes``), written while the next batch is collected
(``writer``): a restart resumes exactly after the last committed batch, and at most two batches
are in memory however far behind it is (ADR 0021).

A gap in the deliveries, a consumer gone, the broker away, the stream missing, the file busy or
another writer pauses the task, which logs, backs off and resumes from the stored checkpoint
with a new consumer. After ``idle`` seconds without a message the stream is asked why: a stream
recreated since (it starts again at 1) is projected from scratch, and a consumer that delivers
nothing while revisions wait, twice in a row, is replaced. Any other error ends the task: it is
logged, ``check()`` raises it, leaving the ``async with`` re-raises it, and ``rebuild()`` starts
it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final

import msgspec
import nats.errors
from nats.aio.msg import Msg

from nodeapp.broker.connection import Connected
from nodeapp.core.errors import BrokerUnavailable, OrderflowError
from nodeapp.readmodel.cancellation import keep_cancellation
from nodeapp.readmodel.changes import fold
from nodeapp.readmodel.follower import Follower, Interrupted
from nodeapp.readmodel.schema import CheckpointMoved, connect
from nodeapp.readmodel.stream import KV_STREAM, Lag, behind, measure_lag, stream_identity
from nodeapp.readmodel.writer import BatchWriter

log = logging.getLogger("orderflow.readmodel")

BATCH_SIZE: Final = 500
BATCH_WAIT: Final = 0.05
IDLE: Final = 5.0  # seconds without a message before asking the stream whether that is right
MIN_BACKOFF: Final = 0.2
MAX_BACKOFF: Final = 5.0

BrokerSource = Connected | Callable[[], Connected]


class Stalled(OrderflowError):
    """The consumer delivered nothing while the stream holds revisions not applied yet."""


class ProjectionFailed(OrderflowError):
    """The projection task ended with an error: the read model no longer follows the bucket."""


# What pauses the projection rather than ending it; each is logged, then retried.
PAUSING: Final = (
    BrokerUnavailable,
    nats.errors.Error,
    sqlite3.OperationalError,
    CheckpointMoved,
    Stalled,
    Interrupted,
)


class ProjectorStatus(msgspec.Struct, frozen=True):
    running: bool
    checkpoint: int
    applied: int  # stream messages applied since this projector started
    bad_revisions: int  # revisions that were not an order document (logged, skipped)
    error: str | None


class Projector:
    """``async with Projector(path, handles) as projector``: the file is open, the task follows
    the stream; on exit the task is cancelled and awaited, then the file is closed.

    ``broker`` is a connection with its JetStream context (``Handles``, ``Link``) or a function
    returning one (the api's broker link, which raises ``BrokerUnavailable`` while down: the
    task waits for it).
    """

    _writer: BatchWriter

    def __init__(
        self,
        path: str | Path,
        broker: BrokerSource,
        *,
        batch_size: int = BATCH_SIZE,
        batch_wait: float = BATCH_WAIT,
        idle: float = IDLE,
    ) -> None:
        self.path = path
        self._broker = broker if callable(broker) else (lambda: broker)
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.idle = idle
        self.bad_revisions = 0
        self.failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._suspect: int | None = None
        self._created: str | None = None
        self._exits = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Projector:
        try:
            db = await self._exits.enter_async_context(connect(self.path, writer=True))
            self._writer = BatchWriter(db)
            await self._writer.load()
        except BaseException:
            await self._exits.aclose()
            raise
        self._start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._halt()
        finally:
            await self._exits.aclose()
        if kind is None:
            self.check()

    @property
    def checkpoint(self) -> int:
        """The last ``KV_orders`` sequence committed to the file."""
        return self._writer.checkpoint

    @property
    def applied(self) -> int:
        """Stream messages committed since this projector started."""
        return self._writer.applied

    def check(self) -> None:
        """``ProjectionFailed`` if the task ended with an error (for ``/readyz``)."""
        if self.failure is not None:
            raise ProjectionFailed(f"read model projection stopped: {self.failure!r}")

    def status(self) -> ProjectorStatus:
        """What the projector knows without asking the broker (for metrics and ``/readyz``)."""
        return ProjectorStatus(
            running=self._task is not None and not self._task.done(),
            checkpoint=self.checkpoint,
            applied=self.applied,
            bad_revisions=self.bad_revisions,
            error=None if self.failure is None else repr(self.failure),
        )

    async def lag(self) -> Lag:
        """Asks the broker (``BrokerUnavailable`` while it is away)."""
        return await measure_lag(self._broker().js, self.checkpoint)

    async def caught_up(self, within: float) -> int:
        """Wait until every revision stored when called is applied; the checkpoint then."""
        return await self.reached((await self.lag()).stream_last_seq, within)

    async def reached(self, seq: int, within: float) -> int:
        """Wait until stream sequence ``seq`` (a revision just written, say) is applied."""
        return await self._writer.reached(seq, within, self.check)

    async def rebuild(self) -> None:
        """Empty the tables and replay the stream from sequence 1 (``orderflow readmodel
        rebuild``); also the way back from a failed projection."""
        await self._halt()
        await self._writer.reset()
        self.failure = None
        self._start()

    def _start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="orderflow-readmodel-projector")
        self._task.add_done_callback(self._finished)

    async def _halt(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task])  # wait(), not await: our own cancellation is not swallowed

    def _finished(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.failure = exc
            log.error(
                "read model projection stopped", exc_info=exc, extra={"event": "readmodel.failed"}
            )
        self._writer.wake()

    async def _run(self) -> None:
        delay = MIN_BACKOFF
        while True:
            applied = self.applied
            try:
                await self._follow()
            except PAUSING as exc:
                keep_cancellation()
                delay = MIN_BACKOFF if self.applied > applied else delay
                log.warning(
                    "read model paused, resuming in %.1fs: %s",
                    delay,
                    exc,
                    extra={"event": "readmodel.paused", "checkpoint": self.checkpoint},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _follow(self) -> None:
        """Follow from the stored checkpoint and apply batches until something fails."""
        await self._load_checkpoint()
        broker = self._broker()
        follower = Follower(broker.nc, broker.js, self.batch_size, self.idle)
        self._suspect = None
        try:
            await follower.open(self.checkpoint + 1)
            while True:
                await self._next_batch(follower)
        finally:
            await self._writer.abandon()
            await follower.close()

    async def _next_batch(self, follower: Follower) -> None:
        """Collect a batch while the one before is being written, then hand it to the writer
        (a function of its own: the batch's messages are let go when it returns)."""
        batch = await self._collect(follower)
        await (self._apply(batch) if batch else self._idle())

    async def _load_checkpoint(self) -> None:
        """The stored checkpoint, or 0 if ``KV_orders`` was recreated since it was stored."""
        last, created = await stream_identity(self._broker().js)
        checkpoint, known = await self._writer.load()
        if checkpoint > last or (known and created and known != created):
            log.warning(
                "%s was recreated since checkpoint %d: rebuilding the read model",
                KV_STREAM,
                checkpoint,
                extra={"event": "readmodel.stream_recreated"},
            )
            await self._writer.reset(created)
        elif created and known != created:
            await self._writer.remember_stream(created)
        self._created = created

    async def _collect(self, follower: Follower) -> list[Msg]:
        """The next batch: empty after ``idle`` seconds without a message."""
        await follower.request()
        msg = await follower.next(self.idle)
        if msg is None:
            return []
        batch = [msg]
        deadline = asyncio.get_running_loop().time() + self.batch_wait
        while len(batch) < self.batch_size and follower.coming(msg):
            remaining = deadline - asyncio.get_running_loop().time()
            following = await follower.next(remaining) if remaining > 0 else None
            if following is None:
                break
            batch.append(msg := following)
        return batch

    async def _apply(self, batch: list[Msg]) -> None:
        folded = fold(batch, after=self._writer.handed)
        self.bad_revisions += folded.bad
        if folded.count:
            await self._writer.write(folded.changes, folded.upto, folded.count)

    async def _idle(self) -> None:
        """Nothing arrived for ``idle`` seconds: fine if nothing is left to apply."""
        await self._writer.settle()
        last, created, first = await behind(self._broker().js, self.checkpoint)
        if last < self.checkpoint or (created and self._created and created != self._created):
            raise Stalled(f"{KV_STREAM} was recreated")  # resubscribing rebuilds
        if first is None:
            if last > self.checkpoint:  # every later revision is gone (markers purged)
                await self._writer.write([], last, 0)
            self._suspect = None
        elif self._suspect == first.seq:
            raise Stalled(f"no delivery for {2 * self.idle:g}s while revision {first.seq} waits")
        else:
            self._suspect = first.seq
