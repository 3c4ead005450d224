"""Who a console request acts as: the token its session names, checked on every request.

The login verifies the token presented once and keeps only its id in the session (the token
itself is in neither the cookie nor the store). ``console_access``, the guard of every console
page but the login, asks the same ``TokenCache`` bearer calls use where that token stands now
(a revoked or expired token ends the session at its next request), charges the token's rate
limit, and puts the ``Principal`` where ``api.auth.requires`` looks. The cache and the limiter
are the app's, found in its state (``ConsoleAuth``): Litestar deep-copies a router and all it
holds when it registers one, so a guard holding them would hold copies. Logging in needs any
valid token; each page names the scope it needs with ``requires(...)`` as an API route does.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple, Protocol, runtime_checkable

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from nodeapp.security.ratelimit import RateLimiter
from nodeapp.security.scopes import Principal

SESSION_TOKEN_ID: Final = "token_id"  # the session's key: the id of the token the login verified
CONSOLE_STATE: Final = "orderflow_console"  # the app state's key for ``ConsoleAuth``
AnyRequest = Request[Any, Any, Any]


@runtime_checkable
class SessionVerifier(Protocol):
    """What the console asks the token cache: a token presented at login, and where the token
    a session names stands now (``TokenCache``)."""

    async def verify(self, presented: str | None) -> Principal: ...

    async def standing(self, token_id: str | None) -> Principal: ...


class ConsoleAuth(NamedTuple):
    """What the console checks a token with: the app's token cache and rate limiter."""

    verifier: SessionVerifier
    limiter: RateLimiter


def console_auth(connection: ASGIConnection[Any, Any, Any, Any]) -> ConsoleAuth:
    auth = connection.app.state[CONSOLE_STATE]
    assert isinstance(auth, ConsoleAuth), "create_app puts ConsoleAuth in the app state"
    return auth


async def console_access(
    connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
) -> None:
    """The console pages' guard: the session's token, as it stands now, as ``scope["user"]``."""
    verifier, limiter = console_auth(connection)
    token_id = connection.session.get(SESSION_TOKEN_ID)
    principal = await verifier.standing(token_id if isinstance(token_id, str) else None)
    limiter.take(principal.token_id)
    connection.scope["user"] = principal
