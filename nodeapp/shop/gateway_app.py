"""The simulated gateway's HTTP surface: a Litestar ``Router`` the api mounts under
``/sim/payments``, or ``create_gateway_app`` for ``orderflow payments`` (standalone, at ``/``).

::

    POST /authorize               {order_id, amount, token, epoch, callback_url} -> 202 entry
    POST /{payment_id}/capture    {epoch} -> 200 entry
    POST /{payment_id}/void       {epoch} -> 200 entry
    POST /{payment_id}/refund     {epoch} -> 200 entry
    GET  /{payment_id}            the ledger entry (tests and operators)

Errors are problem+json: 404 unknown payment, 409 ``payment-fenced`` (a lower epoch than the
highest seen) or ``payment-conflict`` (an impossible transition), 422 a bad body, 503 the
ledger unreachable. The gateway stands for a third party's service, so it shapes its own
answers here and the routes stay out of the api's OpenAPI document.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any, Final

import msgspec
from litestar import Litestar, Request, Response, Router, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.types import ExceptionHandlersMap
from nats.js.kv import KeyValue

from nodeapp.broker.connection import connection, jetstream
from nodeapp.core.errors import BrokerUnavailable
from nodeapp.core.settings import Settings
from nodeapp.core.shop_errors import (
    GatewayUnavailable,
    InvalidPaymentMessage,
    PaymentConflict,
    PaymentFenced,
    PaymentNotFound,
)
from nodeapp.orders.model import is_order_id
from nodeapp.shop.gateway import Gateway
from nodeapp.shop.gateway_ledger import LedgerEntry
from nodeapp.shop.payment_messages import (
    AUTHORIZE,
    CONFLICT_PROBLEM,
    FENCED_PROBLEM,
    MAX_BODY_BYTES,
    PAYMENT,
    PROBLEM_BASE,
    SIM_PREFIX,
    decode_authorize,
    decode_epoch,
    encode,
)
from nodeapp.shop.payment_resources import ensure_gateway_bucket

log = logging.getLogger("orderflow.gateway")

AnyRequest = Request[Any, Any, Any]
PROBLEM_JSON: Final = "application/problem+json"
CONNECT_WITHIN: Final = 30.0  # seconds ``orderflow payments`` waits for the broker at start


def _json(entry: LedgerEntry, status: int = 200) -> Response[bytes]:
    return Response(encode(entry), status_code=status, media_type="application/json")


def _problem(
    request: AnyRequest, status: int, detail: str, type_: str = "about:blank", **extra: Any
) -> Response[bytes]:
    body = {
        "type": type_, "title": HTTPStatus(status).phrase, "status": status, "detail": detail,
        "instance": request.url.path, **extra,
    }  # fmt: skip
    headers = {"Retry-After": "1"} if status == 503 else None
    return Response(
        msgspec.json.encode(body), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def _fenced(request: AnyRequest, exc: PaymentFenced) -> Response[bytes]:
    return _problem(request, 409, str(exc), FENCED_PROBLEM, epoch=exc.epoch, current=exc.current)


def _conflict(request: AnyRequest, exc: PaymentConflict) -> Response[bytes]:
    return _problem(request, 409, str(exc), CONFLICT_PROBLEM)


def _not_found(request: AnyRequest, exc: PaymentNotFound) -> Response[bytes]:
    return _problem(request, 404, str(exc), PROBLEM_BASE + "not-found")


def _invalid(request: AnyRequest, exc: InvalidPaymentMessage) -> Response[bytes]:
    errors = [{"field": e.field, "message": e.message} for e in exc.errors]
    return _problem(request, exc.status, str(exc), PROBLEM_BASE + "validation", errors=errors)


def _unavailable(
    request: AnyRequest, exc: GatewayUnavailable | BrokerUnavailable
) -> Response[bytes]:
    log.debug("answered 503: %s", exc, extra={"event": "gateway.unavailable"})
    return _problem(request, 503, str(exc), PROBLEM_BASE + "unavailable")


PAYMENT_ERRORS: Final[ExceptionHandlersMap] = {
    PaymentFenced: _fenced,
    PaymentConflict: _conflict,
    PaymentNotFound: _not_found,
    InvalidPaymentMessage: _invalid,
    GatewayUnavailable: _unavailable,
}


def _payment_id(payment_id: str) -> str:
    if not is_order_id(payment_id):  # payment id = order id: anything else names nothing
        raise PaymentNotFound(payment_id)
    return payment_id


def gateway_router(gateway: Gateway, path: str = SIM_PREFIX) -> Router:
    """The gateway's routes under ``path``; the hosting app enters ``gateway.lifespan``."""

    @post(AUTHORIZE, status_code=202, request_max_body_size=MAX_BODY_BYTES)
    async def authorize(request: AnyRequest) -> Response[bytes]:
        entry = await gateway.authorize(decode_authorize(await request.body()))
        return _json(entry, 202)

    @post(PAYMENT + "/capture", status_code=200, request_max_body_size=MAX_BODY_BYTES)
    async def capture(request: AnyRequest, payment_id: FromPath[str]) -> Response[bytes]:
        epoch = decode_epoch(await request.body()).epoch
        return _json(await gateway.capture(_payment_id(payment_id), epoch))

    @post(PAYMENT + "/void", status_code=200, request_max_body_size=MAX_BODY_BYTES)
    async def void(request: AnyRequest, payment_id: FromPath[str]) -> Response[bytes]:
        epoch = decode_epoch(await request.body()).epoch
        return _json(await gateway.void(_payment_id(payment_id), epoch))

    @post(PAYMENT + "/refund", status_code=200, request_max_body_size=MAX_BODY_BYTES)
    async def refund(request: AnyRequest, payment_id: FromPath[str]) -> Response[bytes]:
        epoch = decode_epoch(await request.body()).epoch
        return _json(await gateway.refund(_payment_id(payment_id), epoch))

    @get(PAYMENT)
    async def read(payment_id: FromPath[str]) -> Response[bytes]:
        return _json(await gateway.get(_payment_id(payment_id)))

    return Router(
        path=path,
        route_handlers=[authorize, capture, void, refund, read],
        exception_handlers=PAYMENT_ERRORS,
        include_in_schema=False,
    )


def _http_error(request: AnyRequest, exc: HTTPException) -> Response[bytes]:
    return _problem(request, exc.status_code, str(exc.detail))


def _unexpected(request: AnyRequest, exc: Exception) -> Response[bytes]:
    log.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return _problem(request, 500, "internal error")


def create_gateway_app(settings: Settings) -> Litestar:
    """``orderflow payments``: the gateway alone, at the root of ``ORDERFLOW_PAYMENT_URL``, on
    its own broker connection (opened at start, drained at exit)."""
    ledger: list[KeyValue] = []

    async def ledger_bucket() -> KeyValue:
        if not ledger:
            raise GatewayUnavailable("not connected to the broker yet", status=503)
        return ledger[0]

    gateway = Gateway(settings, ledger_bucket)

    @contextlib.asynccontextmanager
    async def broker(_app: Litestar) -> AsyncIterator[None]:
        async with connection(settings, "orderflow-payments", within=CONNECT_WITHIN) as nc:
            ledger.append(await ensure_gateway_bucket(jetstream(nc, settings), settings))
            yield

    return Litestar(
        route_handlers=[gateway_router(gateway, "/")],
        lifespan=[broker, gateway.lifespan],
        exception_handlers={
            BrokerUnavailable: _unavailable,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
        logging_config=None,
    )
