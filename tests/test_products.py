"""The catalog over HTTP: products created and replaced, stock adjusted by compare-and-set with
the orders' reservations, paging, and every refusal a 4xx problem that changes nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import new_order_id
from nodeapp.shop.catalog import Catalog
from nodeapp.shop.resources import ensure_shop_resources
from tests.support.api_fixtures import assert_problem
from tests.support.catalog import PRICES


@pytest.fixture
async def catalog(broker: Handles, settings: Settings) -> Catalog:
    """The test's catalog, read straight from the broker (what the api wrote)."""
    return Catalog(broker.js, await ensure_shop_resources(broker.js, settings))


async def _product(api: httpx.AsyncClient, product_id: str) -> dict[str, Any]:
    response = await api.get(f"/products/{product_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def test_put_creates_then_replaces_and_get_shows_the_stock(api: httpx.AsyncClient) -> None:
    created = await api.put("/products/mug:blue", json={"name": "Blue mug", "price": 9.5})
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/products/mug:blue"
    assert created.json() == {
        "product_id": "mug:blue", "name": "Blue mug", "price": "9.50", "active": True,
    }  # fmt: skip
    assert await _product(api, "mug:blue") == {
        "product_id": "mug:blue", "name": "Blue mug", "price": "9.50", "active": True,
        "stock": {"on_hand": 0, "reserved": 0, "available": 0},
    }  # fmt: skip

    body = {"name": "Blue mug, large", "price": "11", "active": False}
    replaced = await api.put("/products/mug:blue", json=body)
    assert replaced.status_code == 200, replaced.text
    assert "location" not in replaced.headers
    shown = await _product(api, "mug:blue")
    assert (shown["name"], shown["price"], shown["active"]) == ("Blue mug, large", "11.00", False)


async def test_stock_moves_by_delta_and_never_below_reserved_or_zero(
    api: httpx.AsyncClient, catalog: Catalog
) -> None:
    assert (await api.put("/products/pen", json={"name": "Pen", "price": "1.20"})).is_success
    added = await api.post("/products/pen/stock", json={"delta": 10})
    assert added.status_code == 200, added.text
    assert added.json() == {"on_hand": 10, "reserved": 0, "available": 10}
    removed = await api.post("/products/pen/stock", json={"delta": -4})
    assert removed.json() == {"on_hand": 6, "reserved": 0, "available": 6}

    problem = assert_problem(await api.post("/products/pen/stock", json={"delta": -7}), 409)
    assert problem["type"] == "https://orderflow.dev/problems/stock-conflict"
    assert "pen" in problem["detail"]

    await catalog.stock.reserve("pen", new_order_id(), 1, 5)  # an order holds 5 of the 6
    problem = assert_problem(await api.post("/products/pen/stock", json={"delta": -2}), 409)
    assert (await _product(api, "pen"))["stock"] == {"on_hand": 6, "reserved": 5, "available": 1}
    taken = await api.post("/products/pen/stock", json={"delta": -1})
    assert taken.json() == {"on_hand": 5, "reserved": 5, "available": 0}


async def test_unknown_products_are_404_and_nothing_is_created(
    api: httpx.AsyncClient, catalog: Catalog
) -> None:
    for response in (
        await api.get("/products/nothing-here"),
        await api.post("/products/nothing-here/stock", json={"delta": 3}),
    ):
        problem = assert_problem(response, 404)
        assert problem["detail"] == "product nothing-here not found"
    assert await catalog.find("nothing-here") is None
    assert (await catalog.stock.level("nothing-here")).on_hand == 0


@pytest.mark.parametrize(
    "product_id",
    ["a%20b", "x" * 65, "caf%C3%A9", "star*", "semi%3Bcolon"],
    ids=["space", "65 chars", "non-ASCII", "star", "semicolon"],
)
async def test_a_product_id_outside_the_alphabet_is_refused(
    api: httpx.AsyncClient, catalog: Catalog, product_id: str
) -> None:
    for response in (
        await api.get(f"/products/{product_id}"),
        await api.put(f"/products/{product_id}", json={"name": "n", "price": "1"}),
        await api.post(f"/products/{product_id}/stock", json={"delta": 1}),
    ):
        assert_problem(response, 422, "product_id")
    page = await catalog.list_products(500)  # the test catalog as loaded, nothing added
    assert sorted(p.product_id for p in page.products) == sorted(PRICES)


BAD_PRODUCT_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("name missing", {"price": "1.00"}, "name"),
    ("name empty", {"name": "", "price": "1.00"}, "name"),
    ("name over 200", {"name": "n" * 201, "price": "1.00"}, "name"),
    ("price missing", {"name": "n"}, "price"),
    ("price 3 decimals", {"name": "n", "price": "1.005"}, "price"),
    ("price negative", {"name": "n", "price": "-1"}, "price"),
    ("price not a number", {"name": "n", "price": "cheap"}, "price"),
    ("active not a boolean", {"name": "n", "price": "1", "active": "yes"}, "active"),
    ("unknown field", {"name": "n", "price": "1", "colour": "red"}, "colour"),
]


