"""The catalog (ADR 0010): product keys, products in KV, paging, loading, the cache, checkout."""

from __future__ import annotations

import asyncio
import itertools
import re
from decimal import Decimal

import pytest

from nodeapp.core.errors import InvalidOrder
from nodeapp.core.settings import Settings
from nodeapp.core.shop_errors import InvalidProduct, ProductNotFound, StockConflict
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import Item
from nodeapp.shop.cache import CatalogCache
from nodeapp.shop.catalog import Catalog, LoadReport
from nodeapp.shop.checkout import price_items
from nodeapp.shop.keys import product_id_of, product_key
from nodeapp.shop.products import (
    DEMO_CATALOG,
    CatalogItem,
    Product,
    decode_catalog_file,
    decode_product_body,
)
from nodeapp.shop.resources import ensure_shop_resources
from tests.support.waiting import wait_for

KV_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")  # what nats-py and the server accept as a key


@pytest.fixture
def broker(bare_broker: Handles) -> Handles:
    """These tests start from an empty catalog, not the test catalog."""
    return bare_broker


@pytest.fixture
async def catalog(broker: Handles, settings: Settings) -> Catalog:
    return Catalog(broker.js, await ensure_shop_resources(broker.js, settings))


def fields(exc: InvalidOrder) -> list[str]:
    return [e.field for e in exc.errors]


def test_product_keys_round_trip_without_collisions() -> None:
    assert product_key("sku-1") == "sku-1"
    assert product_key("a:b") == "a=3Ab"
    assert product_key(".a.") == "=2Ea=2E"
    ids = ["".join(t) for n in (1, 2, 3) for t in itertools.product("a:._-Z3", repeat=n)]
    ids.append("x" * 64)
    keys = [product_key(i) for i in ids]
    assert len(set(keys)) == len(ids)
    for product_id, key in zip(ids, keys, strict=True):
        assert KV_KEY.fullmatch(key)
        assert not key.startswith(".")
        assert not key.endswith(".")
        assert product_id_of(key) == product_id


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "a/b", "é", "a=3A"])
def test_bad_product_ids_have_no_key(bad: str) -> None:
    with pytest.raises(InvalidProduct) as caught:
        product_key(bad)
    assert fields(caught.value) == ["product_id"]


@pytest.mark.parametrize("key", ["a=3a", "a=", "a.b", "=41", "a=3", "a:b"])
def test_keys_orderflow_did_not_write_are_no_product(key: str) -> None:
    with pytest.raises(ValueError, match="not a product key"):
        product_id_of(key)


async def test_put_get_and_update(catalog: Catalog) -> None:
    assert await catalog.put(Product("a:b.c", "Tea", Decimal("5"))) is True
    stored = await catalog.get("a:b.c")
    assert stored == Product("a:b.c", "Tea", Decimal("5.00"), active=True)
    assert str(stored.price) == "5.00"
    raw = await catalog.kv.get(product_key("a:b.c"))
    assert b'"price":"5.00"' in (raw.value or b"")
    assert await catalog.put(Product("a:b.c", "Green tea", Decimal("6.5"), False)) is False
    assert await catalog.get("a:b.c") == Product("a:b.c", "Green tea", Decimal("6.50"), False)
    with pytest.raises(ProductNotFound):
        await catalog.get("nothing")
    assert await catalog.find("nothing") is None


async def test_put_refuses_bad_fields(catalog: Catalog) -> None:
    with pytest.raises(InvalidProduct) as caught:
        await catalog.put(Product("ok", "", Decimal("1.005")))
    assert fields(caught.value) == ["name", "price"]
    with pytest.raises(InvalidProduct) as caught:
        await catalog.put(Product("ok", "x" * 201, Decimal(-1)))
    assert fields(caught.value) == ["name", "price"]
    assert await catalog.is_empty()


