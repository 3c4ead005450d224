"""What ``GET /orders`` must answer, computed from the order documents themselves."""

from __future__ import annotations

from datetime import datetime

from nodeapp.orders.model import Order


def expected(
    orders: list[Order],
    status: str | None = None,
    customer: str | None = None,
    product: str | None = None,
    after: datetime | None = None,
    before: datetime | None = None,
) -> list[str]:
    """The ids a filter must list, newest first (ties by order id), from the KV documents."""
    chosen = [
        o
        for o in orders
        if (status is None or o.status == status)
        and (customer is None or o.customer_id == customer)
        and (product is None or product in {item.product_id for item in o.items})
        and (after is None or o.start_time > after)
        and (before is None or o.start_time < before)
    ]
    chosen.sort(key=lambda o: (o.start_time, o.order_id), reverse=True)
    return [o.order_id for o in chosen]
