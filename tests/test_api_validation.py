"""Bad input gets a clear 4xx problem naming the field, and changes nothing in the broker."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest
from litestar import get

from api import create_app
from nodeapp.core.errors import InvalidOrder
from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.orders.requests import decode_order_request
from tests.support.api_fixtures import (
    assert_nothing_stored,
    assert_problem,
    client_for,
    order_body,
    running_api,
    wait_ready,
)
from tests.support.tokens import TEST_ADMIN_TOKEN


def _without(field: str) -> dict[str, Any]:
    body = order_body()
    del body[field]
    return body


def _quantity(value: Any) -> dict[str, Any]:
    return order_body(items=[{"product_id": "sku-1", "quantity": value}])


BAD_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("customer_id missing", _without("customer_id"), "customer_id"),
    ("customer_id empty", order_body(customer_id=""), "customer_id"),
    ("customer_id with a space", order_body(customer_id="a b"), "customer_id"),
    ("customer_id over 64", order_body(customer_id="c" * 65), "customer_id"),
    ("items missing", _without("items"), "items"),
    ("items empty", order_body(items=[]), "items"),
    ("items over 100", order_body(items=[{"product_id": "p", "quantity": 1}] * 101), "items"),
    ("quantity 0", _quantity(0), "items[0].quantity"),
    ("quantity -1", _quantity(-1), "items[0].quantity"),
    ("quantity 1.5", _quantity(1.5), "items[0].quantity"),
    ("quantity '2'", _quantity("2"), "items[0].quantity"),
    ("quantity null", _quantity(None), "items[0].quantity"),
    ("quantity true", _quantity(True), "items[0].quantity"),
    ("quantity 10001", _quantity(10001), "items[0].quantity"),
    ("quantity 1e30", _quantity(1e30), "items[0].quantity"),
    ("quantity missing", order_body(items=[{"product_id": "p"}]), "items[0].quantity"),
    (
        "product_id bad in 2nd item",
        order_body(items=[{"product_id": "p", "quantity": 1}, {"product_id": "", "quantity": 1}]),
        "items[1].product_id",
    ),
    ("amount negative", order_body(amount=-1), "amount"),
    ("amount 3 decimals", order_body(amount="1.005"), "amount"),
    ("amount 3 decimals as number", order_body(amount=1.005), "amount"),
    ("amount over a billion", order_body(amount="1000000000.01"), "amount"),
    ("amount NaN", order_body(amount="NaN"), "amount"),
    ("amount Infinity", order_body(amount="Infinity"), "amount"),
    ("amount -Infinity", order_body(amount="-Infinity"), "amount"),
    ("amount not a number", order_body(amount="ten"), "amount"),
    ("amount boolean", order_body(amount=True), "amount"),
    ("unknown field", order_body(colour="red"), "colour"),
    (
        "unknown field in an item",
        order_body(items=[{"product_id": "p", "quantity": 1, "colour": "red"}]),
        "items[0].colour",
    ),
    ("fail_at unknown step", order_body(fail_at="Shipping"), "fail_at"),
]


@pytest.mark.parametrize(
    ("body", "field"), [case[1:] for case in BAD_FIELDS], ids=[case[0] for case in BAD_FIELDS]
)
async def test_invalid_field_is_422_naming_it(
    api: httpx.AsyncClient, broker: Handles, body: dict[str, Any], field: str
) -> None:
    response = await api.post("/orders", json=body)
    problem = assert_problem(response, 422, field)
    assert problem["type"] == "https://orderflow.dev/problems/validation"
    assert field in problem["detail"]
    await assert_nothing_stored(broker)


@pytest.mark.parametrize(
    ("body", "field"), [case[1:] for case in BAD_FIELDS], ids=[case[0] for case in BAD_FIELDS]
)
def test_every_submitter_gets_the_same_checks(body: dict[str, Any], field: str) -> None:
    """The benchmarks and other direct submitters decode through the api's own checks."""
    with pytest.raises(InvalidOrder) as refused:
        decode_order_request(msgspec.json.encode(body), fault_injection=True)
    assert refused.value.status == 422
    assert field in [e.field for e in refused.value.errors]


def test_direct_submit_over_64_kib_is_refused() -> None:
    body = msgspec.json.encode(order_body(customer_id="c" * (64 * 1024)))
    with pytest.raises(InvalidOrder) as refused:
        decode_order_request(body, fault_injection=True)
    assert refused.value.status == 413


