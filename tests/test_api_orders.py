"""Submitting and reading orders over HTTP, Idempotency-Key semantics, and the OpenAPI doc."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from nodeapp.orders.handles import Handles
from nodeapp.orders.model import STEP_NAMES, is_order_id
from tests.support.api_fixtures import (
    assert_nothing_stored,
    assert_problem,
    order_body,
    order_keys,
    work_messages,
)


async def test_submit_then_read_shows_the_pending_order(
    api: httpx.AsyncClient, broker: Handles
) -> None:
    response = await api.post(
        "/orders",
        content=b'{"customer_id": "cust-1", "items": [{"product_id": "sku-1", "quantity": 2}],'
        b' "amount": "12.50"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    order_id = accepted["order_id"]
    assert set(accepted) == {"order_id", "status", "start_time"}
    assert accepted["status"] == "accepted"
    assert accepted["start_time"].endswith("Z")
    assert response.headers["location"] == f"/orders/{order_id}"
    assert "idempotent-replayed" not in response.headers

    document = await api.get(response.headers["location"])
    assert document.status_code == 200
    assert document.headers["content-type"].startswith("application/json")
    order = document.json()
    assert order["order_id"] == order_id
    assert order["status"] == "accepted"
    assert order["current_step"] == STEP_NAMES[0]
    assert order["start_time"] == accepted["start_time"]
    assert order["complete_time"] is None
    assert order["customer_id"] == "cust-1"
    assert order["items"] == [{"product_id": "sku-1", "quantity": 2, "unit_price": "6.25"}]
    assert order["amount"] == "12.50"
    assert order["payment_token"] == "tok_ok"  # the default card: approved
    assert order["payment"] is None  # Pre-Processing has not authorized anything yet
    assert order["contact"] is None
    assert [s["name"] for s in order["steps"]] == list(STEP_NAMES)
    assert all(s["status"] == "pending" for s in order["steps"])
    assert order["failure"] is None
    assert order["owner"] is None
    assert order["revision"] == 1
    assert await order_keys(broker) == [order_id]
    assert await work_messages(broker) == 1


@pytest.mark.parametrize(
    ("amount", "stored"), [(12.5, "12.50"), ("12.50", "12.50"), ("12.5", "12.50"), (None, "12.50")]
)
async def test_amount_is_a_number_or_string_or_absent(
    api: httpx.AsyncClient, amount: object, stored: str | None
) -> None:
    response = await api.post("/orders", json=order_body(amount=amount))
    assert response.status_code == 202, response.text
    order = (await api.get(response.headers["location"])).json()
    assert order["amount"] == stored


async def test_fail_at_is_stored_when_fault_injection_is_on(api: httpx.AsyncClient) -> None:
    response = await api.post("/orders", json=order_body(fail_at="Processing"))
    assert response.status_code == 202, response.text
    order = (await api.get(response.headers["location"])).json()
    assert order["fail_at"] == "Processing"


async def test_order_ids_are_distinct_ulids(api: httpx.AsyncClient, broker: Handles) -> None:
    responses = await asyncio.gather(*(api.post("/orders", json=order_body()) for _ in range(20)))
    ids = {r.json()["order_id"] for r in responses}
    assert len(ids) == 20
    assert all(is_order_id(i) for i in ids)
    assert sorted(await order_keys(broker)) == sorted(ids)
    assert await work_messages(broker) == 20


async def test_same_idempotency_key_returns_the_same_order(
    api: httpx.AsyncClient, broker: Handles
) -> None:
    headers = {"Idempotency-Key": "retry-me-1"}
    first = await api.post("/orders", json=order_body(), headers=headers)
    second = await api.post("/orders", json=order_body(), headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["order_id"] == second.json()["order_id"]
    assert second.headers["location"] == first.headers["location"]
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert await order_keys(broker) == [first.json()["order_id"]]
    assert await work_messages(broker) == 1


async def test_concurrent_requests_with_one_key_make_one_order(
    api: httpx.AsyncClient, broker: Handles
) -> None:
    headers = {"Idempotency-Key": "racing-key"}
    responses = await asyncio.gather(
        *(api.post("/orders", json=order_body(), headers=headers) for _ in range(10))
    )
    assert [r.status_code for r in responses] == [202] * 10, [r.text for r in responses]
    ids = {r.json()["order_id"] for r in responses}
    assert len(ids) == 1
    assert sum("idempotent-replayed" not in r.headers for r in responses) == 1
    assert await order_keys(broker) == list(ids)
    assert await work_messages(broker) == 1


async def test_same_key_with_another_body_is_422(api: httpx.AsyncClient, broker: Handles) -> None:
    headers = {"Idempotency-Key": "one-body-only"}
    first = await api.post("/orders", json=order_body(), headers=headers)
    assert first.status_code == 202
    other = await api.post(
        "/orders", json=order_body(contact={"email": "a@example.com"}), headers=headers
    )
    problem = assert_problem(other, 422, "Idempotency-Key")
    assert problem["type"] == "https://orderflow.dev/problems/idempotency-conflict"
    assert await order_keys(broker) == [first.json()["order_id"]]
    assert await work_messages(broker) == 1


async def test_idempotency_keys_belong_to_one_customer(
    api: httpx.AsyncClient, broker: Handles
) -> None:
    """Two customers who pick the same key each get their own order: neither replays, blocks
    nor learns of the other's."""
    headers = {"Idempotency-Key": "common-choice"}
    first = await api.post("/orders", json=order_body(customer_id="cust-1"), headers=headers)
    second = await api.post("/orders", json=order_body(customer_id="cust-2"), headers=headers)
    assert first.status_code == second.status_code == 202, second.text
    assert "idempotent-replayed" not in second.headers
    ids = {first.json()["order_id"], second.json()["order_id"]}
    assert len(ids) == 2
    assert sorted(await order_keys(broker)) == sorted(ids)


