"""``POST /orders/{order_id}/cancel``: stop an order at its next step boundary (ADR 0013).

The request is stored in the order document before the answer, so a 202 is never forgotten;
the order's owner notices it at its next write and compensates what ran. After storing it:

- an order no node had claimed is cancelled at once (nothing ran): its ``order.cancelled`` is
  queued and its ``order.delayed`` schedule dropped here, best-effort (the node that takes its
  work message settles it again);
- otherwise the owner is hinted (``orderflow.cancel.<id>``) so a payment wait ends now; a
  dead-lettered order gets a work message again, and the node taking it only compensates.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Final

from litestar import Response, post

from api.auth import requires
from api.broker_link import BrokerLink, broker_link
from api.paths import ORDER_CANCEL, order_location
from api.responses import AnyRequest, json_response
from api.routes.openapi import (
    BEARER,
    BROKER_DOWN,
    MALFORMED,
    OrderId,
    guarded,
    json_spec,
    problem_spec,
)
from api.routes.orders import readable_order
from nodeapp.core.errors import BrokerUnavailable
from nodeapp.orders.cancellation import Cancellation, announce, request_cancel
from nodeapp.orders.model import Order
from nodeapp.security.scopes import ORDERS_WRITE
from nodeapp.shop.notifications import publish

log = logging.getLogger("orderflow.api.cancel")

REDRIVE_SUFFIX: Final = ":cancel"  # Nats-Msg-Id of a dead-lettered order's new work message


@post(
    ORDER_CANCEL,
    status_code=202,
    guards=[requires(ORDERS_WRITE)],
    security=BEARER,
    summary="Cancel an order",
    description=(
        "Records the cancel request in the order (`cancel_requested_at`) and answers with the "
        "order as stored. No step starts after it: the step in progress ends (a wait for the "
        "payment verdict is cut short), the steps that ran are compensated latest first "
        "(stock released, payment voided or refunded), and the order ends `cancelled` "
        "(`current_step` `Cancelled`) with notification `order.cancelled`. An order no node "
        "has started is `cancelled` in this answer already. A repeat while the cancel is under "
        "way is 202 again. Needs scope `orders:write`; a token bound to a customer may cancel "
        "only that customer's orders."
    ),
    responses=guarded(
        {
            202: json_spec(Order, "Cancel accepted: the order as stored"),
            403: problem_spec("The token lacks orders:write"),
            400: MALFORMED,
            404: problem_spec("No such order (or another customer's)"),
            409: problem_spec("The order is already completed, failed or cancelled"),
            503: BROKER_DOWN,
        },
        ORDERS_WRITE,
    ),
)
async def cancel_order(request: AnyRequest, order_id: OrderId) -> Response[bytes]:
    cancellation = await cancel(request, order_id)
    headers = {"Location": order_location(order_id)}
    return json_response(cancellation.order, status_code=202, headers=headers)


async def cancel(request: AnyRequest, order_id: str) -> Cancellation:
    """Cancel an order the request's token may see, and set going what that takes (this route
    and the console's Cancel button). ``OrderNotFound``, ``OrderFinished``."""
    await readable_order(request, order_id)
    link = broker_link(request)
    cancellation = await request_cancel(link.store(), order_id)
    await _follow_up(link, cancellation)
    return cancellation


async def _follow_up(link: BrokerLink, cancellation: Cancellation) -> None:
    """What the stored request sets going. A failed hint or notification is only logged (the
    node catches up); a dead-lettered order's re-drive must go out, else 503 and the client's
    retry sends it."""
    order = cancellation.order
    if cancellation.finished:
        await _best_effort(order.order_id, "queueing order.cancelled", _settle(link, order))
        return
    hint = announce(link.connection(), order.order_id)
    await _best_effort(order.order_id, "hinting the owner", hint)
    if order.dead_letter is not None:
        await link.intake().publish(order.order_id, order.order_id + REDRIVE_SUFFIX)


async def _settle(link: BrokerLink, order: Order) -> None:
    """Tell the customer now. The ``order.delayed`` schedule is the node's to drop when it
    settles the order's work message (only nodes may purge ``NOTIFICATIONS``, ADR 0015); one
    firing first is dropped by the notifier, the order having ended by its deadline."""
    await publish(link.store().replies, order, "order.cancelled")


async def _best_effort(order_id: str, what: str, effect: Awaitable[None]) -> None:
    try:
        await effect
    except BrokerUnavailable as exc:
        log.warning(
            "cancel of order %s: %s failed: %s", order_id, what, exc,
            extra={"event": "order.cancel_follow_up_failed", "order_id": order_id},
        )  # fmt: skip