async def test_paging_never_repeats_or_skips(catalog: Catalog) -> None:
    ids = [f"p{n:02d}" for n in range(20)] + ["a:1", "a.2", "a-3", "a_4", "Z"]
    for product_id in ids:
        await catalog.put(Product(product_id, f"name {product_id}", Decimal("1.50")))
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await catalog.list_products(limit=4, cursor=cursor)
        seen += [p.product_id for p in page.products]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
        # A product added behind the cursor is not shown; the pages ahead are unaffected.
        if len(seen) == 8:
            await catalog.put(Product("0-early", "late", Decimal(1)))
    assert seen == sorted(ids)
    everything = await catalog.list_products(limit=500)
    assert [p.product_id for p in everything.products] == sorted([*ids, "0-early"])
    assert everything.next_cursor is None


@pytest.mark.parametrize(
    ("limit", "cursor", "field"),
    [(0, None, "limit"), (501, None, "limit"), (5, "%%%", "cursor"), (5, "YSBi", "cursor")],
)
async def test_bad_page_requests_name_the_parameter(
    catalog: Catalog, limit: int, cursor: str | None, field: str
) -> None:
    with pytest.raises(InvalidProduct) as caught:
        await catalog.list_products(limit=limit, cursor=cursor)
    assert fields(caught.value) == [field]


async def test_stock_view_and_adjust(catalog: Catalog) -> None:
    await catalog.put(Product("sku-1", "Mug", Decimal("9.50")))
    view = await catalog.view("sku-1")
    assert (view.stock.on_hand, view.stock.reserved, view.stock.available) == (0, 0, 0)
    assert (await catalog.adjust("sku-1", 10)).on_hand == 10
    with pytest.raises(StockConflict, match="below 0"):
        await catalog.adjust("sku-1", -11)
    await catalog.stock.reserve("sku-1", "order-1", 1, 4)
    with pytest.raises(StockConflict, match="below the 4 reserved") as caught:
        await catalog.adjust("sku-1", -7)
    assert (caught.value.on_hand, caught.value.reserved) == (10, 4)
    after = await catalog.adjust("sku-1", -6)
    assert (after.on_hand, after.reserved, after.available) == (4, 4, 0)
    assert await catalog.stock_view("sku-1") == after
    with pytest.raises(ProductNotFound):
        await catalog.adjust("nothing", 1)
    with pytest.raises(ProductNotFound):
        await catalog.view("nothing")


async def test_load_is_idempotent_and_keeps_moved_stock(catalog: Catalog) -> None:
    assert await catalog.is_empty()
    report = await catalog.load(DEMO_CATALOG)
    assert report == LoadReport(created=len(DEMO_CATALOG), stocked=len(DEMO_CATALOG))
    assert not await catalog.is_empty()
    await catalog.stock.reserve("sku-1", "order-1", 1, 3)
    await catalog.adjust("sku-2", -5)
    again = await catalog.load(DEMO_CATALOG)
    assert again == LoadReport(unchanged=len(DEMO_CATALOG), stock_kept=len(DEMO_CATALOG))
    assert (await catalog.stock_view("sku-1")).available == 97
    assert (await catalog.stock_view("sku-2")).on_hand == 95
    cheaper = CatalogItem("sku-3", "Pour-over kettle", Decimal("35"), on_hand=7)
    assert await catalog.load([cheaper]) == LoadReport(updated=1, stock_kept=1)
    assert (await catalog.get("sku-3")).price == Decimal("35.00")
    assert (await catalog.stock_view("sku-3")).on_hand == 100


def test_catalog_file_errors_name_the_entry() -> None:
    good = b'[{"product_id": "a:1", "name": "A", "price": "2.5", "on_hand": 3}]'
    assert decode_catalog_file(good) == [CatalogItem("a:1", "A", Decimal("2.50"), on_hand=3)]
    bad = (
        b'[{"product_id": "a", "name": "A", "price": "1"},'
        b' {"product_id": "a", "name": "", "price": "1.001", "on_hand": -1}]'
    )
    with pytest.raises(InvalidProduct) as caught:
        decode_catalog_file(bad)
    assert fields(caught.value) == ["[1].name", "[1].price", "[1].on_hand", "[1].product_id"]
    with pytest.raises(InvalidProduct) as caught:
        decode_catalog_file(b'[{"product_id": "a", "name": "A", "price": "1", "x": 1}]')
    assert fields(caught.value) == ["[0].x"]
    for broken in (b"{}", b"not json"):
        with pytest.raises(InvalidProduct) as caught:
            decode_catalog_file(broken)
        assert caught.value.status == 400


