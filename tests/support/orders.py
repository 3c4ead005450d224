"""Helpers to submit orders and read their final documents in tests."""

from __future__ import annotations

from nodeapp.core.errors import OrderNotFound
from nodeapp.orders.intake import Intake
from nodeapp.orders.model import Order
from nodeapp.orders.requests import ItemRequest, OrderRequest
from nodeapp.orders.store import OrderStore
from tests.support.waiting import wait_for


def order_request(customer: str = "c-1", fail_at: str | None = None) -> OrderRequest:
    return OrderRequest(
        customer_id=customer, items=[ItemRequest("p-1", 2)], amount=None, fail_at=fail_at
    )


async def submit(intake: Intake, fail_at: str | None = None) -> str:
    result = await intake.submit(order_request(fail_at=fail_at))
    return result.order.order_id


async def wait_terminal(store: OrderStore, order_id: str, within: float = 30.0) -> Order:
    async def probe() -> Order | None:
        try:
            order = await store.get(order_id)
        except OrderNotFound:
            return None
        return order if order.terminal else None

    return await wait_for(probe, within)


async def wait_all_terminal(
    store: OrderStore, order_ids: list[str], within: float = 60.0
) -> list[Order]:
    remaining = set(order_ids)
    done: dict[str, Order] = {}

    async def probe() -> bool:
        for order_id in list(remaining):
            order = await store.get(order_id)
            if order.terminal:
                done[order_id] = order
                remaining.discard(order_id)
        return not remaining

    await wait_for(probe, within, interval=0.2)
    return [done[o] for o in order_ids]
