"""``GET /orders/{order_id}/history``: every stored revision of an order, oldest first.

Read from the KV history (the bucket keeps 64 revisions per order, a whole life), so it needs no
event log of its own; ``nodeapp.orders.timeline`` names what changed between revisions.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Final

from litestar import Request, Response, get
from litestar.params import FromPath

from api.broker_link import broker_link
from api.routes.openapi import BROKER_DOWN, json_spec, problem_spec
from nodeapp.broker.connection import broker_errors
from nodeapp.core.errors import OrderNotFound
from nodeapp.orders.model import ORDER_ID_PATTERN, encode
from nodeapp.orders.timeline import Revision, timeline

_ORDER_ID: Final = re.compile(ORDER_ID_PATTERN)
JSON: Final = "application/json"


@get(
    "/orders/{order_id:str}/history",
    summary="An order's history",
    description=(
        "Every stored revision, oldest first: its time (when the broker stored it), status, "
        "current step, the node that wrote it, a short transition such as "
        "`Scheduling completed, Pre-Processing started`, and the document as it was."
    ),
    responses={
        200: json_spec(list[Revision], "The revisions, oldest first"),
        404: problem_spec("No such order"),
        503: BROKER_DOWN,
    },
)
async def get_order_history(
    request: Request[Any, Any, Any], order_id: FromPath[str]
) -> Response[bytes]:
    if not _ORDER_ID.fullmatch(order_id):
        raise OrderNotFound(order_id)
    link = broker_link(request)
    with broker_errors(f"reading history of {order_id}"):
        # The KV history is a watch with no deadline of its own.
        async with asyncio.timeout(link.settings.request_timeout):
            history = await link.store().history(order_id)
    if not history or history[-1].order is None:
        raise OrderNotFound(order_id)  # withdrawn or deleted: as GET /orders/{id} says
    return Response(encode(timeline(history)), media_type=JSON)
