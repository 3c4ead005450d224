"""The one place mapping errors to HTTP: every 4xx and 5xx leaves as ``application/problem+json``.

Handlers cover orderflow's error tree, Litestar's own ``HTTPException`` family (the router's
404/405, 413 from the body limit) and anything unexpected (logged, answered 500 without
internals). Controllers raise meaning; they never pick status codes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Final

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ExceptionHandlersMap, Receive, Scope, Send

from api.responses import AnyRequest
from api.schemas import Problem, ProblemFieldError
from nodeapp.core.errors import (
    BrokerUnavailable,
    DeadLetterNotFound,
    Fenced,
    FieldError,
    Forbidden,
    IdempotencyConflict,
    InvalidOrder,
    NodeNotFound,
    NodeUnresponsive,
    NotReplayable,
    OrderFinished,
    OrderflowError,
    OrderNotFound,
    RateLimited,
    ReadModelUnavailable,
    ResourceMissing,
    RevisionConflict,
    TokenNotFound,
    Unauthenticated,
)
from nodeapp.core.shop_errors import (
    GatewayUnavailable,
    HoldConflict,
    OutOfStock,
    PaymentConflict,
    PaymentFenced,
    PaymentNotFound,
    ProductNotFound,
    StockConflict,
    StockContention,
)
from nodeapp.core.signing import BadSignature

log = logging.getLogger("orderflow.api")

PROBLEM_JSON: Final = "application/problem+json"
BEARER: Final = {"WWW-Authenticate": "Bearer"}
PROBLEM_BASE: Final = "https://orderflow.dev/problems/"
# Stable problem types clients can switch on; other statuses use "about:blank" (RFC 9457 §4.2).
_TYPES: Final = {
    400: "malformed-request",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "body-too-large",
    415: "unsupported-media-type",
    422: "validation",
    500: "internal-error",
    502: "bad-gateway",
    503: "unavailable",
    504: "gateway-timeout",
}
_encoder: Final = msgspec.json.Encoder()


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a status http.HTTPStatus does not list
        return "Client Error" if status < 500 else "Server Error"


def problem_type(status: int, name: str | None = None) -> str:
    name = name or _TYPES.get(status)
    return PROBLEM_BASE + name if name else "about:blank"


def problem_response(
    request: AnyRequest,
    status: int,
    detail: str,
    *,
    type_: str | None = None,
    errors: list[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response[bytes]:
    problem = Problem(
        type=type_ or problem_type(status),
        title=_title(status),
        status=status,
        detail=detail,
        instance=request.scope.get("path"),
        errors=[ProblemFieldError(e.field, e.message) for e in errors] if errors else None,
    )
    return Response(
        content=_encoder.encode(problem),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=dict(headers) if headers else None,
    )


def _broker_unavailable(request: AnyRequest, exc: BrokerUnavailable) -> Response[bytes]:
    # Debug, not warning: during an outage every request lands here; broker.py already logs
    # the disconnect and reconnect once each.
    log.debug("answered 503: %s", exc, extra={"event": "api.broker_unavailable"})
    return problem_response(
        request,
        503,
        f"the order broker is unavailable, retry shortly ({exc})",
        type_=problem_type(503, "broker-unavailable"),
        headers={"Retry-After": "1"},
    )


def _order_not_found(request: AnyRequest, exc: OrderNotFound) -> Response[bytes]:
    return problem_response(request, 404, str(exc))


def _node_not_found(request: AnyRequest, exc: NodeNotFound) -> Response[bytes]:
    return problem_response(request, 404, str(exc))


def _dead_letter_not_found(request: AnyRequest, exc: DeadLetterNotFound) -> Response[bytes]:
    return problem_response(request, 404, str(exc))


def _not_replayable(request: AnyRequest, exc: NotReplayable) -> Response[bytes]:
    return problem_response(request, 409, str(exc), type_=problem_type(409, "not-replayable"))


def _node_unresponsive(request: AnyRequest, exc: NodeUnresponsive) -> Response[bytes]:
    return problem_response(
        request, exc.status, str(exc), type_=problem_type(exc.status, "node-unresponsive")
    )


def _resource_missing(request: AnyRequest, exc: ResourceMissing) -> Response[bytes]:
    log.warning("answered 503: %s", exc, extra={"event": "api.resource_missing"})
    return problem_response(
        request,
        503,
        str(exc),
        type_=problem_type(503, "resource-missing"),
        headers={"Retry-After": "5"},
    )


def _idempotency_conflict(request: AnyRequest, exc: IdempotencyConflict) -> Response[bytes]:
    return problem_response(
        request,
        422,
        str(exc),
        type_=problem_type(422, "idempotency-conflict"),
        errors=[FieldError("Idempotency-Key", "was used with a different request body")],
    )


def _invalid_order(request: AnyRequest, exc: InvalidOrder) -> Response[bytes]:
    detail = "the request is invalid: " + "; ".join(f"{e.field} {e.message}" for e in exc.errors)
    return problem_response(request, exc.status, detail, errors=exc.errors)


def _answer(
    status: int, name: str | None = None, retry_after: str | None = None
) -> Callable[[AnyRequest, OrderflowError], Response[bytes]]:
    """A handler answering ``status`` with the error's own message as the detail (every
    error of the tree says what went wrong, and never a secret)."""
    headers = {"Retry-After": retry_after} if retry_after else None

    def handler(request: AnyRequest, exc: OrderflowError) -> Response[bytes]:
        return problem_response(
            request, status, str(exc), type_=problem_type(status, name), headers=headers
        )

    return handler


def _bad_signature(request: AnyRequest, exc: BadSignature) -> Response[bytes]:
    """A refused signed callback is worth a line: a misconfigured secret or a forgery."""
    log.warning("signed request refused: %s", exc, extra={"event": "api.bad_signature"})
    return problem_response(
        request, 401, f"refused: {exc}", type_=problem_type(401, "bad-signature")
    )


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


AUTH_EXCEPTION_HANDLERS: Final[ExceptionHandlersMap] = {
    Unauthenticated: _unauthenticated,
    Forbidden: _forbidden,
    RateLimited: _rate_limited,
    TokenNotFound: _answer(404),
}
"""The bearer-token answers (``api.auth``): 401 with ``WWW-Authenticate: Bearer``, 403, 429
with ``Retry-After``; part of ``EXCEPTION_HANDLERS``, and on their own for an app that is only
testing the auth machinery."""


def _orderflow_error(request: AnyRequest, exc: OrderflowError) -> Response[bytes]:
    log.error("unmapped orderflow error: %s", exc, exc_info=exc)
    return problem_response(request, 500, "internal error")


def _validation_errors(exc: ValidationException) -> list[FieldError]:
    """Litestar's ``extra`` is a list of ``{"key", "message"}`` dicts (path or query params)."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    return [
        FieldError(str(item.get("key") or "request"), str(item.get("message", "is invalid")))
        for item in extra
        if isinstance(item, dict)
    ]