BAD_BODIES: list[tuple[str, bytes]] = [
    ("not JSON", b"{customer_id: c}"),
    ("truncated JSON", b'{"customer_id": "c", "items": ['),
    ("empty body", b""),
    ("JSON array", b'[{"customer_id": "c"}]'),
    ("JSON string", b'"order"'),
    ("JSON null", b"null"),
    (
        "NaN literal",
        b'{"customer_id": "c", "items": [{"product_id": "p", "quantity": 1}], "amount": NaN}',
    ),
    ("invalid UTF-8", b'{"customer_id": "\xff\xfe", "items": []}'),
]


@pytest.mark.parametrize("raw", [c[1] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES])
async def test_malformed_body_is_400(api: httpx.AsyncClient, broker: Handles, raw: bytes) -> None:
    response = await api.post("/orders", content=raw, headers={"Content-Type": "application/json"})
    assert_problem(response, 400, "body")
    await assert_nothing_stored(broker)


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
async def test_wrong_content_type_is_415(
    api: httpx.AsyncClient, broker: Handles, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = await api.post("/orders", content=msgspec.json.encode(order_body()), headers=headers)
    assert_problem(response, 415, "Content-Type")
    await assert_nothing_stored(broker)


async def test_body_over_64_kib_is_413(api: httpx.AsyncClient, broker: Handles) -> None:
    body = msgspec.json.encode(order_body(customer_id="c" * (64 * 1024)))
    response = await api.post("/orders", content=body, headers={"Content-Type": "application/json"})
    assert_problem(response, 413)
    await assert_nothing_stored(broker)


async def test_fail_at_is_refused_when_fault_injection_is_off(
    settings: Settings, broker: Handles
) -> None:
    off = msgspec.structs.replace(settings, fault_injection=False)
    async with running_api(off) as client:
        await wait_ready(client)
        response = await client.post("/orders", json=order_body(fail_at="Processing"))
    problem = assert_problem(response, 422, "fail_at")
    assert problem["errors"] == [{"field": "fail_at", "message": "fault injection is disabled"}]
    await assert_nothing_stored(broker)


async def test_unknown_order_is_404(api: httpx.AsyncClient) -> None:
    response = await api.get("/orders/01ARZ3NDEKTSV4RRFFQ69G5FAV")
    problem = assert_problem(response, 404)
    assert problem["type"] == "https://orderflow.dev/problems/not-found"


@pytest.mark.parametrize(
    "order_id", ["not-an-id", "01arz3ndektsv4rrffq69g5fav", "x" * 300, "a%20b", "..%2F..%2Fetc"]
)
async def test_malformed_order_id_is_404_not_500(api: httpx.AsyncClient, order_id: str) -> None:
    assert_problem(await api.get(f"/orders/{order_id}"), 404)


async def test_unknown_route_is_404_problem(api: httpx.AsyncClient) -> None:
    assert_problem(await api.get("/no/such/route"), 404)


@pytest.mark.parametrize(("method", "path"), [("DELETE", "/orders"), ("PUT", "/healthz")])
async def test_wrong_method_is_405_problem(api: httpx.AsyncClient, method: str, path: str) -> None:
    response = await api.request(method, path)
    assert_problem(response, 405)
    assert "allow" in response.headers


async def test_an_unknown_query_parameter_is_422_naming_it(api: httpx.AsyncClient) -> None:
    """A typo must not silently change nothing (``?limt=5`` used to list 50)."""
    assert_problem(await api.get("/products", params={"limt": "5"}), 422, "limt")
    assert_problem(await api.get("/healthz", params={"verbose": "1"}), 422, "verbose")
    for _ in range(3):  # each route knows its own, whichever route asked before
        assert (await api.get("/dlq", params={"before": "1", "limit": "5"})).status_code == 200
        assert (await api.get("/products", params={"limit": "5"})).status_code == 200


async def test_options_lists_every_method_of_a_path(api: httpx.AsyncClient) -> None:
    """Litestar 2 answered ``Allow: GET, OPTIONS`` for a path that also takes PUT (#4169)."""
    answer = await api.options("/products/mug")
    assert (answer.status_code, answer.headers["allow"]) == (204, "GET, OPTIONS, PUT")


async def test_unexpected_error_is_500_problem_without_internals(settings: Settings) -> None:
    @get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    app = create_app(settings)
    app.register(boom)
    async with client_for(app, TEST_ADMIN_TOKEN) as client:  # unguarded: any valid token
        response = await client.get("/boom")
    problem = assert_problem(response, 500)
    assert "secret" not in response.text
    assert problem["detail"] == "internal error"
