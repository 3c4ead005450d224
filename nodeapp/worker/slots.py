"""A node's C slots, and the work messages it holds ahead of them (ADR 0022).

A run holds a slot from its claim (before its first step) until its terminal state is stamped,
so at most C orders of a node are between first step and completion. The node asks for more
messages than it has free slots by the runs in their last step: those slots free within a step,
and the next orders' messages and document reads arrive while it runs instead of after it. A
message delivered ahead is held, not started: its run reads the document and then waits, in
order of arrival, for a slot; only with one does it claim the order. On drain a waiting run gets
no slot, and its message is nak'ed once no pull request of ours is open (ADR 0004). A run that
waits longer than a keepalive interval has its message kept alive (``keep_held_alive``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import deque
from collections.abc import Awaitable, Callable


class Slot:
    """The node slot a run holds. Outside a node (no pool) every call is a no-op and ``take``
    grants at once."""

    waited = False  # the run queued for its slot: what it read before may be stale

    async def take(self) -> bool:
        """Wait for a slot; False when the node drains first (the run must not start)."""
        return True

    def last_step(self) -> None:
        """The run began its last step: its slot frees within a step, fetch its successor."""

    def release(self) -> None:
        """The terminal state is stamped: the next order's claim overlaps this one's last
        write, notification and ack."""

    def retake(self) -> None:
        """The terminal write found a cancel request: the order goes on compensating."""


class _State(enum.Enum):
    UNPLACED = enum.auto()  # reading its document, or waiting for a slot
    TAKEN = enum.auto()
    RELEASED = enum.auto()
    ENDED = enum.auto()


class Slots:
    """The pool: how many slots runs hold, how many of those are in their last step, how many
    runs wait for one; what the fetch loop asks for (``wanted``), woken by ``changed``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.taken = 0
        self.finishing = 0  # runs holding a slot in their last step
        self.unplaced = 0  # runs holding none yet: reading their document or waiting
        self.changed = asyncio.Event()
        self._queue: deque[RunSlot] = deque()
        self._closed = False

    @property
    def wanted(self) -> int:
        """Messages worth asking for: the free slots and those about to free, less the runs
        that will take them (at most as many held as runs in their last step)."""
        return self.capacity - self.taken + self.finishing - self.unplaced

    @property
    def waiting(self) -> int:
        """Runs whose message was fetched ahead and that wait for a slot."""
        return len(self._queue)

    def slot(self, keepalive: Callable[[], Awaitable[None]]) -> RunSlot:
        """A slot for a new run; ``keepalive`` keeps its message alive while it waits."""
        self.unplaced += 1
        return RunSlot(self, keepalive)

    def close(self) -> None:
        """Draining: no waiting run gets a slot any more, nor does any later one."""
        self._closed = True
        while self._queue:
            self._queue.popleft().refuse()
        self.changed.set()

    def held_since(self, before: float) -> list[RunSlot]:
        """The waiting runs that began to wait before ``before`` (loop time)."""
        return [s for s in self._queue if s.since < before]

    def _hand_on(self) -> None:
        while self._queue and self.taken < self.capacity:
            self._queue.popleft().grant()
        self.changed.set()


class RunSlot(Slot):
    """One run's place in the pool; ``end`` when its task ends, whatever it held."""

    def __init__(self, pool: Slots, keepalive: Callable[[], Awaitable[None]]) -> None:
        self.pool = pool
        self.keepalive = keepalive
        self.state = _State.UNPLACED
        self.finishing = False
        self.since = 0.0
        self._granted: asyncio.Future[bool] | None = None

    async def take(self) -> bool:
        pool = self.pool
        if self.state is _State.TAKEN:
            return True
        if pool._closed or self.state is not _State.UNPLACED:
            return False
        if pool.taken < pool.capacity and not pool._queue:
            self._occupy()
            return True
        loop = asyncio.get_running_loop()
        self.waited, self.since = True, loop.time()
        self._granted = loop.create_future()
        pool._queue.append(self)
        try:
            return await self._granted
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                pool._queue.remove(self)
            raise

    def grant(self) -> None:
        self._occupy()
        if self._granted is not None and not self._granted.done():
            self._granted.set_result(True)

    def refuse(self) -> None:
        if self._granted is not None and not self._granted.done():
            self._granted.set_result(False)

    def _occupy(self) -> None:
        self.pool.unplaced -= 1
        self.pool.taken += 1
        self.state = _State.TAKEN

    def last_step(self) -> None:
        if self.state is _State.TAKEN and not self.finishing:
            self.finishing = True
            self.pool.finishing += 1
            self.pool.changed.set()

    def release(self) -> None:
        if self.state is _State.TAKEN:
            self._vacate()
            self.state = _State.RELEASED

    def retake(self) -> None:
        if self.state is _State.RELEASED:
            self.state = _State.TAKEN
            self.pool.taken += 1

    def end(self) -> None:
        """The run's task ended: give back what it holds, or its place in the queue."""
        pool = self.pool
        if self.state is _State.TAKEN:
            self._vacate()
        elif self.state is _State.UNPLACED:
            pool.unplaced -= 1
            with contextlib.suppress(ValueError):
                pool._queue.remove(self)
            pool.changed.set()
        self.state = _State.ENDED

    def _vacate(self) -> None:
        pool = self.pool
        pool.taken -= 1
        if self.finishing:
            self.finishing = False
            pool.finishing -= 1
        pool._hand_on()


async def keep_held_alive(slots: Slots, interval: float, stop: asyncio.Event) -> None:
    """Every ``interval``, tell JetStream that messages waiting longer than that for a slot are
    still ours (a last step that outlasts its work, a slow effect, long steps)."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        for slot in slots.held_since(loop.time() - interval):
            await slot.keepalive()