def _http_exception(request: AnyRequest, exc: HTTPException) -> Response[bytes]:
    if exc.status_code >= 500:
        log.error("answered %d: %s", exc.status_code, exc.detail, exc_info=exc)
    errors = _validation_errors(exc) if isinstance(exc, ValidationException) else None
    detail = exc.detail
    if detail == _title(exc.status_code):  # Litestar's bare default: say more
        detail = f"{detail}: {request.method} {request.scope.get('path')}"
    return problem_response(request, exc.status_code, detail, errors=errors, headers=exc.headers)


def _unexpected(request: AnyRequest, exc: Exception) -> Response[bytes]:
    log.exception(
        "unhandled error in %s %s", request.method, request.scope.get("path"), exc_info=exc
    )
    return problem_response(request, 500, "internal error")


EXCEPTION_HANDLERS: Final[ExceptionHandlersMap] = {
    BrokerUnavailable: _broker_unavailable,
    OrderNotFound: _order_not_found,
    NodeNotFound: _node_not_found,
    NodeUnresponsive: _node_unresponsive,
    DeadLetterNotFound: _dead_letter_not_found,
    NotReplayable: _not_replayable,
    OrderFinished: _answer(409, "order-finished"),
    RevisionConflict: _answer(503, "order-busy", retry_after="1"),
    ResourceMissing: _resource_missing,
    IdempotencyConflict: _idempotency_conflict,
    InvalidOrder: _invalid_order,
    ReadModelUnavailable: _answer(503, "read-model-unavailable", retry_after="1"),
    # The shop's (ADR 0010).
    ProductNotFound: _answer(404),
    StockConflict: _answer(409, "stock-conflict"),
    StockContention: _answer(503, "stock-contention", retry_after="1"),
    OutOfStock: _answer(409, "out-of-stock"),
    HoldConflict: _answer(409, "hold-conflict"),
    Fenced: _answer(409, "fenced"),
    PaymentFenced: _answer(409, "payment-fenced"),
    PaymentNotFound: _answer(404),
    PaymentConflict: _answer(409, "payment-conflict"),
    GatewayUnavailable: _answer(503, "gateway-unavailable", retry_after="1"),
    BadSignature: _bad_signature,
    **AUTH_EXCEPTION_HANDLERS,
    OrderflowError: _orderflow_error,
    HTTPException: _http_exception,
    Exception: _unexpected,
}


async def send_problem(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
    """Answer ``exc`` as its handler says, from inside a middleware: for an error a middleware
    raises itself, which Litestar would otherwise answer only outside every middleware (so the
    metrics middleware would have seen an exception, and counted a 500)."""
    route_handler = scope.get("route_handler")
    handlers: ExceptionHandlersMap = (
        route_handler.resolve_exception_handlers()
        if isinstance(route_handler, BaseRouteHandler)
        else EXCEPTION_HANDLERS
    )
    handler = next((handlers[c] for c in type(exc).__mro__ if c in handlers), _unexpected)
    request: AnyRequest = Request(scope, receive, send)
    response = handler(request, exc)
    await response.to_asgi_response(app=None, request=request)(scope, receive, send)