def test_product_body() -> None:
    body = b'{"name": "Kettle", "price": "39"}'
    assert decode_product_body("k:1", body) == Product("k:1", "Kettle", Decimal("39.00"))
    with pytest.raises(InvalidProduct) as caught:
        decode_product_body("k:1", b'{"name": "Kettle", "price": "-1", "active": false}')
    assert fields(caught.value) == ["price"]
    with pytest.raises(InvalidProduct) as caught:
        decode_product_body("k:1", b'{"price": "1"}')
    assert fields(caught.value) == ["name"]


async def test_cache_serves_from_memory_and_follows_changes(catalog: Catalog) -> None:
    await catalog.put(Product("sku-1", "Mug", Decimal("9.50")))
    async with CatalogCache(catalog.kv) as cache:
        await asyncio.wait_for(cache.loaded.wait(), 10)
        assert await cache.find("sku-1") == Product("sku-1", "Mug", Decimal("9.50"))
        assert cache.hits == 1
        assert await cache.find("unknown") is None
        await catalog.put(Product("sku-1", "Mug", Decimal("8.00")))
        await catalog.put(Product("n:1", "New", Decimal("1.00")))

        async def both_seen() -> bool:
            mug, new = await cache.find("sku-1"), await cache.find("n:1")
            return mug is not None and mug.price == Decimal("8.00") and new is not None

        await wait_for(both_seen, within=10)
        await catalog.kv.delete(product_key("n:1"))

        async def deleted() -> bool:
            return await cache.find("n:1") is None

        await wait_for(deleted, within=10)
        hits = cache.hits
        assert await cache.find("n:1") is None
        assert cache.hits == hits + 1  # the deletion is held, not read again
    # Outside its context the cache has no watch: it reads the bucket directly.
    misses = cache.misses
    assert await cache.find("sku-1") == Product("sku-1", "Mug", Decimal("8.00"))
    assert cache.misses == misses + 1


async def test_cache_loads_an_empty_catalog(catalog: Catalog) -> None:
    async with CatalogCache(catalog.kv) as cache:
        await asyncio.wait_for(cache.loaded.wait(), 10)
        assert await cache.find("sku-1") is None


async def test_checkout_prices_items_from_the_catalog(catalog: Catalog) -> None:
    await catalog.load(DEMO_CATALOG)  # sku-1 24.90, sku-2 9.50
    await catalog.put(Product("old", "Retired", Decimal(1), active=False))
    items = [Item("sku-2", 2), Item("sku-1", 1), Item("sku-2", 1)]
    priced = await price_items(items, None, catalog.find)
    assert priced.amount == Decimal("53.40")
    prices = [i.unit_price for i in priced.items]
    assert prices == [Decimal("9.50"), Decimal("24.90"), Decimal("9.50")]
    assert (await price_items(items, Decimal("53.4"), catalog.find)).amount == Decimal("53.40")
    with pytest.raises(InvalidOrder) as caught:
        await price_items(items, Decimal("53.41"), catalog.find)
    assert [(e.field, e.message) for e in caught.value.errors] == [("amount", "expected 53.40")]
    assert caught.value.status == 422
    wrong = [Item("sku-1", 1), Item("nope", 1), Item("old", 2)]
    with pytest.raises(InvalidOrder) as caught:
        await price_items(wrong, Decimal(0), catalog.find)
    assert fields(caught.value) == ["items[1].product_id", "items[2].product_id"]
