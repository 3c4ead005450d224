"""The app factory: nothing connects at import; each app owns its broker link.

Tests build apps with their own settings and broker; ``api.server`` builds one for uvicorn.
"""

from __future__ import annotations

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig

from api.broker_link import STATE_KEY, BrokerLink
from api.metrics import METRICS_KEY, ApiMetrics
from api.paths import SCHEMA
from api.problems import EXCEPTION_HANDLERS
from api.routes import ROUTE_HANDLERS
from api.routes.metrics import metrics as metrics_route
from api.tracing import tracing_middleware, tracing_plugin
from nodeapp import __version__
from nodeapp.core.settings import Settings
from nodeapp.core.tracing import recording
from nodeapp.orders.requests import MAX_BODY_BYTES


def create_app(settings: Settings, *, traced: bool | None = None) -> Litestar:
    """The api for ``settings``; its lifespan connects to the broker in the background.

    ``traced`` adds server spans; by default, when a tracer provider is installed. Without one
    (no ``OTEL_EXPORTER_OTLP_ENDPOINT``) requests pay nothing for tracing.
    """
    link = BrokerLink(settings)
    metrics = ApiMetrics(link)
    traced = recording() if traced is None else traced
    return Litestar(
        route_handlers=[*ROUTE_HANDLERS, metrics_route],
        state=State({STATE_KEY: link, METRICS_KEY: metrics}),
        middleware=[metrics.middleware, *([tracing_middleware()] if traced else [])],
        plugins=[tracing_plugin()] if traced else [],
        lifespan=[link.lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=OpenAPIConfig(
            title="orderflow",
            version=__version__,
            description="Submit orders and follow them through their steps.",
            path=SCHEMA,
        ),
        logging_config=None,  # the process configures logging (json or console), not Litestar
    )