@pytest.mark.parametrize(
    ("body", "field"),
    [case[1:] for case in BAD_PRODUCT_BODIES],
    ids=[case[0] for case in BAD_PRODUCT_BODIES],
)
async def test_a_bad_product_body_is_422_naming_the_field(
    api: httpx.AsyncClient, catalog: Catalog, body: dict[str, Any], field: str
) -> None:
    assert_problem(await api.put("/products/sku-1", json=body), 422, field)
    assert_problem(await api.put("/products/brand-new", json=body), 422, field)
    assert (await catalog.get("sku-1")).name == "test product sku-1"  # unchanged
    assert await catalog.find("brand-new") is None


@pytest.mark.parametrize(
    ("body", "field"),
    [({"delta": "5"}, "delta"), ({"delta": 1.5}, "delta"), ({"delta": True}, "delta"),
     ({}, "delta"), ({"delta": 1, "why": "x"}, "why"), ({"delta": 10**12}, "delta")],
    ids=["string", "float", "boolean", "missing", "unknown field", "too large"],
)  # fmt: skip
async def test_a_bad_stock_change_is_422_and_changes_nothing(
    api: httpx.AsyncClient, catalog: Catalog, body: dict[str, Any], field: str
) -> None:
    before = await catalog.stock.level("sku-2")
    assert_problem(await api.post("/products/sku-2/stock", json=body), 422, field)
    assert await catalog.stock.level("sku-2") == before


async def test_malformed_bodies_are_400_and_other_media_types_415(api: httpx.AsyncClient) -> None:
    json_header = {"Content-Type": "application/json"}
    for path, method in (("/products/sku-1", "PUT"), ("/products/sku-1/stock", "POST")):
        for raw in (b"{not json", b"[1, 2]"):
            response = await api.request(method, path, content=raw, headers=json_header)
            assert_problem(response, 400, "body")
        form = await api.request(method, path, content=b"delta=1", headers={
            "Content-Type": "application/x-www-form-urlencoded",
        })  # fmt: skip
        assert_problem(form, 415, "Content-Type")


async def test_paging_visits_every_product_once(api: httpx.AsyncClient, catalog: Catalog) -> None:
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        response = await api.get("/products", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["products"]) <= 3
        seen += [p["product_id"] for p in page["products"]]
        if not seen[3:] and len(seen) == 3:  # after the first page, a product appears ahead
            assert (await api.put("/products/zz-late", json={"name": "z", "price": 1})).is_success
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen))
    assert set(seen) == {*PRICES, "zz-late"}
    everything = (await api.get("/products", params={"limit": 500})).json()
    assert everything["next_cursor"] is None
    assert [p["product_id"] for p in everything["products"]] == seen
    assert everything["products"][0] == {
        "product_id": seen[0], "name": f"test product {seen[0]}", "price": PRICES[seen[0]],
        "active": True,
    }  # fmt: skip


async def test_bad_paging_parameters_are_4xx_naming_them(api: httpx.AsyncClient) -> None:
    for limit in ("0", "501", "ten"):
        assert_problem(await api.get("/products", params={"limit": limit}), 400, "limit")
    assert_problem(await api.get("/products", params={"cursor": "!!"}), 422, "cursor")


async def test_openapi_documents_the_product_routes(api: httpx.AsyncClient) -> None:
    paths = (await api.get("/schema/openapi.json")).json()["paths"]
    listing = paths["/products"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {"limit", "cursor"}
    assert set(listing["responses"]) >= {"200", "400", "422", "503"}
    one = paths["/products/{product_id}"]
    assert set(one["get"]["responses"]) >= {"200", "404", "422", "503"}
    put = one["put"]
    schema = put["requestBody"]["content"]["application/json"]["schema"]
    assert (schema["title"], schema["required"]) == ("ProductBody", ["name", "price"])
    assert set(put["responses"]) >= {"200", "201", "400", "415", "422", "503"}
    stock = paths["/products/{product_id}/stock"]["post"]
    schema = stock["requestBody"]["content"]["application/json"]["schema"]
    assert (schema["title"], schema["required"]) == ("StockChange", ["delta"])
    assert set(stock["responses"]) >= {"200", "404", "409", "422", "503"}
