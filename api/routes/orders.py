"""``POST /orders`` and ``GET /orders/{order_id}``: the submit path is kept lean on purpose.

The body is read raw and decoded by one pre-built msgspec decoder (no per-request parsing layer),
the answer is encoded once, and the store is not read again after a submit.
"""

from __future__ import annotations

import re
from typing import Any, Final

from litestar import Request, Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.di import Provide
from litestar.params import FromPath

from api.broker_link import broker_link
from api.routes.openapi import BROKER_DOWN, json_spec, problem_spec
from api.schemas import (
    IDEMPOTENCY_HEADER,
    MAX_BODY_BYTES,
    SubmitResponse,
    decode_order_request,
    idempotency_key,
    require_json,
)
from nodeapp.core.errors import OrderNotFound
from nodeapp.orders.intake import OrderRequest
from nodeapp.orders.model import ORDER_ID_PATTERN, Order, encode

_ORDER_ID: Final = re.compile(ORDER_ID_PATTERN)
JSON: Final = "application/json"


def _document_request_body(data: OrderRequest) -> None:
    """Never called. ``submit_order`` decodes the raw body itself, but Litestar documents a
    route's request body from a ``data`` parameter, which a route dependency may carry; an
    unrequested dependency is never resolved."""
    raise NotImplementedError


@post(
    "/orders",
    status_code=202,
    request_max_body_size=MAX_BODY_BYTES,
    dependencies={"_request_body": Provide(_document_request_body, sync_to_thread=False)},
    summary="Submit an order",
    description=(
        "Stores the order and queues it for processing; poll the Location. With an "
        f"{IDEMPOTENCY_HEADER} header (1-255 visible ASCII characters) a retry returns the "
        "original order (header Idempotent-Replayed: true)."
    ),
    response_headers=[
        ResponseHeader(name="Location", description="/orders/{order_id}", documentation_only=True)
    ],
    responses={
        202: json_spec(SubmitResponse, "Accepted"),
        400: problem_spec("Malformed JSON, or a bad Idempotency-Key"),
        413: problem_spec("Body over 64 KiB"),
        415: problem_spec("Content-Type is not application/json"),
        422: problem_spec("Invalid fields, or an Idempotency-Key reused with another body"),
        503: BROKER_DOWN,
    },
)
async def submit_order(request: Request[Any, Any, Any]) -> Response[bytes]:
    link = broker_link(request)
    require_json(request.content_type)
    key = idempotency_key(request.headers)
    order_request = decode_order_request(
        await request.body(), fault_injection=link.settings.fault_injection
    )
    result = await link.intake().submit(order_request, key)
    order = result.order
    headers = {"Location": f"/orders/{order.order_id}"}
    if not result.created:
        headers["Idempotent-Replayed"] = "true"
    body = SubmitResponse(order.order_id, order.status, order.start_time)
    return Response(encode(body), status_code=202, media_type=JSON, headers=headers)


@get(
    "/orders/{order_id:str}",
    summary="Read an order",
    description="The order document: status, every step with its times, failure, owner.",
    responses={
        200: json_spec(Order, "The order document"),
        404: problem_spec("No such order"),
        503: BROKER_DOWN,
    },
)
async def get_order(request: Request[Any, Any, Any], order_id: FromPath[str]) -> Response[bytes]:
    if not _ORDER_ID.fullmatch(order_id):
        raise OrderNotFound(order_id)  # not an order id: cannot be an order either
    order = await broker_link(request).store().get(order_id)
    return Response(encode(order), media_type=JSON)
