"""The browser console's router: its pages behind a session login, its browser safety
(``api.browser``), its refusals as pages (``api.console.refusals``), its stylesheet and script.

``console_router`` builds it per app: the session and CSRF middleware and the HTML error
handlers apply to ``/console`` only, and ``console_access`` guards every page in ``PAGES``.
The bearer middleware skips ``/console`` (``api.auth.EXEMPT_PATHS``): a page authenticates by
its session, never by an ``Authorization`` header. The app's state holds the ``ConsoleAuth``
(token cache, rate limiter) the guard and the login use. The static files (``api/static/
console``) are served from here, 'self' for the Content-Security-Policy, to anyone: they hold
nothing but the look and the live timeline's script.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from litestar import Router
from litestar.static_files import create_static_files_router

from api.browser import csrf_middleware, session_middleware
from api.console.access import CONSOLE_STATE, ConsoleAuth, console_access
from api.console.pages import PAGES, PUBLIC
from api.console.refusals import console_exception_handlers
from api.options import options_handlers
from api.paths import CONSOLE_STATIC
from nodeapp.core.settings import Settings

__all__ = ["CONSOLE_STATE", "STATIC", "ConsoleAuth", "console_router"]

STATIC: Final = Path(__file__).parent.parent / "static" / "console"


def console_router(settings: Settings, secret: str) -> Router:
    """The console; ``secret`` signs its forms' CSRF tokens."""
    behind_login = Router(path="/", route_handlers=PAGES, guards=[console_access])
    static = create_static_files_router(
        path=CONSOLE_STATIC, directories=[STATIC], name="console_static"
    )
    return Router(
        path="/",
        route_handlers=[*options_handlers([*PUBLIC, *PAGES]), *PUBLIC, behind_login, static],
        middleware=[session_middleware(settings), csrf_middleware(settings, secret)],
        exception_handlers=console_exception_handlers(settings),
        include_in_schema=False,
    )
