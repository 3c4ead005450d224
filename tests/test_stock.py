"""Stock by compare-and-set (ADR 0010): every operation idempotent, fenced by epoch, and no
interleaving of writers oversells."""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal

import pytest

from nodeapp.core.errors import Fenced
from nodeapp.core.settings import Settings
from nodeapp.core.shop_errors import HoldConflict, OutOfStock
from nodeapp.orders.handles import Handles, broker_handles
from nodeapp.orders.model import Item
from nodeapp.shop.catalog import Catalog
from nodeapp.shop.products import Hold, Product, StockView
from nodeapp.shop.resources import ensure_shop_resources
from nodeapp.shop.stock import Stock


@pytest.fixture
def broker(bare_broker: Handles) -> Handles:
    """These tests start from an empty catalog, not the test catalog."""
    return bare_broker


@pytest.fixture
async def catalog(broker: Handles, settings: Settings) -> Catalog:
    catalog = Catalog(broker.js, await ensure_shop_resources(broker.js, settings))
    for product_id in ("a", "b:1"):
        await catalog.put(Product(product_id, product_id, Decimal("2.00")))
        await catalog.adjust(product_id, 10)
    return catalog


def counts(view: StockView) -> tuple[int, int, int]:
    return view.on_hand, view.reserved, view.available


async def test_each_operation_applied_twice_changes_the_stock_once(catalog: Catalog) -> None:
    stock = catalog.stock
    for _ in range(2):
        assert counts(await stock.reserve("a", "o1", 1, 3)) == (10, 3, 7)
    assert (await stock.level("a")).holds == {"o1": Hold(3, "reserved", 1)}
    for _ in range(2):
        assert counts(await stock.commit("a", "o1", 1)) == (7, 0, 7)
    assert (await stock.level("a")).holds == {"o1": Hold(3, "sold", 1)}
    for _ in range(2):
        assert counts(await stock.forget("a", "o1", 1)) == (7, 0, 7)
    assert (await stock.level("a")).holds == {}

    await stock.reserve("a", "o2", 1, 2)
    for _ in range(2):
        assert counts(await stock.release("a", "o2", 1)) == (7, 0, 7)

    await stock.reserve("a", "o3", 1, 4)
    await stock.commit("a", "o3", 1)
    for _ in range(2):  # a sale put back
        assert counts(await stock.restock("a", "o3", 1)) == (7, 0, 7)
    await stock.reserve("a", "o4", 1, 5)
    for _ in range(2):  # a reservation never sold, given back
        assert counts(await stock.restock("a", "o4", 1)) == (7, 0, 7)
    for _ in range(2):  # an order that never held "a" gives it back all the same
        assert counts(await stock.release("a", "o5", 1)) == (7, 0, 7)
    # Given back, each stays a tombstone until the order is terminal and forgets it.
    assert (await stock.level("a")).holds == {
        "o2": Hold(2, "released", 1),
        "o3": Hold(4, "released", 1),
        "o4": Hold(5, "released", 1),
        "o5": Hold(0, "released", 1),
    }
    for order_id in ("o2", "o3", "o4", "o5"):
        for _ in range(2):
            assert counts(await stock.forget("a", order_id, 1)) == (7, 0, 7)
    assert (await stock.level("a")).holds == {}


async def test_a_lower_epoch_is_fenced_and_a_higher_one_takes_over(catalog: Catalog) -> None:
    stock = catalog.stock
    await stock.reserve("a", "o1", 2, 1)
    with pytest.raises(Fenced) as caught:
        await stock.release("a", "o1", 1)
    assert (caught.value.order_id, caught.value.epoch, caught.value.current) == ("o1", 1, 2)
    await stock.reserve("a", "o1", 3, 1)  # the new owner re-runs Scheduling: fences epoch 2
    assert (await stock.level("a")).holds["o1"] == Hold(1, "reserved", 3)
    for stale in (stock.commit, stock.restock, stock.release):
        with pytest.raises(Fenced):
            await stale("a", "o1", 2)
    await stock.commit("a", "o1", 3)
    with pytest.raises(Fenced):
        await stock.forget("a", "o1", 2)
    assert counts(await stock.forget("a", "o1", 4)) == (9, 0, 9)


async def test_holds_in_the_wrong_state_are_refused(catalog: Catalog) -> None:
    stock = catalog.stock
    with pytest.raises(HoldConflict, match="nothing reserved"):
        await stock.commit("a", "o1", 1)
    await stock.reserve("a", "o1", 1, 2)
    with pytest.raises(HoldConflict, match="asked to reserve 3"):
        await stock.reserve("a", "o1", 1, 3)
    with pytest.raises(HoldConflict, match="still reserved"):
        await stock.forget("a", "o1", 1)
    await stock.commit("a", "o1", 1)
    with pytest.raises(HoldConflict, match="restock it"):
        await stock.release("a", "o1", 1)
    assert counts(await stock.view("a")) == (8, 0, 8)

    await stock.reserve("a", "o2", 1, 2)
    await stock.release("a", "o2", 1)
    with pytest.raises(HoldConflict, match="not reserved again"):
        await stock.reserve("a", "o2", 1, 2)
    with pytest.raises(HoldConflict, match="nothing to commit"):
        await stock.commit("a", "o2", 1)
    assert counts(await stock.view("a")) == (8, 0, 8)
    assert (await stock.level("a")).holds["o2"] == Hold(2, "released", 1)


