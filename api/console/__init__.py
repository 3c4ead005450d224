"""The browser console's router: its pages behind a session login, its browser safety
(``api.browser``), its refusals as pages (``api.console.access``).

``console_router`` builds it per app: the session and CSRF middleware and the HTML error
handlers apply to ``/console`` only, and ``console_access`` guards every page in ``PAGES``.
The bearer middleware skips ``/console`` (``api.auth.EXEMPT_PATHS``): a page authenticates by
its session, never by an ``Authorization`` header. The app's state holds the ``ConsoleAuth``
(token cache, rate limiter) the guard and the login use.
"""

from __future__ import annotations

from litestar import Router

from api.browser import csrf_middleware, session_middleware
from api.console.access import (
    CONSOLE_STATE,
    ConsoleAuth,
    console_access,
    console_exception_handlers,
)
from api.console.pages import PAGES, PUBLIC
from api.options import options_handlers
from nodeapp.core.settings import Settings

__all__ = ["CONSOLE_STATE", "ConsoleAuth", "console_router"]


def console_router(settings: Settings, secret: str) -> Router:
    """The console; ``secret`` signs its forms' CSRF tokens."""
    behind_login = Router(path="/", route_handlers=PAGES, guards=[console_access])
    return Router(
        path="/",
        route_handlers=[*options_handlers([*PUBLIC, *PAGES]), *PUBLIC, behind_login],
        middleware=[session_middleware(settings), csrf_middleware(settings, secret)],
        exception_handlers=console_exception_handlers(settings),
        include_in_schema=False,
    )
