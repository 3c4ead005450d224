"""The chaos run's node processes: K slots, each holding one live node that can be killed,
drained and replaced.

A replacement is a new node with a new id (``chaos-<slot>-<generation>``), as a restarted
process is in production: a new id means a new lease epoch when it takes an order over. The
pool remembers which ids were SIGKILLed and which drained, so each takeover found in the
history can be put down to its cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime

import nats.js.errors

from benchmarks.common import Child, Processes, wait_until
from nodeapp.broker.connection import ANY_NATS_ERROR
from nodeapp.broker.resources import Buckets
from nodeapp.core.settings import Settings
from nodeapp.local.supervisor import child_env

DRAIN_EXTRA: float = 15.0  # seconds a drain may take beyond step + ack wait before a SIGKILL


class NodePool:
    """Starts, kills, drains and replaces node processes; ``note`` reports each action."""

    def __init__(
        self,
        procs: Processes,
        settings: Settings,
        buckets: Buckets,
        size: int,
        note: Callable[[str], None],
    ) -> None:
        self.procs = procs
        self.settings = settings
        self.buckets = buckets
        self.note = note
        self.slots: list[Child | None] = [None] * size
        self.ids: list[str] = [""] * size
        self.generation = 0
        # node id -> when it was told to stop (wall clock, as the broker stamps revisions)
        self.killed: dict[str, datetime] = {}
        self.drained: dict[str, datetime] = {}
        self.drains_clean = 0
        self.drain_seconds: list[float] = []
        self.unexpected: list[str] = []

    async def start(self, slot: int) -> Child:
        """A new node in ``slot``; returns once its heartbeat is in the ``nodes`` bucket."""
        self.generation += 1
        node_id = f"chaos-{slot}-{self.generation}"
        child = self.procs.spawn(
            f"node-{slot}-{self.generation}",
            "node",
            ["-m", "nodeapp", "node", "--node-id", node_id],
            child_env(self.settings),
        )
        self.slots[slot], self.ids[slot] = child, node_id

        async def beating() -> bool:
            # Not there yet, or the broker is busy failing over (a killed server): look again.
            with contextlib.suppress(nats.js.errors.KeyNotFoundError, *ANY_NATS_ERROR):
                await self.buckets.nodes.get(node_id)
                return True
            return False

        await wait_until(f"heartbeat of {node_id}", beating, [child])
        self.note(f"started {node_id} (pid {child.pid})")
        return child

    async def kill(self, slot: int) -> None:
        """SIGKILL the node in ``slot``: no drain, no hand-back, its leases run out."""
        child = self.slots[slot]
        if child is None or not child.alive:
            return
        self.killed[self.ids[slot]] = datetime.now(UTC)
        await asyncio.to_thread(child.kill)
        self.slots[slot] = None
        self.note(f"SIGKILL {self.ids[slot]}")

    async def drain(self, slot: int) -> None:
        """SIGTERM the node in ``slot`` and wait for its drain; SIGKILL it if that hangs."""
        child = self.slots[slot]
        if child is None or not child.alive:
            return
        node_id = self.ids[slot]
        started, told = time.monotonic(), datetime.now(UTC)
        child.signal(signal.SIGTERM)
        grace = self.settings.step_seconds + self.settings.ack_wait + DRAIN_EXTRA
        code = await asyncio.to_thread(child.wait, grace)
        if code is None:
            await asyncio.to_thread(child.kill)
            self.killed[node_id] = told
            self.note(f"SIGTERM {node_id}: no exit within {grace:.0f}s, SIGKILLed")
        else:
            took = time.monotonic() - started
            self.drained[node_id] = told
            self.drain_seconds.append(took)
            self.drains_clean += code == 0
            self.note(f"SIGTERM {node_id}: drained, exit {code} after {took:.2f}s")
        self.slots[slot] = None

    async def fill(self) -> None:
        """Start a node in every empty slot."""
        for slot, child in enumerate(self.slots):
            if child is None:
                await self.start(slot)

    async def replace_dead(self) -> None:
        """Restart any node that exited without being told to (a crash is worth reporting)."""
        for slot, child in enumerate(self.slots):
            if child is not None and not child.alive:
                what = f"{self.ids[slot]} exited by itself with {child.returncode}"
                self.unexpected.append(what)
                self.killed[self.ids[slot]] = datetime.now(UTC)  # noticed, not the exit time
                self.note(f"{what}:\n{child.log_tail(5)}")
                self.slots[slot] = None
                await self.start(slot)
