"""The app factory: nothing connects at import; each app owns its broker link.

Tests build apps with their own settings and broker; ``api.server`` builds one for uvicorn.
With ``ORDERFLOW_PAYMENT_URL`` unset the app also hosts the simulated payment gateway under
``/sim/payments`` (ADR 0010); its pending verdicts stop before the broker link drains, and those
for this api's own callback URL go straight to its inbox, not over HTTP (ADR 0018).

Every route needs a bearer token (``api.auth``) except health, readiness, the schema, the
signed payment callback and the simulated gateway; each route's guard names its scope
(DESIGN part 2, Security). Tokens are verified against a ``TokenCache`` following the
``tokens`` bucket, so a revocation made anywhere reaches this process within milliseconds.
``GET /orders`` and ``GET /stats`` read the api's own SQLite read model (``api.read_side``),
which follows the ``orders`` bucket once the link is up.

The browser console (``/console``, ``api.console``) logs in with a token and then goes by a
session; its CSRF and session middleware stay on its router, and ``api.browser``'s headers go on
every answer (ADR 0016). Unknown query parameters are refused on every route (``api.query``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Final

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.stores.memory import MemoryStore
from litestar.template import TemplateConfig
from litestar.types import ControllerRouterHandler

from api.auth import auth_middleware
from api.broker_link import STATE_KEY, BrokerLink
from api.browser import SESSION_STORE, security_headers, session_secret
from api.console import CONSOLE_STATE, ConsoleAuth, console_router
from api.metrics import METRICS_KEY, ApiMetrics
from api.options import options_handlers
from api.paths import SCHEMA
from api.problems import EXCEPTION_HANDLERS
from api.query import known_query_only
from api.read_side import STATE_KEY as READ_SIDE_KEY
from api.read_side import ReadSide
from api.routes import ROUTE_HANDLERS
from api.routes.metrics import metrics as metrics_route
from api.routes.openapi import COMPONENTS
from api.routes.payments import inbox_dependency
from api.streams import STREAMS_KEY, LiveStreams
from api.tracing import tracing_middleware, tracing_plugin
from nodeapp import __version__
from nodeapp.core.settings import Settings
from nodeapp.core.tracing import recording
from nodeapp.orders.requests import MAX_BODY_BYTES
from nodeapp.security.cache import TokenCache
from nodeapp.security.ratelimit import RateLimiter
from nodeapp.shop.callbacks import PaymentInbox
from nodeapp.shop.gateway import Gateway
from nodeapp.shop.gateway_app import gateway_router

TEMPLATES: Final = Path(__file__).parent / "templates"


def create_app(settings: Settings, *, traced: bool | None = None) -> Litestar:
    """The api for ``settings``; its lifespan connects to the broker in the background.

    ``traced`` adds server spans; by default, when a tracer provider is installed. Without one
    (no ``OTEL_EXPORTER_OTLP_ENDPOINT``) requests pay nothing for tracing.
    """
    link = BrokerLink(settings)
    read_side = ReadSide(link, settings.read_db)
    metrics = ApiMetrics(link, read_side.projector)
    traced = recording() if traced is None else traced
    routes = [*ROUTE_HANDLERS, metrics_route]
    tokens = TokenCache(link.jetstream, settings)  # follows the tokens bucket once linked
    streams = LiveStreams()  # the open event streams; api.server ends them on a stop
    metrics.registry.register(streams)
    limiter = RateLimiter(settings.rate_limit)  # one budget per token, API and console alike
    console = console_router(settings, session_secret(settings))
    handlers: list[ControllerRouterHandler] = [*options_handlers(routes), *routes, console]
    link.answer_token_checks(tokens.verify)  # a node's POST /stop token, judged here
    lifespan: list[Callable[[Litestar], AbstractAsyncContextManager[Any]]] = [
        link.lifespan,
        tokens.lifespan,  # after the link's: the watcher stops before the link drains
        streams.lifespan,  # after the link's: the streams' watches stop before it drains
    ]
    inbox = PaymentInbox(link.payments_bucket, settings.payment_secret)
    if not settings.payment_url:  # nodes pay here: ORDERFLOW_API_URL + /sim/payments
        gateway = Gateway(settings, link.gateway_bucket, inbox)  # our verdicts go in-process
        handlers.append(gateway_router(gateway))
        lifespan.append(gateway.lifespan)  # after the link's: it stops before the link drains
    lifespan.append(read_side.lifespan)  # opens once the link is up, closes before it drains
    return Litestar(
        route_handlers=handlers,
        dependencies=inbox_dependency(inbox),
        state=State(
            {
                STATE_KEY: link,
                READ_SIDE_KEY: read_side,
                METRICS_KEY: metrics,
                STREAMS_KEY: streams,
                CONSOLE_STATE: ConsoleAuth(tokens, limiter),
            }
        ),
        middleware=[
            metrics.middleware,  # outermost: refused requests (401, 403, 429) are measured too
            *([tracing_middleware()] if traced else []),
            auth_middleware(tokens, limiter),
        ],
        before_send=[security_headers],  # every answer, a middleware's refusal included
        template_config=TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine),
        stores={SESSION_STORE: MemoryStore()},  # console sessions: this process's (ADR 0016)
        plugins=[tracing_plugin()] if traced else [],
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
        guards=[known_query_only],  # before a route's scope guard: it reads no resource
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=OpenAPIConfig(
            title="orderflow",
            version=__version__,
            description=(
                "Submit orders and follow them through their steps; list and search them; "
                "manage the catalog and its stock; receive the payment gateway's signed "
                "verdicts."
            ),
            path=SCHEMA,
            components=COMPONENTS,  # the bearer scheme; guarded routes name it (``BEARER``)
        ),
        logging_config=None,  # the process configures logging (json or console), not Litestar
    )
