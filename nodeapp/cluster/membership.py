"""Cluster membership: the heartbeat each node keeps under its id in the KV bucket ``nodes``, with
the node's counters (``NodeStats``), which its ops views and metrics show too; and ``Membership``,
the loop that stores it and tells the node when it is fenced.

The api and the CLI read heartbeats from here without importing the worker engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Final, Literal

import msgspec
from nats.js.kv import KeyValue

from nodeapp.broker.connection import broker_errors
from nodeapp.core.errors import BrokerUnavailable
from nodeapp.orders.model import encode

log = logging.getLogger("orderflow.node")

HEARTBEAT_INTERVAL: Final = 1.0


class NodeStats(msgspec.Struct):
    received: int = 0
    redeliveries: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    deferred: int = 0
    takeovers: int = 0
    cas_conflicts: int = 0
    handed_back: int = 0
    abandoned: int = 0
    dead_lettered: int = 0
    reconciled: int = 0
    errors: int = 0


class Heartbeat(msgspec.Struct):
    """The value under the node's key in the ``nodes`` bucket."""

    node_id: str
    host: str
    pid: int
    version: str
    started_at: datetime
    state: Literal["active", "draining"]
    concurrency: int
    in_flight: int
    ops_url: str | None
    counters: NodeStats
    updated_at: datetime


class Membership:
    """Keeps this node's heartbeat stored every ``HEARTBEAT_INTERVAL`` and says when it is fenced.

    A node whose heartbeat has not been stored for longer than the lease may be taken for dead:
    others take its orders over, so it must not take or advance work until a beat gets through.
    """

    def __init__(
        self, nodes: KeyValue, node_id: str, lease: float, beat: Callable[[], Heartbeat]
    ) -> None:
        self.nodes = nodes
        self.node_id = node_id
        self.lease = lease
        self.beat = beat
        self._last_beat = time.monotonic()

    def fenced(self) -> bool:
        """True when our heartbeat has not been stored for longer than the lease."""
        return time.monotonic() - self._last_beat > self.lease

    async def run(self, stopped: asyncio.Event) -> None:
        """Store a heartbeat every interval until ``stopped`` is set."""
        next_beat = time.monotonic()
        while not stopped.is_set():
            await self._store_beat()
            next_beat += HEARTBEAT_INTERVAL
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), max(0.0, next_beat - time.monotonic()))

    async def _store_beat(self) -> None:
        try:
            with broker_errors("heartbeat"):
                await self.nodes.put(self.node_id, encode(self.beat()))
        except BrokerUnavailable as exc:
            log.warning(
                "heartbeat not written: %s",
                exc,
                extra={"event": "node.heartbeat_failed", "node_id": self.node_id},
            )
            return
        if self.fenced():
            log.info(
                "heartbeat stored again; unfenced",
                extra={"event": "node.unfenced", "node_id": self.node_id},
            )
        self._last_beat = time.monotonic()

    async def leave(self) -> None:
        """Remove our heartbeat; if the broker is away it expires by the bucket's TTL anyway."""
        try:
            with broker_errors("leaving registry"):
                await self.nodes.delete(self.node_id)
        except BrokerUnavailable as exc:
            log.warning(
                "could not remove heartbeat (it expires by TTL): %s",
                exc,
                extra={"event": "node.leave_failed", "node_id": self.node_id},
            )
