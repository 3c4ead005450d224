"""Cluster membership: the heartbeat each node keeps under its id in the KV bucket ``nodes``, with
the node's counters (``NodeStats``), which its ops views and metrics show too.

A light module on purpose: the api and the CLI read heartbeats without importing the node.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec


class NodeStats(msgspec.Struct):
    received: int = 0
    redeliveries: int = 0
    completed: int = 0
    failed: int = 0
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
