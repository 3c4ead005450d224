"""Cluster membership: the heartbeat each node keeps under its id in the KV bucket ``nodes``.

A light module on purpose: the api and the CLI read heartbeats without importing the node.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from nodeapp.stats import NodeStats


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
