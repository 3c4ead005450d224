"""Bearer tokens for the api: who a request acts as, what it may do, and how often.

``BearerAuth`` (an ``AbstractAuthenticationMiddleware``) turns ``Authorization: Bearer <token>``
into a ``Principal`` on ``request.user`` (``request.auth`` stays None: the token text is kept
nowhere a later log line could find it), then charges the token's rate limit. Every route needs
a valid token except ``EXEMPT_PATHS`` (health, readiness, the schema, the signed payment
callback, the simulated gateway, and the console, whose pages check their session instead).
Route guards from ``requires(...)`` check scopes; a guard runs before the handler, so a token
lacking the scope gets 403 whether or not the resource exists.

Failures leave as problem+json through ``api.problems`` (its ``EXCEPTION_HANDLERS`` holds
``AUTH_EXCEPTION_HANDLERS``): 401 with ``WWW-Authenticate: Bearer``, 403, 429 with
``Retry-After``. Wiring (``api.app.create_app``)::

    tokens = TokenCache(link.jetstream, settings)
    Litestar(...,
        middleware=[metrics.middleware, auth_middleware(tokens, RateLimiter(rate))],
        lifespan=[link.lifespan, tokens.lifespan],
        exception_handlers=EXCEPTION_HANDLERS)

    @get(ORDER, guards=[requires(ORDERS_READ)])
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, Final, Protocol, runtime_checkable

from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.middleware.base import DefineMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.paths import CONSOLE, HEALTHZ, READYZ, SCHEMA
from api.problems import AUTH_EXCEPTION_HANDLERS as AUTH_EXCEPTION_HANDLERS  # re-exported
from api.problems import send_problem
from api.responses import AnyRequest
from nodeapp.core.errors import BrokerUnavailable, Forbidden, RateLimited, Unauthenticated
from nodeapp.security.ratelimit import RateLimiter
from nodeapp.security.scopes import Principal, parse_scopes
from nodeapp.security.verify import bearer_token
from nodeapp.shop.payment_messages import CALLBACK_PATH, SIM_PREFIX

log = logging.getLogger("orderflow.api.auth")

# Anchored: Litestar searches these anywhere in the path (``re.findall``).
EXEMPT_PATHS: Final = (
    rf"^{re.escape(HEALTHZ)}$",
    rf"^{re.escape(READYZ)}$",
    rf"^{re.escape(SCHEMA)}(/|$)",
    rf"^{re.escape(CALLBACK_PATH)}$",
    rf"^{re.escape(SIM_PREFIX)}(/|$)",
    rf"^{re.escape(CONSOLE)}(/|$)",  # a session, not a bearer token (``api.console``)
)


@runtime_checkable  # Litestar checks a dependency's value against its annotation
class Verifier(Protocol):
    """What the middleware asks (``TokenCache``; a test may bring its own)."""

    async def verify(self, presented: str | None) -> Principal: ...


class BearerAuth(AbstractAuthenticationMiddleware):
    """Authenticate, then rate-limit, every request outside ``EXEMPT_PATHS``."""

    def __init__(
        self,
        app: ASGIApp,
        verifier: Verifier,
        limiter: RateLimiter,
        exclude: Sequence[str] = EXEMPT_PATHS,
    ) -> None:
        super().__init__(app, exclude=list(exclude))
        self._verifier = verifier
        self._limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a refusal (401, 429, or 503 when a token cannot be read) right here, so the
        middleware around this one (metrics, tracing) sees the response, not an exception.

        Whatever the route raises was answered already, by the handler Litestar puts around
        it; what gets here was raised by ``authenticate_request``.
        """
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await super().__call__(scope, receive, tracking_send)
        except (Unauthenticated, RateLimited, BrokerUnavailable) as exc:
            if started:
                raise
            await send_problem(scope, receive, send, exc)

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        try:
            principal = await self._verifier.verify(
                bearer_token(connection.headers.get("authorization"))
            )
        except Unauthenticated as exc:
            log.info(
                "refused %s %s: token %s", connection.scope.get("method"),
                connection.scope["path"], exc.reason,
                extra={"event": "auth.refused", "reason": exc.reason, "token_id": exc.token_id},
            )  # fmt: skip
            raise
        try:
            self._limiter.take(principal.token_id)
        except RateLimited:
            log.debug(
                "rate limited token %s", principal.token_id,
                extra={"event": "auth.rate_limited", "token_id": principal.token_id},
            )  # fmt: skip
            raise
        return AuthenticationResult(user=principal, auth=None)


def auth_middleware(
    verifier: Verifier, limiter: RateLimiter, exclude: Sequence[str] = EXEMPT_PATHS
) -> DefineMiddleware:
    """The ``Litestar(middleware=[...])`` entry; put it after metrics so refusals are counted."""
    return DefineMiddleware(BearerAuth, verifier=verifier, limiter=limiter, exclude=exclude)


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The request's principal; ``Unauthenticated("missing")`` on a route the middleware
    skipped (a guard there is a wiring mistake, and it fails closed)."""
    user = connection.scope.get("user")
    if not isinstance(user, Principal):
        raise Unauthenticated("missing")
    return user


class requires:  # lower case: read like a function, ``guards=[requires(ORDERS_READ)]``
    """A route guard: the token needs any one of ``scopes`` (or ``admin``); none listed means
    any valid token. Unknown scope names fail at import, not at the first request."""

    __slots__ = ("scopes",)

    def __init__(self, *scopes: str) -> None:
        self.scopes = parse_scopes(scopes)

    async def __call__(
        self, connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
    ) -> None:
        principal = principal_of(connection)
        if not principal.allows(*self.scopes):
            needed = " or ".join(sorted(self.scopes))
            raise Forbidden(f"this token lacks the scope {needed}")

    def __repr__(self) -> str:
        return f"requires({', '.join(map(repr, sorted(self.scopes)))})"


def unguarded_routes(app: Litestar, exempt: Sequence[str] = EXEMPT_PATHS) -> list[str]:
    """``"METHOD path"`` of every route outside ``exempt`` without a ``requires`` guard: for a
    test asserting that no route was forgotten (``GET /products`` takes ``requires()``)."""
    pattern = re.compile("|".join(exempt))
    missing = []
    for route in app.routes:
        if pattern.search(route.path):
            continue
        for handler in getattr(route, "route_handlers", ()):
            methods = set(handler.http_methods) - {"OPTIONS"}  # Litestar's automatic OPTIONS
            if methods and not any(isinstance(g, requires) for g in handler.resolve_guards()):
                missing += [f"{m} {route.path}" for m in sorted(methods)]
    return missing


def customer_of(request: AnyRequest) -> str | None:
    """The customer a ``--customer`` token is bound to, None for any other token: handlers
    filter lists by it and answer 404 for another customer's order."""
    return principal_of(request).customer_id


def check_customer(request: AnyRequest, customer_id: str) -> None:
    """``Forbidden`` when a customer-bound token acts for another customer (submit)."""
    bound = customer_of(request)
    if bound is not None and bound != customer_id:
        raise Forbidden(f"this token may act only for customer {bound}")


def visible_to(request: AnyRequest, customer_id: str) -> bool:
    """Whether the request's token may see a resource of ``customer_id``: any token not bound
    to a customer, or one bound to that customer. Handlers answer 404 otherwise, exactly as
    for an order that does not exist, so a customer cannot probe for others' order ids."""
    bound = customer_of(request)
    return bound is None or bound == customer_id
