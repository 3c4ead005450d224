"""Server spans for the api: OpenTelemetry's ASGI middleware through Litestar's plugin.

Added only when this process exports traces (``create_app(traced=...)``), so an api without
``OTEL_EXPORTER_OTLP_ENDPOINT`` pays nothing per request. The span is opened before routing, so
it starts named after the method alone and a route middleware renames it ``POST /orders`` (the
route template, never the raw path: span names must not grow with order ids).
"""

from __future__ import annotations

from typing import Any, Final

from litestar.enums import ScopeType
from litestar.middleware.base import DefineMiddleware
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from litestar.types import ASGIApp, Receive, Scope, Send
from opentelemetry import trace

from api.paths import HEALTHZ, METRICS, READYZ, SCHEMA

# Probes and scrapes arrive every few seconds and would bury the orders in Jaeger.
UNTRACED_PATHS: Final = [f"^{HEALTHZ}$", f"^{READYZ}$", f"^{METRICS}$", f"^{SCHEMA}"]


def _span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    return str(scope.get("method") or scope["type"]), {}


def tracing_plugin() -> OpenTelemetryPlugin:
    return OpenTelemetryPlugin(
        OpenTelemetryConfig(
            exclude=UNTRACED_PATHS,
            exclude_spans=["receive", "send"],
            scope_span_details_extractor=_span_details,
        )
    )


class RouteSpanNameMiddleware:
    """Names the current server span after the matched route, once routing has happened."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        span = trace.get_current_span()
        if scope["type"] == ScopeType.HTTP and span.is_recording():
            route = scope.get("path_template", "")
            span.update_name(f"{scope['method']} {route}")
            span.set_attribute("http.route", route)
        await self.app(scope, receive, send)


def tracing_middleware() -> DefineMiddleware:
    return DefineMiddleware(RouteSpanNameMiddleware)
