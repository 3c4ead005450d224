"""Bearer tokens for the api: who a request acts as, what it may do, and how often.

``BearerAuth`` (an ``AbstractAuthenticationMiddleware``) turns ``Authorization: Bearer <token>``
into a ``Principal`` on ``request.user`` (``request.auth`` stays None: the token text is kept
nowhere a later log line could find it), then charges the token's rate limit. Every route needs
a valid token except ``EXEMPT_PATHS`` (health, readiness, the schema, the signed payment
callback, the simulated gateway). Route guards from ``requires(...)`` check scopes; a guard runs
before the handler, so a token lacking the scope gets 403 whether or not the resource exists.

Failures leave as problem+json through ``AUTH_EXCEPTION_HANDLERS`` (merge it into the app's
handlers): 401 with ``WWW-Authenticate: Bearer``, 403, 429 with ``Retry-After``. Wiring::

    tokens = TokenCache(link.jetstream, settings)
    Litestar(...,
        middleware=[..., auth_middleware(tokens, RateLimiter(settings.rate_limit))],
        lifespan=[link.lifespan, tokens.lifespan],
        exception_handlers={**EXCEPTION_HANDLERS, **AUTH_EXCEPTION_HANDLERS})

    @get(ORDER, guards=[requires(ORDERS_READ)])
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any, Final, Protocol

from litestar import Litestar, Response
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.middleware.base import DefineMiddleware
from litestar.types import ASGIApp, ExceptionHandlersMap

from api.paths import HEALTHZ, READYZ, SCHEMA
from api.problems import problem_response, problem_type
from api.responses import AnyRequest
from nodeapp.core.errors import Forbidden, RateLimited, TokenNotFound, Unauthenticated
from nodeapp.security.ratelimit import RateLimiter
from nodeapp.security.scopes import Principal, parse_scopes
from nodeapp.shop.payment_messages import CALLBACK_PATH, SIM_PREFIX

log = logging.getLogger("orderflow.api.auth")

# Anchored: Litestar searches these anywhere in the path (``re.findall``).
EXEMPT_PATHS: Final = (
    rf"^{re.escape(HEALTHZ)}$",
    rf"^{re.escape(READYZ)}$",
    rf"^{re.escape(SCHEMA)}(/|$)",
    rf"^{re.escape(CALLBACK_PATH)}$",
    rf"^{re.escape(SIM_PREFIX)}(/|$)",
)
BEARER: Final = {"WWW-Authenticate": "Bearer"}


class Verifier(Protocol):
    """What the middleware asks (``TokenCache``; a test may bring its own)."""

    async def verify(self, presented: str | None) -> Principal: ...


def bearer_token(header: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>``, None without the header;
    ``Unauthenticated("malformed")`` for another scheme or an empty token."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("malformed")
    return token.strip()


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


def _unauthenticated(request: AnyRequest, exc: Unauthenticated) -> Response[bytes]:
    detail = f"{exc}; send Authorization: Bearer <token>"
    return problem_response(
        request, 401, detail, type_=problem_type(401, "unauthenticated"), headers=BEARER
    )


def _forbidden(request: AnyRequest, exc: Forbidden) -> Response[bytes]:
    return problem_response(request, 403, exc.reason, type_=problem_type(403, "forbidden"))


def _rate_limited(request: AnyRequest, exc: RateLimited) -> Response[bytes]:
    retry_after = str(max(1, math.ceil(exc.retry_after)))
    return problem_response(
        request,
        429,
        f"too many requests with this token; retry after {retry_after}s",
        type_=problem_type(429, "rate-limited"),
        headers={"Retry-After": retry_after},
    )


def _token_not_found(request: AnyRequest, exc: TokenNotFound) -> Response[bytes]:
    return problem_response(request, 404, str(exc))


AUTH_EXCEPTION_HANDLERS: Final[ExceptionHandlersMap] = {
    Unauthenticated: _unauthenticated,
    Forbidden: _forbidden,
    RateLimited: _rate_limited,
    TokenNotFound: _token_not_found,
}
