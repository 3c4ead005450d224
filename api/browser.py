"""Browser safety for the console (DESIGN part 2, "Security" -> Browser; ADR 0016).

Three pieces, each Litestar's own mechanism, configured strictly:

- ``security_headers``, a ``before_send`` hook (it sees every answer, a middleware's refusal
  included): ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer`` on every
  answer; on the console's (``/console``) also ``CONSOLE_CSP``, ``X-Frame-Options: DENY`` and
  ``Cache-Control: no-store``.
- ``csrf_middleware``: Litestar's CSRF middleware (a double-submit token, HMAC-signed with
  ``ORDERFLOW_SESSION_SECRET``), mounted on the console's router only: a bearer API call carries
  no cookie a forged form could ride on, so it needs no CSRF token.
- ``session_middleware``: Litestar's server-side sessions in the app's memory store; the cookie
  is ``HttpOnly; SameSite=Strict; Path=/console`` and ``Secure`` (``ORDERFLOW_COOKIE_SECURE``).
  ``FreshSessions`` adds what Litestar's backend lacks: a new id at login (no session fixation)
  and nothing stored, no cookie set, for a visitor with an empty session; an ended session's
  cookie expires at once.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any, Final

from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie, MutableScopeHeaders
from litestar.middleware.base import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.middleware.session.server_side import (
    ServerSideSessionBackend,
    ServerSideSessionConfig,
)
from litestar.stores.memory import MemoryStore
from litestar.types import Empty, Message, Scope, ScopeSession

from api.paths import CONSOLE
from nodeapp.core.settings import Settings

log = logging.getLogger("orderflow.api.browser")

SESSION_COOKIE: Final = "orderflow_session"
CSRF_COOKIE: Final = "orderflow_csrf"
CSRF_FIELD: Final = "_csrf_token"  # the form field Litestar's middleware reads
SESSION_SECONDS: Final = 8 * 3600  # then log in again
SESSION_STORE: Final = "console_sessions"  # a name in the app's ``stores``
CONSOLE_CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
EVERY_ANSWER: Final = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}
CONSOLE_ANSWER: Final = {
    "content-security-policy": CONSOLE_CSP,
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
_ROTATE: Final = "orderflow_rotate_session"  # in the request's state: a login is under way
_NEW_ID: Final = "orderflow_new_session_id"


def is_console(path: str) -> bool:
    return path == CONSOLE or path.startswith(CONSOLE + "/")


async def security_headers(message: Message, scope: Scope) -> None:
    """``Litestar(before_send=[security_headers])``: the headers above, on every answer.
    ``async`` though it awaits nothing: Litestar runs a sync hook in a worker thread, twice per
    answer (start and body), which cost the api ~15 % of its CPU under load (ADR 0020)."""
    if message["type"] != "http.response.start":
        return
    headers = MutableScopeHeaders.from_message(message)
    wanted = {**EVERY_ANSWER, **(CONSOLE_ANSWER if is_console(scope["path"]) else {})}
    for name, value in wanted.items():
        headers[name] = value


def session_secret(settings: Settings) -> str:
    """``ORDERFLOW_SESSION_SECRET``, or one for this process alone (said once, in the log)."""
    if settings.session_secret:
        return settings.session_secret
    log.warning(
        "ORDERFLOW_SESSION_SECRET is not set: console forms are signed with a key of this "
        "process alone (a restart, or another api process, refuses them)",
        extra={"event": "api.session_secret_generated"},
    )
    return secrets.token_urlsafe(32)


def expired_csrf_cookie(settings: Settings) -> Cookie:
    """A ``Set-Cookie`` ending the CSRF cookie: the next page gets a fresh token."""
    return Cookie(
        key=CSRF_COOKIE, value="", path=CONSOLE, max_age=0, secure=settings.cookie_secure,
        httponly=True, samesite="strict",
    )  # fmt: skip


def csrf_middleware(settings: Settings, secret: str) -> DefineMiddleware:
    """Litestar's CSRF middleware for the console router: a token cookie scoped to /console,
    which every form echoes in ``CSRF_FIELD`` (templates: ``{{ csrf_input | safe }}``)."""
    config = CSRFConfig(
        secret=secret,
        cookie_name=CSRF_COOKIE,
        cookie_path=CONSOLE,
        cookie_secure=settings.cookie_secure,
        cookie_httponly=True,  # forms carry the token; no script needs to read the cookie
        cookie_samesite="strict",
    )
    return DefineMiddleware(CSRFMiddleware, config=config)


def session_middleware(settings: Settings) -> DefineMiddleware:
    """Litestar's server-side session middleware for the console router."""
    config = FreshSessionConfig(
        key=SESSION_COOKIE,
        path=CONSOLE,
        max_age=SESSION_SECONDS,
        secure=settings.cookie_secure,
        httponly=True,
        samesite="strict",
        store=SESSION_STORE,
    )
    return config.middleware


def start_fresh_session(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """Store this request's session under a new id (call at login): an id a cross-site
    attacker planted before the login never names the logged-in session."""
    connection.scope["state"][_ROTATE] = True


class FreshSessions(ServerSideSessionBackend):
    """Litestar's server-side backend, with a new id at login and nothing kept for nobody.

    Litestar keeps whatever id the browser's cookie names; stores (and sets a cookie for)
    every empty session, so each anonymous visit would cost a store entry for hours; and ends
    a session with a cookie ``null`` that keeps ``Max-Age``. Here an ended session's cookie
    expires at once.
    """

    def get_session_id(self, connection: ASGIConnection[Any, Any, Any, Any]) -> str:
        state = connection.scope["state"]
        if state.get(_ROTATE):
            return str(state.setdefault(_NEW_ID, self.generate_session_id()))
        return super().get_session_id(connection)

    async def store_in_message(
        self,
        scope_session: ScopeSession,
        message: Message,
        connection: ASGIConnection[Any, Any, Any, Any],
    ) -> None:
        presented = connection.cookies.get(self.config.key)
        presented = None if presented == "null" else presented
        store = self.config.get_store_from_app(connection.scope["app"])
        if scope_session is Empty or not scope_session:
            if presented:  # logged out, or a session that ended: forget it on both sides
                await self.delete(presented, store=store)
                expired = Cookie(key=self.config.key, value="", max_age=0, **self._attributes())
                MutableScopeHeaders.from_message(message).add(
                    "set-cookie", expired.to_header(header="")
                )
            return  # nobody: no entry, no cookie
        if connection.scope["state"].get(_ROTATE) and presented:
            await self.delete(presented, store=store)  # the id from before the login
            if isinstance(store, MemoryStore):
                await store.delete_expired()  # logins are rare: a good time to tidy up
        await super().store_in_message(scope_session, message, connection)

    def _attributes(self) -> dict[str, Any]:
        config = self.config
        return {
            "path": config.path, "domain": config.domain, "secure": config.secure,
            "httponly": config.httponly, "samesite": config.samesite,
        }  # fmt: skip


@dataclass
class FreshSessionConfig(ServerSideSessionConfig):
    """``ServerSideSessionConfig`` building ``FreshSessions``."""

    _backend_class = FreshSessions
