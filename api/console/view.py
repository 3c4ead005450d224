"""What every console page shares: its template's common context (who is logged in, the
pages this token may open, messages left by the last form) and those messages.

A form's handler does its work, leaves a message with ``flash`` and redirects (303) to a page,
which shows it once: reloading that page does not send the form again. The messages live in the
session, under ``FLASH``, next to the token id.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from litestar.response import Template

from api.auth import principal_of
from api.console.access import AnyRequest
from api.paths import CONSOLE_CLUSTER, CONSOLE_DEAD_LETTERS, CONSOLE_ORDERS, CONSOLE_PRODUCTS
from nodeapp.security.scopes import OPS, ORDERS_READ, Principal

FLASH: Final = "flash"
MAX_FLASHES: Final = 5  # a session's messages waiting for a page: the newest few


class NavEntry(NamedTuple):
    """A page in the console's menu, shown to a token with any of ``scopes`` (none: any)."""

    label: str
    path: str
    scopes: tuple[str, ...]


NAV: Final = (
    NavEntry("Orders", CONSOLE_ORDERS, (ORDERS_READ,)),
    NavEntry("Cluster", CONSOLE_CLUSTER, (OPS,)),
    NavEntry("Dead letters", CONSOLE_DEAD_LETTERS, (OPS,)),
    NavEntry("Products", CONSOLE_PRODUCTS, ()),
)


def menu(principal: Principal) -> list[NavEntry]:
    """The pages ``principal`` may open: the others would answer 403."""
    return [entry for entry in NAV if principal.allows(*entry.scopes)]


def flash(request: AnyRequest, message: str, kind: str = "info") -> None:
    """Leave ``message`` for the next page this session opens."""
    waiting = [*_waiting(request), {"kind": kind, "message": message}][-MAX_FLASHES:]
    request.set_session({**request.session, FLASH: waiting})


def _waiting(request: AnyRequest) -> list[dict[str, str]]:
    found = request.session.get(FLASH)
    return found if isinstance(found, list) else []


def render(
    request: AnyRequest,
    template: str,
    context: dict[str, Any] | None = None,
    status: int = 200,
    *,
    fragment: bool = False,
) -> Template:
    """``template`` (under ``console/``) with ``context`` and what every page shows; the
    messages left for this page are shown now and forgotten (not by a ``fragment``, a part of
    a page fetched by its script)."""
    principal = principal_of(request)
    flashes = [] if fragment else _waiting(request)
    if flashes:
        request.set_session({k: v for k, v in request.session.items() if k != FLASH})
    common = {"principal": principal, "menu": menu(principal), "flashes": flashes}
    return Template(
        f"console/{template}", context={**common, **(context or {})}, status_code=status
    )


def can(request: AnyRequest, *scopes: str) -> bool:
    """Whether the request's token holds any of ``scopes``: a page shows a form's button only
    to a token whose request the form's handler would not refuse."""
    return principal_of(request).allows(*scopes)
