"""``GET /orders/{order_id}/notifications``: what the customer was told about an order, and
whether it reached them (``nodeapp.shop.notifications``; the notifier of every node writes the
delivery states)."""

from __future__ import annotations

import msgspec
from litestar import Response, get

from api.auth import requires
from api.broker_link import broker_link
from api.paths import ORDER_NOTIFICATIONS
from api.responses import AnyRequest, json_response
from api.routes.openapi import BEARER, OrderId, guarded, lookup_responses
from api.routes.orders import readable_order
from nodeapp.security.scopes import ORDERS_READ
from nodeapp.shop.notifications import DeliveryState, notifications_for


class OrderNotifications(msgspec.Struct, frozen=True):
    """The order's notifications in kind order, each with its delivery state."""

    order_id: str
    notifications: list[DeliveryState]


@get(
    ORDER_NOTIFICATIONS,
    guards=[requires(ORDERS_READ)],
    security=BEARER,
    summary="An order's notifications",
    description=(
        "Each notification of the order (`order.completed`, `order.failed`, "
        "`order.cancelled`, `order.delayed`) with its delivery state: `pending`, `delivered`, "
        "`failed` (being retried), `dead` (given up), `skipped` (no webhook configured). One "
        "not yet taken by a notifier is not listed."
    ),
    responses=guarded(
        lookup_responses(OrderNotifications, "The notifications", "No such order"), ORDERS_READ
    ),
)
async def get_order_notifications(request: AnyRequest, order_id: OrderId) -> Response[bytes]:
    await readable_order(request, order_id)  # OrderNotFound: 404
    states = await notifications_for(broker_link(request).shop().notifications, order_id)
    return json_response(OrderNotifications(order_id, states))
