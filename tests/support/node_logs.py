"""Reading what a node process logged: its JSON log lines, by event name."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from typing import Any

from tests.support.processes import NodeProcess


def log_events(node: NodeProcess) -> list[dict[str, Any]]:
    """``node``'s JSON log lines, decoded (a line that is not JSON, e.g. a traceback, skipped)."""
    events: list[dict[str, Any]] = []
    for line in node.log_lines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


def events_named(nodes: Iterable[NodeProcess], event: str) -> list[dict[str, Any]]:
    """The log lines of ``nodes`` that carry ``event``."""
    return [e for node in nodes for e in log_events(node) if e.get("event") == event]


def logged(node: NodeProcess, event: str) -> int:
    """How many log lines of ``node`` carry ``event``."""
    return len(events_named([node], event))
