"""``POST /orders`` and ``GET /orders/{order_id}``: the submit path is kept lean on purpose.

The body is read raw and checked by ``nodeapp.orders.requests`` (one pre-built msgspec decoder,
no per-request parsing layer), priced from the catalog cache in memory
(``nodeapp.shop.checkout``), the answer is encoded once, and the store is not read again after
a submit.
"""

from __future__ import annotations

from litestar import Response, get, post
from litestar.datastructures import ResponseHeader

from api.auth import check_customer, requires, visible_to
from api.broker_link import broker_link
from api.paths import ORDER, ORDERS, order_location
from api.responses import AnyRequest, json_response
from api.routes.openapi import (
    BEARER,
    BROKER_DOWN,
    IdempotencyKey,
    OrderId,
    guarded,
    json_spec,
    lookup_responses,
    problem_spec,
    raw_json_body,
)
from api.schemas import SubmitResponse, checked_idempotency_key, require_json
from nodeapp.core.errors import OrderNotFound
from nodeapp.orders.model import Order, is_order_id
from nodeapp.orders.requests import (
    IDEMPOTENCY_KEY,
    MAX_BODY_BYTES,
    OrderRequest,
    decode_order_request,
)
from nodeapp.security.scopes import ORDERS_READ, ORDERS_WRITE
from nodeapp.shop.checkout import price_items


@post(
    ORDERS,
    status_code=202,
    guards=[requires(ORDERS_WRITE)],
    security=BEARER,
    request_max_body_size=MAX_BODY_BYTES,
    operation_class=raw_json_body(OrderRequest, "The order; unknown fields are refused"),
    summary="Submit an order",
    description=(
        "Prices the items at the catalog's prices (every product must exist and be active; "
        "an `amount`, when given, must equal the total), stores the order with each item's "
        "`unit_price` and the total as `amount`, and queues it for processing; poll the "
        f"Location. With an {IDEMPOTENCY_KEY} header (1-255 visible ASCII characters) a retry "
        "returns the original order (header Idempotent-Replayed: true). Needs scope "
        "`orders:write`; a token bound to a customer may submit only that customer's orders."
    ),
    response_headers=[
        ResponseHeader(
            name="Location", description=order_location("{order_id}"), documentation_only=True
        )
    ],
    responses=guarded(
        {
            202: json_spec(SubmitResponse, "Accepted"),
            400: problem_spec("Malformed JSON, or a bad Idempotency-Key"),
            403: problem_spec("The token lacks orders:write, or acts for another customer"),
            413: problem_spec("Body over 64 KiB"),
            415: problem_spec("Content-Type is not application/json"),
            422: problem_spec(
                "Invalid fields (an unknown or inactive items[i].product_id, an amount other than "
                "the total), or an Idempotency-Key reused with another body"
            ),
            503: BROKER_DOWN,
        },
        ORDERS_WRITE,
    ),
)
async def submit_order(
    request: AnyRequest, idempotency_key: IdempotencyKey = None
) -> Response[bytes]:
    link = broker_link(request)
    require_json(request.content_type)
    key = checked_idempotency_key(idempotency_key)
    order_request = decode_order_request(
        await request.body(), fault_injection=link.settings.fault_injection
    )
    check_customer(request, order_request.customer_id)  # before anything is read or written
    # Priced before anything is written: an unknown product or a wrong amount stores nothing.
    priced = await price_items(order_request.items, order_request.amount, link.prices().find)
    result = await link.intake().submit(order_request, key, priced=priced)
    order = result.order
    headers = {"Location": order_location(order.order_id)}
    if not result.created:
        headers["Idempotent-Replayed"] = "true"
    body = SubmitResponse(order.order_id, order.status, order.start_time)
    return json_response(body, status_code=202, headers=headers)


@get(
    ORDER,
    guards=[requires(ORDERS_READ)],
    security=BEARER,
    summary="Read an order",
    description="The order document: status, every step with its times, failure, owner.",
    responses=guarded(lookup_responses(Order, "The order document", "No such order"), ORDERS_READ),
)
async def get_order(request: AnyRequest, order_id: OrderId) -> Response[bytes]:
    return json_response(await readable_order(request, order_id))


async def readable_order(request: AnyRequest, order_id: str) -> Order:
    """The order as stored, if the request's token may see it; ``OrderNotFound`` otherwise (an
    id that is not an order id, no such order, or another customer's: all alike)."""
    if not is_order_id(order_id):
        raise OrderNotFound(order_id)  # not an order id: cannot be an order either
    order = await broker_link(request).store().get(order_id)
    if not visible_to(request, order.customer_id):
        raise OrderNotFound(order_id)  # another customer's order: as if there were none
    return order
