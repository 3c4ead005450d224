"""The stock audit (``nodeapp.shop.stock_audit``): a reservation left behind by a stale owner
after its order ended is given back; one its owner still needs is not."""

from __future__ import annotations

import asyncio
import logging

import pytest

from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import utcnow
from nodeapp.shop.catalog import Catalog
from nodeapp.shop.products import Hold
from nodeapp.shop.stock_audit import audit_while_leading, release_leaked_holds
from tests.support.orders import submit
from tests.support.shop import stocked
from tests.support.waiting import wait_for


@pytest.fixture
def broker(bare_broker: Handles) -> Handles:
    return bare_broker


@pytest.fixture
async def catalog(broker: Handles, settings: Settings) -> Catalog:
    return await stocked(broker, settings, {"a": 10, "b": 10})


async def end(broker: Handles, order_id: str, status: str = "failed") -> None:
    order = await broker.store.get(order_id)
    order.status = status  # type: ignore[assignment]
    order.complete_time = utcnow()
    await broker.store.update(order)


async def test_a_reservation_outliving_its_order_is_released(
    broker: Handles, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    stock = catalog.stock
    ended, running = await submit(broker.intake), await submit(broker.intake)
    await end(broker, ended)
    # The stale owner's late reservation (epoch 1) and a live one's (epoch 2).
    await stock.reserve("a", ended, 1, 3)
    await stock.reserve("b", ended, 1, 1)
    await stock.reserve("a", running, 2, 2)

    with caplog.at_level(logging.WARNING, "orderflow.stock"):
        released = await release_leaked_holds(stock, broker.store)

    assert released == [("a", ended), ("b", ended)]
    a, b = await stock.level("a"), await stock.level("b")
    assert (a.on_hand, a.reserved, b.reserved) == (10, 2, 0)
    # A tombstone at the stale owner's epoch fences a second late reservation.
    assert a.holds[ended] == Hold(3, "released", 1)
    assert a.holds[running] == Hold(2, "reserved", 2)
    assert any(ended in r.getMessage() for r in caplog.records)
    assert await release_leaked_holds(stock, broker.store) == []  # nothing twice


async def test_sold_and_released_holds_and_unknown_orders_are_left_alone(
    broker: Handles, catalog: Catalog
) -> None:
    stock = catalog.stock
    done = await submit(broker.intake)
    await stock.reserve("a", done, 1, 2)
    await stock.commit("a", done, 1)
    await end(broker, done, "completed")
    await stock.reserve("b", "01ARZ3NDEKTSV4RRFFQ69G5FAV", 1, 1)  # no such order document

    assert await release_leaked_holds(stock, broker.store) == []
    assert (await stock.level("a")).on_hand == 8
    assert (await stock.level("b")).reserved == 1


async def test_only_the_leader_audits_and_it_stops_when_asked(
    broker: Handles, catalog: Catalog
) -> None:
    stock = catalog.stock
    ended = await submit(broker.intake)
    await end(broker, ended)
    await stock.reserve("a", ended, 1, 4)
    asked: list[bool] = []
    lead = False

    def leading() -> bool:
        asked.append(lead)
        return lead

    stop = asyncio.Event()
    audit = asyncio.create_task(audit_while_leading(stock, broker.store, leading, stop, 0.05))
    try:

        async def rounds_as_follower() -> bool:
            return len(asked) >= 3

        await wait_for(rounds_as_follower, 10.0)
        assert (await stock.level("a")).reserved == 4  # a follower changes nothing
        lead = True

        async def given_back() -> bool:
            return (await stock.level("a")).reserved == 0

        await wait_for(given_back, 10.0)
    finally:
        stop.set()
        await asyncio.wait_for(audit, 5.0)
