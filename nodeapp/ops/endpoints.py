"""A node's ops endpoints: ``GET /stat``, ``POST /stop``, ``GET /watchdog/self``,
``GET /watchdog/external`` and ``GET /metrics``, for an operations team and its probes.
``POST /stop`` needs ``Authorization: Bearer`` a token with ``ops`` (``nodeapp.ops.auth``); the
read-only endpoints are open.

Served by ``opshttp`` on ``ORDERFLOW_OPS_HOST:ORDERFLOW_OPS_PORT`` (port 0: any free port); the
URL goes into ``node.ops_url``, which the heartbeat and the micro service metadata carry, so
nobody needs to know the port in advance.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Final

import msgspec
import nats.js.errors
from nats.aio.client import Client as NATS

from nodeapp import __version__
from nodeapp.broker.resources import (
    NODES_BUCKET,
    ORDERS_BUCKET,
    ORDERS_STREAM,
    WORKERS_CONSUMER,
)
from nodeapp.cluster.backlog import CONTENT_TYPE, SCRAPE_ERRORS
from nodeapp.cluster.control import DrainReply
from nodeapp.cluster.membership import NodeStats
from nodeapp.core.settings import Settings
from nodeapp.ops.auth import OpsGuard
from nodeapp.ops.http import Request, Response, Routes, json_response, listening
from nodeapp.ops.metrics import NodeMetrics
from nodeapp.orders.model import utcnow

if TYPE_CHECKING:
    from nodeapp.worker.node import Node

log = logging.getLogger("orderflow.ops")

CHECK_TIMEOUT: Final = 1.0  # each external check; they run concurrently
LAG_INTERVAL: Final = 0.25
LAG_WINDOW: Final = 20  # ticks kept for the recent maximum (5 s)
LAG_LIMIT: Final = 1.0  # seconds of event-loop lag that make /watchdog/self fail


class Stat(msgspec.Struct):
    node_id: str
    state: str
    fenced: bool
    in_flight: int
    capacity: int
    uptime_s: float
    started_at: datetime
    version: str
    ops_url: str | None
    counters: NodeStats


class SelfCheck(msgspec.Struct):
    ok: bool
    node_id: str
    state: str
    loop_lag_ms: float
    loop_lag_max_ms: float
    heartbeat_fresh: bool
    fenced: bool


class Check(msgspec.Struct, omit_defaults=True):
    ok: bool
    ms: float | None = None
    error: str | None = None


class ExternalCheck(msgspec.Struct):
    ok: bool
    node_id: str
    checks: dict[str, Check]


class LoopLag:
    """Event-loop lag measured by a ticker: how much later than asked a ``sleep`` wakes up.

    A blocked loop (a CPU-bound call, a sync I/O slip) delays every order and keepalive; the
    ticker sees it after the fact, so the recent maximum is reported next to the last value.
    """

    def __init__(self, interval: float = LAG_INTERVAL) -> None:
        self.interval = interval
        self.recent: collections.deque[float] = collections.deque([0.0], maxlen=LAG_WINDOW)
        self._last_tick = time.monotonic()

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(self.interval)
            self._last_tick = time.monotonic()
            self.recent.append(max(0.0, self._last_tick - started - self.interval))

    def current(self) -> float:
        """The last lag, or longer if the ticker is overdue right now."""
        overdue = time.monotonic() - self._last_tick - self.interval
        return max(self.recent[-1], overdue)


class OpsServer:
    """The endpoints' handlers; ``ops_listener`` serves them and runs the lag ticker."""

    def __init__(self, settings: Settings, node: Node, nc: NATS, metrics: NodeMetrics) -> None:
        self.settings = settings
        self.node = node
        self.nc = nc
        self.metrics = metrics
        self.lag = LoopLag()
        self.guard = OpsGuard(settings, nc)
        self.routes: Routes = {
            "/stat": {"GET": self.stat},
            "/stop": {"POST": self.stop},
            "/watchdog/self": {"GET": self.watchdog_self},
            "/watchdog/external": {"GET": self.watchdog_external},
            "/metrics": {"GET": self.prometheus},
        }

    def _state(self) -> str:
        return "draining" if self.node.draining.is_set() else "active"

    async def stat(self, _request: Request) -> Response:
        node = self.node
        return json_response(
            200,
            Stat(
                node_id=node.node_id,
                state=self._state(),
                fenced=node.fenced(),
                in_flight=node.in_flight,
                capacity=self.settings.concurrency,
                uptime_s=round((utcnow() - node.started_at).total_seconds(), 3),
                started_at=node.started_at,
                version=__version__,
                ops_url=node.ops_url,
                counters=node.stats,
            ),
        )

    async def stop(self, request: Request) -> Response:
        refused = await self.guard.refusal(request, "POST /stop")
        if refused is not None:
            return refused
        log.info(
            "stop requested on the ops listener",
            extra={"event": "node.stop_requested", "node_id": self.node.node_id},
        )
        self.node.drain()
        return json_response(202, DrainReply(node_id=self.node.node_id, state="draining"))

    async def watchdog_self(self, _request: Request) -> Response:
        lag = self.lag.current()
        # The node fences itself exactly when its last stored heartbeat is older than the lease.
        fenced = self.node.fenced()
        ok = lag < LAG_LIMIT and not fenced
        check = SelfCheck(
            ok=ok,
            node_id=self.node.node_id,
            state=self._state(),
            loop_lag_ms=round(lag * 1000, 1),
            loop_lag_max_ms=round(max(self.lag.recent) * 1000, 1),
            heartbeat_fresh=not fenced,
            fenced=fenced,
        )
        return json_response(200 if ok else 503, check)

    async def watchdog_external(self, _request: Request) -> Response:
        js = self.node.js
        nodes = self.node.buckets.nodes
        node_id = self.node.node_id

        async def kv_round_trip() -> None:
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                await nodes.get(node_id)  # "no such key" is an answer: the round trip counts

        probes: dict[str, Callable[[], Awaitable[object]]] = {
            "jetstream": js.account_info,
            "kv": kv_round_trip,
            f"stream {ORDERS_STREAM}": lambda: js.stream_info(ORDERS_STREAM),
            f"consumer {WORKERS_CONSUMER}": lambda: js.consumer_info(
                ORDERS_STREAM, WORKERS_CONSUMER
            ),
            f"bucket {ORDERS_BUCKET}": lambda: js.key_value(ORDERS_BUCKET),
            f"bucket {NODES_BUCKET}": lambda: js.key_value(NODES_BUCKET),
        }
        checks = {"broker": Check(ok=bool(self.nc.is_connected))}
        if checks["broker"].ok:
            results = await asyncio.gather(*(_timed(probe) for probe in probes.values()))
            checks.update(zip(probes, results, strict=True))
        else:  # nats-py is reconnecting: no request can leave, say so rather than time out
            checks.update((name, Check(ok=False, error="not connected")) for name in probes)
        ok = all(c.ok for c in checks.values())
        return json_response(
            200 if ok else 503, ExternalCheck(ok=ok, node_id=node_id, checks=checks)
        )

    async def prometheus(self, _request: Request) -> Response:
        return Response(200, await self.metrics.render(), CONTENT_TYPE)


