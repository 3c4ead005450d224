"""The api's Prometheus metrics: orders submitted by outcome, request latency by route, backlog,
the read model's progress and lag.

The registry belongs to the app (``create_app`` makes one per app), never to the process, so
tests can build several apps. A route-level middleware times each routed request and reads the
submit outcome off the response (status and ``Idempotent-Replayed``), so the order routes carry
no metrics code. The backlog and the read model's lag are read from the broker when Prometheus
scrapes (``BacklogProbe``, ``ReadModelProbe``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from litestar import Request
from litestar.enums import ScopeType
from litestar.middleware.base import DefineMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from api.broker_link import BrokerLink
from api.paths import ORDERS
from nodeapp.cluster.backlog import BacklogProbe
from nodeapp.readmodel.probe import ReadModelProbe
from nodeapp.readmodel.projector import Projector

METRICS_KEY: Final = "metrics"
SUBMIT: Final = ("POST", ORDERS)
SUBMIT_OUTCOMES: Final = ("accepted", "replayed", "rejected", "unavailable", "error")
REQUEST_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_REPLAYED: Final = b"idempotent-replayed"


def submit_outcome(status: int, replayed: bool) -> str:
    """What a ``POST /orders`` answer means for the orders-submitted counter."""
    if status < 300:
        return "replayed" if replayed else "accepted"
    if status == 503:
        return "unavailable"
    return "rejected" if status < 500 else "error"


class ApiMetrics:
    """One app's registry and the series the middleware feeds."""

    def __init__(self, link: BrokerLink, projector: Callable[[], Projector | None]) -> None:
        self.registry = CollectorRegistry()
        self.submitted = Counter(
            "orderflow_orders_submitted",
            "POST /orders answers, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.requests = Histogram(
            "orderflow_http_request_duration_seconds",
            "HTTP request latency, by method, route template and status",
            ["method", "route", "status"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.backlog = BacklogProbe(link.jetstream)
        self.registry.register(self.backlog)
        self.read_model = ReadModelProbe(projector)  # None until the read model opens
        self.registry.register(self.read_model)
        self._submitted = {o: self.submitted.labels(o) for o in SUBMIT_OUTCOMES}
        # Routes are templates, so the label sets are few; resolve each child once.
        self._requests: dict[tuple[str, str, int], Any] = {}

    def observe(self, method: str, route: str, status: int, seconds: float, replayed: bool) -> None:
        key = (method, route, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(method, route, str(status))
        child.observe(seconds)
        if (method, route) == SUBMIT:
            self._submitted[submit_outcome(status, replayed)].inc()

    async def render(self) -> bytes:
        await self.backlog.refresh()
        await self.read_model.refresh()
        return generate_latest(self.registry)

    @property
    def middleware(self) -> DefineMiddleware:
        return DefineMiddleware(RequestMetricsMiddleware, metrics=self)


class RequestMetricsMiddleware:
    """Times routed HTTP requests (the router's own 404/405 never reach route middleware)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        method, route = scope["method"], scope.get("path_template", "")
        submit = (method, route) == SUBMIT
        status = 500  # if nothing is sent, the server answers 500
        replayed = False

        async def timed_send(message: Message) -> None:
            nonlocal status, replayed
            if message["type"] == "http.response.start":
                status = message["status"]
                if submit:
                    replayed = any(name.lower() == _REPLAYED for name, _ in message["headers"])
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, timed_send)
        finally:
            self.metrics.observe(method, route, status, time.perf_counter() - started, replayed)


def api_metrics(request: Request[Any, Any, Any]) -> ApiMetrics:
    """The metrics ``create_app`` put in the app's state."""
    metrics: ApiMetrics = request.app.state[METRICS_KEY]
    return metrics
