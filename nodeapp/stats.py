"""A node's counters, published in its heartbeat and ops views."""

from __future__ import annotations

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