async def test_an_order_reserves_in_id_order_and_compensates(catalog: Catalog) -> None:
    stock = catalog.stock
    await stock.reserve("b:1", "other", 1, 9)
    items = [Item("b:1", 1), Item("a", 2), Item("b:1", 1), Item("a", 1)]
    with pytest.raises(OutOfStock) as caught:
        await stock.reserve_items("o1", 1, items)
    assert (caught.value.product_id, caught.value.requested, caught.value.available) == (
        "b:1", 2, 1,
    )  # fmt: skip
    assert caught.value.reason == "out_of_stock: b:1"
    assert (await stock.level("a")).holds["o1"] == Hold(3, "reserved", 1)  # "a" < "b:1"
    for _ in range(2):
        await stock.release_items("o1", 1, items)
    assert counts(await stock.view("a")) == (10, 0, 10)
    assert (await stock.level("a")).holds["o1"] == Hold(3, "released", 1)
    assert (await stock.level("b:1")).holds["o1"] == Hold(0, "released", 1)  # never held

    fits = [Item("b:1", 1), Item("a", 3)]
    for _ in range(2):
        await stock.reserve_items("o2", 1, fits)
        await stock.commit_items("o2", 1, fits)
    assert counts(await stock.view("a")) == (7, 0, 7)
    await stock.restock_items("o2", 1, fits)
    assert counts(await stock.view("b:1")) == (10, 9, 1)
    await stock.reserve_items("o3", 1, fits)
    await stock.commit_items("o3", 1, fits)
    for order_id in ("o1", "o2", "o3"):  # terminal, failed or completed: forgotten
        await stock.forget_items(order_id, 1, fits)
    assert counts(await stock.view("a")) == (7, 0, 7)
    assert set((await stock.level("a")).holds) == set()
    assert set((await stock.level("b:1")).holds) == {"other"}


async def test_no_oversell_across_connections(settings: Settings, catalog: Catalog) -> None:
    """60 reservations of 1 from 3 connections race for 10 in stock: exactly 10 win."""
    await catalog.put(Product("hot", "Hot", Decimal("1.00")))
    await catalog.adjust("hot", 10)
    async with contextlib.AsyncExitStack() as stack:
        stocks = []
        for n in range(3):
            handles = await stack.enter_async_context(broker_handles(settings, f"racer-{n}"))
            stocks.append(Stock((await ensure_shop_resources(handles.js, settings)).stock))

        async def reserve(stock: Stock, order_id: str) -> str | None:
            try:
                await stock.reserve_items(order_id, 1, [Item("hot", 1)])
            except OutOfStock:
                return None
            return order_id

        races = [reserve(s, f"o-{n}-{i}") for n, s in enumerate(stocks) for i in range(20)]
        won = [o for o in await asyncio.gather(*races) if o is not None]
        assert len(won) == 10
        assert counts(await catalog.stock_view("hot")) == (10, 10, 0)
        assert set((await catalog.stock.level("hot")).holds) == set(won)

        line = [Item("hot", 1)]
        sold, given_back = won[:4], won[4:]
        await asyncio.gather(
            *(stocks[i % 3].commit_items(o, 1, line) for i, o in enumerate(sold)),
            *(stocks[i % 3].release_items(o, 1, line) for i, o in enumerate(given_back)),
        )
        assert counts(await catalog.stock_view("hot")) == (6, 0, 6)
        await asyncio.gather(*(stocks[1].forget_items(o, 1, line) for o in won))
        assert (await catalog.stock.level("hot")).holds == {}


async def test_combined_changes_settle_each_caller_on_its_own(catalog: Catalog) -> None:
    """Concurrent changes of one product share writes; a refused one leaves the others be."""
    stock = catalog.stock
    await stock.reserve("a", "fenced", 5, 1)
    outcomes = await asyncio.gather(
        stock.reserve("a", "o1", 1, 4),
        stock.reserve("a", "big", 1, 50),
        stock.release("a", "fenced", 4),
        stock.reserve("a", "o2", 1, 5),
        stock.commit("a", "nothing", 1),
        return_exceptions=True,
    )
    kinds = [type(o).__name__ for o in outcomes]
    assert kinds == ["StockView", "OutOfStock", "Fenced", "StockView", "HoldConflict"]
    level = await stock.level("a")
    assert (level.on_hand, level.reserved) == (10, 10)
    assert set(level.holds) == {"fenced", "o1", "o2"}