async def _timed(probe: Callable[[], Awaitable[object]]) -> Check:
    started = time.monotonic()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await probe()
    except nats.js.errors.NotFoundError:
        return Check(ok=False, error="missing")
    except SCRAPE_ERRORS as exc:
        return Check(ok=False, error=f"{type(exc).__name__}: {exc}".rstrip(": "))
    return Check(ok=True, ms=round((time.monotonic() - started) * 1000, 2))


@contextlib.asynccontextmanager
async def ops_listener(
    settings: Settings, node: Node, nc: NATS, metrics: NodeMetrics
) -> AsyncIterator[OpsServer]:
    """Serve the ops endpoints for the body of the ``async with``; sets ``node.ops_url``."""
    ops = OpsServer(settings, node, nc, metrics)
    what = "ORDERFLOW_OPS_HOST:ORDERFLOW_OPS_PORT"
    async with listening(settings.ops_host, settings.ops_port, ops.routes, what) as url:
        node.ops_url = url
        log.info(
            "ops endpoints on %s",
            url,
            extra={"event": "node.ops_listening", "node_id": node.node_id, "ops_url": url},
        )
        ticker = asyncio.create_task(ops.lag.run(), name="ops-loop-lag")
        try:
            yield ops
        finally:
            ticker.cancel()
            await asyncio.wait([ticker])
