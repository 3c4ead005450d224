"""``GET /orders``: list and search orders, from the read model (``api.read_side``), never the
broker, so a list costs one local index walk and still answers while the broker is away.

Parameters are taken as the query string has them (text) and checked by
``nodeapp.readmodel.params``, which names every bad one at once (422). An empty parameter is
the same as an absent one (``?status=&customer_id=c-1``, as a plain HTML form sends it); one
given twice is refused rather than one of its values picked.

A token bound to a customer (``--customer C``) lists only C's orders: the customer filter is
forced to C, and a request naming another customer gets an empty page, exactly as a customer
with no orders would (it cannot learn whether another customer has any).
"""

from __future__ import annotations

from typing import Annotated, Final

from litestar import Response, get
from litestar.openapi.spec import OpenAPIFormat, OpenAPIType
from litestar.params import Parameter

from api.auth import customer_of, requires
from api.paths import ORDERS
from api.read_side import read_side
from api.responses import AnyRequest, json_response
from api.routes.openapi import (
    BEARER,
    MALFORMED,
    OPTIONAL_STRING,
    BlankIsAbsent,
    guarded,
    json_spec,
    problem_spec,
)
from nodeapp.core.errors import FieldError, InvalidOrder
from nodeapp.orders.requests import NAME_PATTERN
from nodeapp.readmodel.params import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    STATUSES,
    TIME_RULE,
    UTC_TIME_PATTERN,
    list_query,
)
from nodeapp.readmodel.queries import OrderPage
from nodeapp.security.scopes import ORDERS_READ

PARAMETERS: Final = (
    "status", "customer_id", "product_id", "created_after", "created_before", "limit", "cursor",
)  # fmt: skip
READ_MODEL_DOWN: Final = problem_spec(
    "The read model is not open yet (it opens once the broker is reachable), or its file "
    "cannot be opened; retry after Retry-After seconds"
)
Text = str | None
# Each parameter's values as the document states them (schemathesis checks the api takes all of
# them and refuses the rest); ``BlankIsAbsent`` adds that each may be empty, meaning absent.
NAME_SCHEMA: Final = {**OPTIONAL_STRING, "pattern": NAME_PATTERN, "maxLength": 64}
UTC_TIME: Final = {  # the pattern is the shape, ``date-time`` the calendar (no 2025-02-30)
    **OPTIONAL_STRING,
    "pattern": UTC_TIME_PATTERN,
    "format": OpenAPIFormat.DATE_TIME,
}
LIMIT: Final = {
    "type": OpenAPIType.INTEGER,
    "oneOf": None,
    "minimum": 1,
    "maximum": MAX_LIMIT,
    "default": DEFAULT_LIMIT,
}


@get(
    ORDERS,
    guards=[requires(ORDERS_READ)],
    security=BEARER,
    operation_class=BlankIsAbsent,
    summary="List and search orders",
    description=(
        "Orders newest first (by `start_time`, the submit time; ties by `order_id`), filtered "
        "by any combination of the parameters, `limit` per page; pass `next_cursor` back as "
        "`cursor` for the next page (null after the last). Paging never repeats or skips an "
        "order, whatever changes meanwhile. Served from the api's read model: a change to an "
        "order shows within about a second (`/readyz` reports the lag). A token bound to a "
        "customer lists only that customer's orders (naming another customer gives an empty "
        "page). Needs scope `orders:read`."
    ),
    responses=guarded(
        {
            200: json_spec(OrderPage, "A page of orders"),
            400: MALFORMED,
            422: problem_spec("A bad parameter; `errors` names each one"),
            503: READ_MODEL_DOWN,
        },
        ORDERS_READ,
    ),
)
async def list_orders(
    request: AnyRequest,
    status: Annotated[
        Text,
        Parameter(
            description=f"one of {', '.join(sorted(STATUSES))}",
            schema_extra={**OPTIONAL_STRING, "enum": sorted(STATUSES)},
        ),
    ] = None,
    customer_id: Annotated[
        Text, Parameter(description="only this customer's orders", schema_extra=NAME_SCHEMA)
    ] = None,
    product_id: Annotated[
        Text, Parameter(description="only orders with this product", schema_extra=NAME_SCHEMA)
    ] = None,
    created_after: Annotated[
        Text,
        Parameter(description=f"submitted strictly after; {TIME_RULE}", schema_extra=UTC_TIME),
    ] = None,
    created_before: Annotated[
        Text,
        Parameter(description=f"submitted strictly before; {TIME_RULE}", schema_extra=UTC_TIME),
    ] = None,
    limit: Annotated[
        Text,
        Parameter(
            description=f"orders per page, 1-{MAX_LIMIT} (default {DEFAULT_LIMIT})",
            schema_extra=LIMIT,
        ),
    ] = None,
    cursor: Annotated[
        Text,
        Parameter(description="next_cursor of the page before", schema_extra=OPTIONAL_STRING),
    ] = None,
) -> Response[bytes]:
    given_once(request, PARAMETERS)
    params = {
        "status": status,
        "customer_id": customer_id,
        "product_id": product_id,
        "created_after": created_after,
        "created_before": created_before,
        "limit": limit,
        "cursor": cursor,
    }
    return json_response(await orders_page(request, params))


async def orders_page(request: AnyRequest, params: dict[str, str | None]) -> OrderPage:
    """The page of orders ``params`` (``PARAMETERS``, as text, empty = absent) ask for, as the
    request's token may see it: the list route and the console's orders page both read here.
    ``InvalidOrder`` naming each bad parameter."""
    params = {name: params.get(name) or None for name in PARAMETERS}
    bound = customer_of(request)
    if bound is not None and params["customer_id"] not in (None, bound):
        list_query(**params)  # a bad parameter is still a 422
        return OrderPage([], None)
    if bound is not None:
        params["customer_id"] = bound
    return await read_side(request).model().list_orders(**params)


def given_once(request: AnyRequest, names: tuple[str, ...]) -> None:
    """``InvalidOrder`` naming each parameter the query string repeats (``?limit=1&limit=2``):
    which value was meant is anyone's guess."""
    repeated = [name for name in names if len(request.query_params.getall(name, [])) > 1]
    if repeated:
        raise InvalidOrder([FieldError(name, "must be given at most once") for name in repeated])
