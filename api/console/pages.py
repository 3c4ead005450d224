"""The console's pages: the login, the home page, the logout, and ``PAGES``, every page behind
the login (``console_access``), each with its own ``requires(...)`` guard when it needs a scope.

A page renders a template under ``api/templates/console/`` extending ``base.html``
(``api.console.view.render``); every form carries ``{{ csrf_input | safe }}``, and the CSRF
middleware refuses a POST without it. The pages themselves live by subject: ``orders``
(the list, an order's live timeline, cancel), ``operations`` (cluster and drain, dead letters
and replay), ``catalog`` (products and stock).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Final

import msgspec
from litestar import Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template

from api.browser import start_fresh_session
from api.console.access import SESSION_TOKEN_ID, AnyRequest, console_auth
from api.console.catalog import CATALOG_PAGES
from api.console.operations import OPERATIONS_PAGES
from api.console.orders import ORDER_PAGES
from api.console.view import render
from api.paths import CONSOLE_HOME, CONSOLE_LOGIN, CONSOLE_LOGOUT
from nodeapp.core.errors import Unauthenticated

log = logging.getLogger("orderflow.api.console")


class LoginForm(msgspec.Struct):
    """The login form's fields (its CSRF field is the middleware's, not read here)."""

    token: str = ""


def _login_page(error: str | None = None, status: int = 200) -> Template:
    return Template("console/login.html", context={"error": error}, status_code=status)


@get(CONSOLE_LOGIN, sync_to_thread=False)
def login_page() -> Template:
    return _login_page()


@post(CONSOLE_LOGIN)
async def log_in(
    request: AnyRequest,
    data: Annotated[LoginForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[Any]:
    """A valid token (any scope) starts a session under a new id, keeping the token's id (not
    the token); any other is a 401 page and stores nothing."""
    try:
        principal = await console_auth(request).verifier.verify(data.token.strip() or None)
    except Unauthenticated as exc:
        log.info(
            "console login refused: token %s", exc.reason,
            extra={"event": "console.login_refused", "reason": exc.reason},
        )  # fmt: skip
        return _login_page("That token is not valid (unknown, expired or revoked).", 401)
    start_fresh_session(request)
    request.set_session({SESSION_TOKEN_ID: principal.token_id})
    log.info(
        "console login by token %s", principal.token_id,
        extra={"event": "console.login", "token_id": principal.token_id},
    )  # fmt: skip
    return Redirect(CONSOLE_HOME, status_code=303)


@post(CONSOLE_LOGOUT, status_code=303)
async def log_out(request: AnyRequest) -> Redirect:
    request.clear_session()
    return Redirect(CONSOLE_LOGIN, status_code=303)


@get(CONSOLE_HOME, sync_to_thread=False)
def home(request: AnyRequest) -> Template:
    """Who is logged in, and the pages this token may open."""
    return render(request, "home.html")


PAGES: Final = [home, *ORDER_PAGES, *OPERATIONS_PAGES, *CATALOG_PAGES]  # behind the login
PUBLIC: Final = [login_page, log_in, log_out]
