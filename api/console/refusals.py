"""The console's refusals as pages, not problem documents (``console_exception_handlers``).

No session, or a token no longer valid, goes back to the login; a missing scope, a failed CSRF
check or a rate limit is an HTML page saying so. Every other error is answered as the API
answers it (``api.problems``, the one place mapping errors to statuses), its problem document
shown as a page: the same status, detail and fields, the same ``Retry-After``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Final

import msgspec
from litestar import Response
from litestar.exceptions import PermissionDeniedException
from litestar.response import Redirect, Template
from litestar.types import ExceptionHandlersMap

from api.browser import expired_csrf_cookie
from api.console.access import AnyRequest
from api.paths import CONSOLE_LOGIN
from api.problems import EXCEPTION_HANDLERS
from api.schemas import Problem, ProblemFieldError
from nodeapp.core.errors import BrokerUnavailable, Forbidden, RateLimited, Unauthenticated
from nodeapp.core.settings import Settings

log = logging.getLogger("orderflow.api.console")

KEPT_HEADERS: Final = ("retry-after",)  # of the API's answer, on the page too
_problem_decoder: Final = msgspec.json.Decoder(Problem)
PageHandler = Callable[[AnyRequest, Any], Response[Any]]


def error_page(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    errors: list[ProblemFieldError] | None = None,
) -> Template:
    return Template(
        template_name="console/error.html",
        context={"status": status, "message": message, "errors": errors or []},
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


def as_page(api_handler: PageHandler) -> PageHandler:
    """``api_handler``'s answer (a problem document) as an error page."""

    def page(request: AnyRequest, exc: Any) -> Response[Any]:
        answer = api_handler(request, exc)
        problem = _problem_decoder.decode(answer.content)
        kept = {k: v for k, v in answer.headers.items() if k.lower() in KEPT_HEADERS}
        return error_page(problem.status, problem.detail, kept or None, problem.errors)

    return page


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

    # Every class the API maps, mapped here too: Litestar picks the most specific class of
    # the merged maps, so the API's ``OrderNotFound`` would beat a console ``OrderflowError``.
    pages: ExceptionHandlersMap = {cls: as_page(h) for cls, h in EXCEPTION_HANDLERS.items()}
    return {
        **pages,
        Unauthenticated: _to_login,
        Forbidden: _forbidden,
        PermissionDeniedException: csrf_failed,
        RateLimited: _rate_limited,
        BrokerUnavailable: _broker_unavailable,
    }