@pytest.mark.parametrize(
    "key",
    [b"", b"k" * 256, "clé".encode(), b"has space", b"tab\tinside"],
    ids=["empty", "256 chars", "non-ASCII", "space", "control char"],
)
async def test_invalid_idempotency_key_is_400(
    api: httpx.AsyncClient, broker: Handles, key: bytes
) -> None:
    response = await api.post("/orders", json=order_body(), headers={b"Idempotency-Key": key})
    assert_problem(response, 400, "Idempotency-Key")
    await assert_nothing_stored(broker)


async def test_longest_idempotency_key_is_accepted(api: httpx.AsyncClient) -> None:
    key = "".join(chr(c) for c in range(0x21, 0x7F)) * 3  # every visible ASCII character
    response = await api.post("/orders", json=order_body(), headers={"Idempotency-Key": key[:255]})
    assert response.status_code == 202, response.text


async def test_health_and_readiness(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert set(ready.json()["read_model"]) == {
        "checkpoint", "stream_last_seq", "lag_messages", "lag_seconds", "applied",
    }  # fmt: skip


async def test_readiness_names_a_missing_resource(api: httpx.AsyncClient, broker: Handles) -> None:
    await broker.js.delete_key_value("nodes")
    problem = assert_problem(await api.get("/readyz"), 503)
    assert "bucket nodes is missing" in problem["detail"]


async def test_openapi_describes_the_order_body(api: httpx.AsyncClient) -> None:
    response = await api.get("/schema/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    submit = doc["paths"]["/orders"]["post"]
    assert submit["requestBody"]["required"] is True
    order_request = submit["requestBody"]["content"]["application/json"]["schema"]
    assert order_request["title"] == "OrderRequest"
    properties = {
        "customer_id", "items", "amount", "fail_at", "poison_at", "payment_token", "contact",
    }  # fmt: skip
    assert set(order_request["properties"]) == properties
    assert order_request["required"] == ["customer_id", "items"]
    assert order_request["additionalProperties"] is False  # unknown fields are refused
    items = order_request["properties"]["items"]
    assert (items["minItems"], items["maxItems"]) == (1, 100)
    quantity = items["items"]["properties"]["quantity"]
    assert (quantity["type"], quantity["minimum"], quantity["maximum"]) == ("integer", 1, 10_000)
    assert set(submit["responses"]) >= {"202", "400", "413", "415", "422", "503"}
    problem = submit["responses"]["422"]["content"]["application/problem+json"]["schema"]
    assert problem == {"$ref": "#/components/schemas/Problem"}
    assert "requestBody" not in doc["paths"]["/orders/{order_id}"]["get"]
