"""``GET /orders/{order_id}/history``: every stored revision of an order, oldest first.

Read from the KV history (the bucket keeps 64 revisions per order, a whole life), so it needs no
event log of its own; ``nodeapp.orders.timeline`` names what changed between revisions.
"""

from __future__ import annotations

import asyncio

from litestar import Response, get

from api.auth import requires, visible_to
from api.broker_link import broker_link
from api.paths import ORDER_HISTORY
from api.responses import AnyRequest, json_response
from api.routes.openapi import BEARER, OrderId, guarded, lookup_responses
from nodeapp.broker.connection import broker_errors
from nodeapp.core.errors import OrderNotFound
from nodeapp.orders.model import is_order_id
from nodeapp.orders.timeline import Revision, timeline
from nodeapp.security.scopes import OPS, ORDERS_READ


@get(
    ORDER_HISTORY,
    guards=[requires(ORDERS_READ, OPS)],
    security=BEARER,
    summary="An order's history",
    description=(
        "Every stored revision, oldest first: its time (when the broker stored it), status, "
        "current step, the node that wrote it, a short transition such as "
        "`Scheduling completed, Pre-Processing started`, and the document as it was."
    ),
    responses=guarded(
        lookup_responses(list[Revision], "The revisions, oldest first", "No such order"),
        ORDERS_READ,
        OPS,
    ),
)
async def get_order_history(request: AnyRequest, order_id: OrderId) -> Response[bytes]:
    return json_response(await order_revisions(request, order_id))


async def order_revisions(request: AnyRequest, order_id: str) -> list[Revision]:
    """The order's revisions described, oldest first, if the request's token may see it (this
    route and the console's order page); ``OrderNotFound`` otherwise."""
    if not is_order_id(order_id):
        raise OrderNotFound(order_id)
    link = broker_link(request)
    with broker_errors(f"reading history of {order_id}"):
        # The KV history is a watch with no deadline of its own.
        async with asyncio.timeout(link.settings.request_timeout):
            history = await link.store().history(order_id)
    last = history[-1].order if history else None
    if last is None or not visible_to(request, last.customer_id):
        raise OrderNotFound(order_id)  # withdrawn, deleted or another customer's: as GET says
    return timeline(history)
