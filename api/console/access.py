"""Who a console request acts as: the token its session holds, verified on every request.

``console_access`` is the guard of every console page but the login: it reads the token the
login stored in the session, verifies it against the same ``TokenCache`` bearer calls use (a
revoked or expired token ends the session at its next request), charges the token's rate
limit, and puts the ``Principal`` where ``api.auth.requires`` looks. The cache and the limiter
are the app's, found in its state (``ConsoleAuth``): Litestar deep-copies a router and all it
holds when it registers one, so a guard holding them would hold copies. Logging in needs any valid
token; each page names the scope it needs with ``requires(...)`` as an API route does.

Refusals are pages, not problem documents (``console_exception_handlers``): no session, or a
token no longer valid, goes back to the login; a missing scope, a failed CSRF check or a rate
limit is an HTML page saying so.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Final, NamedTuple

from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.exceptions import PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.response import Redirect, Template
from litestar.types import ExceptionHandlersMap

from api.auth import Verifier
from api.browser import expired_csrf_cookie
from api.paths import CONSOLE_LOGIN
from nodeapp.core.errors import BrokerUnavailable, Forbidden, RateLimited, Unauthenticated
from nodeapp.core.settings import Settings
from nodeapp.security.ratelimit import RateLimiter

log = logging.getLogger("orderflow.api.console")

SESSION_TOKEN: Final = "token"  # the session's one key: the token the login verified
CONSOLE_STATE: Final = "orderflow_console"  # the app state's key for ``ConsoleAuth``
AnyRequest = Request[Any, Any, Any]


class ConsoleAuth(NamedTuple):
    """What the console checks a token with: the app's token cache and rate limiter."""

    verifier: Verifier
    limiter: RateLimiter


def console_auth(connection: ASGIConnection[Any, Any, Any, Any]) -> ConsoleAuth:
    auth = connection.app.state[CONSOLE_STATE]
    assert isinstance(auth, ConsoleAuth), "create_app puts ConsoleAuth in the app state"
    return auth


async def console_access(
    connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
) -> None:
    """The console pages' guard: the session's token, verified, as ``scope["user"]``."""
    verifier, limiter = console_auth(connection)
    token = connection.session.get(SESSION_TOKEN)
    principal = await verifier.verify(token if isinstance(token, str) else None)
    limiter.take(principal.token_id)
    connection.scope["user"] = principal


def error_page(status: int, message: str, headers: dict[str, str] | None = None) -> Template:
    return Template(
        template_name="console/error.html",
        context={"status": status, "message": message},
        status_code=status,
        headers=headers,
    )


def _to_login(request: AnyRequest, exc: Unauthenticated) -> Response[Any]:
    """No session, or its token expired or was revoked: forget it, log in again."""
    if exc.reason != "missing":
        log.info(
            "console session ended: token %s", exc.reason,
            extra={"event": "console.session_ended", "reason": exc.reason},
        )  # fmt: skip
    request.clear_session()
    return Redirect(CONSOLE_LOGIN, status_code=303)


def _forbidden(_request: AnyRequest, exc: Forbidden) -> Response[Any]:
    return error_page(403, f"This page is not for this token: {exc.reason}.")


def _rate_limited(_request: AnyRequest, exc: RateLimited) -> Response[Any]:
    wait = str(max(1, math.ceil(exc.retry_after)))
    return error_page(429, f"Too many requests: wait {wait} s.", {"Retry-After": wait})


def _broker_unavailable(_request: AnyRequest, _exc: BrokerUnavailable) -> Response[Any]:
    return error_page(503, "The broker is unavailable; try again shortly.", {"Retry-After": "1"})


def console_exception_handlers(settings: Settings) -> ExceptionHandlersMap:
    """The console's refusals as pages (``Router(exception_handlers=...)``)."""
    stale = expired_csrf_cookie(settings)

    def csrf_failed(_request: AnyRequest, _exc: PermissionDeniedException) -> Response[Any]:
        """Litestar's CSRF middleware refused a form: it came from elsewhere, or from a page
        signed with another key (a restart without ``ORDERFLOW_SESSION_SECRET``). The token
        cookie goes, so reloading the form gets a good one."""
        page = error_page(
            403, "This form expired or did not come from this console: reload it, send again."
        )
        page.cookies.append(stale)
        return page

    return {
        Unauthenticated: _to_login,
        Forbidden: _forbidden,
        PermissionDeniedException: csrf_failed,
        RateLimited: _rate_limited,
        BrokerUnavailable: _broker_unavailable,
    }