async def test_cancelled_callers_leave_consistent_stock(catalog: Catalog) -> None:
    """Whichever of the racing callers are cancelled, and wherever, the counters match the
    holds, and a re-run settles every order exactly once."""
    stock = catalog.stock
    orders = [f"o{n}" for n in range(30)]
    tasks = [asyncio.create_task(stock.reserve("a", o, 1, 1)) for o in orders]
    await asyncio.sleep(0)
    for task in tasks[::3]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    level = await stock.level("a")
    assert level.reserved == sum(h.quantity for h in level.holds.values()) <= 10
    for order_id in orders:
        await stock.release("a", order_id, 1)
    assert counts(await stock.view("a")) == (10, 0, 10)


async def test_a_stale_owner_cannot_reserve_after_the_new_owner_gave_the_stock_back(
    catalog: Catalog,
) -> None:
    """The order taken over (epoch 2) fails and gives its stock back while its old owner
    (epoch 1) is still on its way to reserve: the tombstones fence it, on products the new owner
    held and on those it never reached, so nothing stays reserved once the order is terminal."""
    stock = catalog.stock
    await stock.reserve("b:1", "other", 1, 10)  # "b:1" is sold out: the new owner fails there
    items = [Item("a", 2), Item("b:1", 1)]
    with pytest.raises(OutOfStock):
        await stock.reserve_items("o1", 2, items)
    await stock.release_items("o1", 2, items)
    await stock.release("a", "o2", 2)  # another order failed before reserving anything

    with pytest.raises(Fenced) as caught:
        await stock.reserve_items("o1", 1, items)
    assert (caught.value.epoch, caught.value.current) == (1, 2)
    with pytest.raises(Fenced):
        await stock.reserve("b:1", "o1", 1, 1)
    with pytest.raises(Fenced):
        await stock.reserve("a", "o2", 1, 1)
    assert counts(await stock.view("a")) == (10, 0, 10)
    assert counts(await stock.view("b:1")) == (10, 10, 0)

    await stock.forget_items("o1", 2, items)  # the order is stored failed
    await stock.forget("a", "o2", 2)
    assert set((await stock.level("a")).holds) == set()
    assert set((await stock.level("b:1")).holds) == {"other"}


async def test_forgetting_a_reserved_hold_is_refused_but_the_rest_are_forgotten(
    catalog: Catalog,
) -> None:
    stock = catalog.stock
    await stock.reserve("a", "o1", 1, 1)
    await stock.release("b:1", "o1", 1)
    with pytest.raises(HoldConflict, match="still reserved"):
        await stock.forget_items("o1", 1, [Item("a", 1), Item("b:1", 1)])
    assert (await stock.level("a")).holds == {"o1": Hold(1, "reserved", 1)}
    assert (await stock.level("b:1")).holds == {}


@pytest.mark.parametrize("through", ["nats-py", "replies"])
async def test_a_sole_writer_skips_the_read_but_never_trusts_a_stale_copy(
    settings: Settings, catalog: Catalog, broker: Handles, through: str
) -> None:
    """A process that is a product's only writer writes its next change from the copy it kept
    (no read); once another process wrote, the broker refuses that write and the change is
    decided on a fresh read: it cannot oversell from an old copy. The same through the node's
    cheaper compare-and-set (``replies``, ADR 0020): a refusal is the same refusal."""
    replies = broker.store.replies if through == "replies" else None
    mine = Stock(catalog.stock.kv, replies=replies)  # a process of its own: nothing kept yet
    await mine.reserve("a", "o1", 1, 3)  # read: the catalog wrote last
    await mine.reserve("a", "o2", 1, 3)  # read: its own write was the last, so it keeps this one
    await mine.reserve("a", "o3", 1, 1)  # from the kept copy
    assert (mine.writer.reads, mine.writer.stale) == (2, 0)

    async with broker_handles(settings, "other-process") as handles:
        other = Stock((await ensure_shop_resources(handles.js, settings)).stock)
        assert counts(await other.reserve("a", "x", 1, 3)) == (10, 10, 0)
        with pytest.raises(OutOfStock):  # the kept copy said 3 available
            await mine.reserve("a", "o4", 1, 1)
        assert (mine.writer.reads, mine.writer.stale) == (3, 1)

        await mine.release("a", "o3", 1)  # read (another writer was last): nothing kept
        await mine.release("a", "o2", 1)  # read: its own write was last, kept from here
        assert counts(await mine.release("a", "o1", 1)) == (10, 3, 7)
        assert mine.writer.reads == 5
        await mine.reserve("a", "o5", 1, 7)  # the kept copy: 0 available from here on
        await other.adjust("a", 5)
        # Refused on the kept copy (0 available), so decided on a fresh read: 5 are there.
        assert counts(await mine.reserve("a", "o6", 1, 5)) == (15, 15, 0)
        assert (mine.writer.reads, mine.writer.stale) == (6, 1)
    level = await catalog.stock.level("a")
    assert level.reserved == sum(h.quantity for h in level.holds.values() if h.state == "reserved")
