"""``GET /stats?window=SECONDS`` from the read model: what the orders are doing and how fast.

Counts by status and by step cover every order in the model (kept by triggers as rows change,
``schema``); throughput and latency cover the
orders that completed within the last ``window`` seconds (latency = ``complete_time -
start_time``, nearest-rank percentiles). Only completed orders count: a failed order's time says
how long it took to fail, not how long an order takes.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Final

import aiosqlite
import msgspec

from nodeapp.core.errors import FieldError, InvalidOrder
from nodeapp.orders.model import utcnow
from nodeapp.readmodel.schema import db_time

DEFAULT_WINDOW: Final = 60.0
MAX_WINDOW: Final = 7 * 24 * 3600.0
PERCENTILES: Final = (50, 95, 99)
# A number as JSON writes it (60, 0.5, 1e3), what the OpenAPI document's ``type: number``
# means; not everything ``float`` reads (" 60", "1_000", "+5", ".5", "inf").
_NUMBER: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


class Latency(msgspec.Struct, frozen=True):
    """Seconds from submit to completion."""

    p50: float
    p95: float
    p99: float


class Stats(msgspec.Struct, frozen=True):
    window_seconds: float
    by_status: dict[str, int]
    by_step: dict[str, int]
    completed_in_window: int
    orders_per_second: float
    latency_seconds: Latency | None  # None when nothing completed in the window


def stats_window(raw: str | float | None) -> float:
    """The ``window`` parameter in seconds; ``InvalidOrder`` naming it when it is not one."""
    if raw is None:
        return DEFAULT_WINDOW
    window = math.nan if isinstance(raw, str) and not _NUMBER.fullmatch(raw) else float(raw)
    if not 0 < window <= MAX_WINDOW:  # also refuses nan
        raise InvalidOrder([FieldError("window", f"must be seconds in (0, {MAX_WINDOW:g}]")])
    return window


async def order_stats(
    db: aiosqlite.Connection, window: float, now: datetime | None = None
) -> Stats:
    """The statistics over ``window`` seconds up to ``now`` (the current time by default)."""
    until = now or utcnow()
    since = db_time(until - timedelta(seconds=window))
    counts: dict[str, dict[str, int]] = {"status": {}, "step": {}}
    async with db.execute("SELECT dimension, value, orders FROM counts WHERE orders > 0") as rows:
        for dimension, value, orders in await rows.fetchall():
            counts[dimension][value] = orders
    async with db.execute(
        # the window's slice of orders_finished, not all completed orders by status
        "SELECT latency_us FROM orders "
        "WHERE complete_time >= ? AND complete_time <= ? AND +status = 'completed'",
        (since, db_time(until)),
    ) as cursor:
        latencies = sorted(row[0] / 1e6 for row in await cursor.fetchall() if row[0] is not None)
    return Stats(
        window_seconds=window,
        by_status=counts["status"],
        by_step=counts["step"],
        completed_in_window=len(latencies),
        orders_per_second=len(latencies) / window,
        latency_seconds=Latency(*(_rank(latencies, p) for p in PERCENTILES)) if latencies else None,
    )


def _rank(ordered: list[float], percentile: int) -> float:
    """Nearest-rank percentile of a sorted, non-empty list."""
    return ordered[max(0, math.ceil(percentile / 100 * len(ordered)) - 1)]
