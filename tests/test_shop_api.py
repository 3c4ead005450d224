"""The shop at the api: submits priced from the catalog (refusals store and publish nothing),
the signed payment callback route, the simulated gateway it hosts, an order's notifications,
and orders paid and notified end to end with a real node."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import httpx
import msgspec
import pytest

from nodeapp.broker.kv import live_keys
from nodeapp.core.settings import Settings
from nodeapp.core.signing import SIGNATURE_HEADER, sign
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import new_order_id
from nodeapp.shop.callbacks import read
from nodeapp.shop.catalog import Catalog
from nodeapp.shop.notify_resources import SCHEDULE_PREFIX, STREAM
from nodeapp.shop.payment_messages import CallbackStatus, PaymentCallback, encode
from nodeapp.shop.products import Product
from nodeapp.shop.resources import ShopBuckets, ensure_shop_resources
from tests.support.api_fixtures import (
    PAYMENT_SECRET,
    ServedApi,
    assert_nothing_stored,
    assert_problem,
    order_body,
    running_api,
    serve_api,
    wait_ready,
)
from tests.support.nodes import running_node
from tests.support.waiting import wait_for

UNKNOWN_ORDER: Final = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
UNKNOWN_ITEM: Final = {"product_id": "nope", "quantity": 2}


@pytest.fixture
async def shop(broker: Handles, settings: Settings) -> ShopBuckets:
    return await ensure_shop_resources(broker.js, settings)


@pytest.fixture
async def signed_api(settings: Settings, broker: Handles) -> AsyncIterator[httpx.AsyncClient]:
    """The in-process api with a payment secret, so signed callbacks can be verified."""
    async with running_api(msgspec.structs.replace(settings, payment_secret=PAYMENT_SECRET)) as api:
        await wait_ready(api)
        yield api


async def schedules(broker: Handles) -> dict[str, int]:
    """``order.delayed`` schedules on the NOTIFICATIONS stream, per subject."""
    info = await broker.js.stream_info(STREAM, subjects_filter=SCHEDULE_PREFIX + ">")
    return dict(info.state.subjects or {})


async def assert_refusal_left_nothing(broker: Handles) -> None:
    await assert_nothing_stored(broker)
    assert await schedules(broker) == {}
    assert await live_keys(broker.js, broker.buckets.idempotency) == []


# --- submit, priced from the catalog -------------------------------------------------------


async def test_the_order_stores_unit_prices_and_the_catalogs_total(
    api: httpx.AsyncClient, broker: Handles
) -> None:
    items = [
        {"product_id": "sku-1", "quantity": 2},
        {"product_id": "a:1", "quantity": 3},
        {"product_id": "sku-1", "quantity": 1},
    ]
    response = await api.post("/orders", json=order_body(items=items, amount=None))
    assert response.status_code == 202, response.text
    order = (await api.get(response.headers["location"])).json()
    assert [(i["product_id"], i["quantity"], i["unit_price"]) for i in order["items"]] == [
        ("sku-1", 2, "6.25"), ("a:1", 3, "2.50"), ("sku-1", 1, "6.25"),
    ]  # fmt: skip
    assert order["amount"] == "26.25"
    assert await schedules(broker) == {SCHEDULE_PREFIX + order["order_id"]: 1}


async def test_payment_token_and_contact_are_stored(api: httpx.AsyncClient) -> None:
    contact = {"email": "ann.lee+orders@example.co.uk", "phone": "+44 20 7946 0958"}
    body = order_body(payment_token="tok_decline_card", contact=contact)
    response = await api.post("/orders", json=body)
    assert response.status_code == 202, response.text
    order = (await api.get(response.headers["location"])).json()
    assert (order["payment_token"], order["contact"]) == ("tok_decline_card", contact)
    only_phone = await api.post("/orders", json=order_body(contact={"phone": "0301234567"}))
    order = (await api.get(only_phone.headers["location"])).json()
    assert order["contact"] == {"email": None, "phone": "0301234567"}


REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "unknown product",
        order_body(items=[{"product_id": "sku-1", "quantity": 1}, UNKNOWN_ITEM]),
        "items[1].product_id",
        "nope is not a product",
    ),
    (
        "inactive product",
        order_body(items=[{"product_id": "old", "quantity": 1}], amount=None),
        "items[0].product_id",
        "old is not for sale (inactive)",
    ),
    ("amount not the total", order_body(amount="12.49"), "amount", "expected 12.50"),
    ("amount zero", order_body(amount=0), "amount", "expected 12.50"),
    ("email without a domain", order_body(contact={"email": "ann@"}), "contact.email", "e-mail"),
    ("email with a space", order_body(contact={"email": "a b@x.org"}), "contact.email", "e-mail"),
    ("email over 254", order_body(contact={"email": "a" * 250 + "@x.org"}), "contact.email", ""),
    ("phone with letters", order_body(contact={"phone": "call me"}), "contact.phone", "phone"),
    ("phone too short", order_body(contact={"phone": "+12"}), "contact.phone", ""),
    ("phone over 20 digits", order_body(contact={"phone": "1" * 21}), "contact.phone", "phone"),
    ("contact unknown field", order_body(contact={"fax": "123"}), "contact.fax", "not allowed"),
    ("contact not an object", order_body(contact="ann@example.com"), "contact", ""),
    ("payment_token empty", order_body(payment_token=""), "payment_token", ""),
    ("payment_token with a space", order_body(payment_token="tok ok"), "payment_token", ""),
    ("payment_token over 64", order_body(payment_token="t" * 65), "payment_token", ""),
]  # fmt: skip


@pytest.fixture
async def old_retired(broker: Handles, settings: Settings) -> None:
    """Product ``old`` off sale before the api starts, so its catalog cache starts so too (a
    change made later reaches the cache through its watch, a moment after)."""
    catalog = Catalog(broker.js, await ensure_shop_resources(broker.js, settings))
    await catalog.put(Product("old", "Old", Decimal("5.00"), active=False))


@pytest.fixture
def shop_api(old_retired: None, api: httpx.AsyncClient) -> httpx.AsyncClient:
    return api


@pytest.mark.parametrize(
    ("body", "field", "says"), [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED]
)
async def test_a_refused_submit_names_the_field_and_leaves_nothing(
    shop_api: httpx.AsyncClient, broker: Handles, body: dict[str, Any], field: str, says: str
) -> None:
    response = await shop_api.post("/orders", json=body, headers={"Idempotency-Key": "refused"})
    problem = assert_problem(response, 422, field)
    assert says in next(e["message"] for e in problem["errors"] if e["field"] == field)
    await assert_refusal_left_nothing(broker)


async def test_every_unknown_product_is_named_at_once(
    api: httpx.AsyncClient, broker: Handles
) -> None:
    items = [{"product_id": p, "quantity": 1} for p in ("ghost-1", "sku-1", "ghost-2")]
    problem = assert_problem(await api.post("/orders", json=order_body(items=items)), 422)
    assert [e["field"] for e in problem["errors"]] == ["items[0].product_id", "items[2].product_id"]
    await assert_refusal_left_nothing(broker)


async def test_a_retry_with_the_same_key_schedules_one_delayed_notification(
    api: httpx.AsyncClient, broker: Handles
) -> None:
    headers = {"Idempotency-Key": "retry-scheduled"}
    first = await api.post("/orders", json=order_body(), headers=headers)
    second = await api.post("/orders", json=order_body(), headers=headers)
    assert first.json()["order_id"] == second.json()["order_id"]
    assert await schedules(broker) == {SCHEDULE_PREFIX + first.json()["order_id"]: 1}


# --- the signed payment callback -------------------------------------------------------------


def callback_body(order_id: str, status: CallbackStatus = "approved") -> bytes:
    return encode(
        PaymentCallback(
            payment_id=order_id, order_id=order_id, status=status, amount=Decimal("12.50"),
            time=datetime.now(UTC),
        )
    )  # fmt: skip


async def post_callback(
    api: httpx.AsyncClient, body: bytes, signature: str | None
) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    return await api.post("/payments/callback", content=body, headers=headers)


async def test_badly_signed_callbacks_are_401_and_record_nothing(
    signed_api: httpx.AsyncClient, shop: ShopBuckets
) -> None:
    order_id = new_order_id()
    body = callback_body(order_id)
    secret = PAYMENT_SECRET.encode()
    refused = {
        "missing": None,
        "wrong secret": sign(b"not-the-secret", body),
        "other body": sign(secret, callback_body(order_id, "declined")),
        "10 minutes old": sign(secret, body, now=time.time() - 600),
        "10 minutes ahead": sign(secret, body, now=time.time() + 600),
        "malformed": "v1=abc",
    }
    for why, signature in refused.items():
        problem = assert_problem(await post_callback(signed_api, body, signature), 401)
        assert problem["type"] == "https://orderflow.dev/problems/bad-signature", why
    assert await read(shop.payments, order_id) is None


async def test_a_valid_callback_is_recorded_once_and_a_duplicate_is_harmless(
    signed_api: httpx.AsyncClient, shop: ShopBuckets
) -> None:
    order_id = new_order_id()
    body = callback_body(order_id)
    first = await post_callback(signed_api, body, sign(PAYMENT_SECRET.encode(), body))
    assert first.status_code == 200, first.text
    assert first.json() == {"order_id": order_id, "status": "approved", "duplicate": False}
    stored = await shop.payments.get(order_id)

    again = callback_body(order_id)  # the gateway re-sends: same verdict, a later time
    second = await post_callback(signed_api, again, sign(PAYMENT_SECRET.encode(), again))
    assert second.status_code == 200, second.text
    assert second.json()["duplicate"] is True
    assert (await shop.payments.get(order_id)).revision == stored.revision

    contra = callback_body(order_id, "declined")
    conflict = await post_callback(signed_api, contra, sign(PAYMENT_SECRET.encode(), contra))
    assert assert_problem(conflict, 409)["type"].endswith("/payment-conflict")
    assert (await shop.payments.get(order_id)).revision == stored.revision


async def test_without_a_secret_every_callback_is_refused(
    api: httpx.AsyncClient, shop: ShopBuckets
) -> None:
    order_id = new_order_id()
    body = callback_body(order_id)
    assert_problem(await post_callback(api, body, sign(b"", body)), 401)
    assert await read(shop.payments, order_id) is None


# --- the simulated gateway the api hosts -----------------------------------------------------


async def test_the_hosted_gateway_authorizes_and_calls_the_api_back(
    served_api: ServedApi, shop: ShopBuckets
) -> None:
    """The verdict for the api's own callback URL reaches its inbox in-process (ADR 0018): it is
    recorded, and no request to ``/payments/callback`` was ever served."""
    http, settings = served_api.http, served_api.settings
    order_id = new_order_id()
    body = {
        "order_id": order_id, "amount": "12.50", "token": "tok_visa", "epoch": 1,
        "callback_url": f"{settings.api_url}/payments/callback",
    }  # fmt: skip
    authorized = await http.post("/sim/payments/authorize", json=body)
    assert authorized.status_code == 202, authorized.text
    assert authorized.json()["status"] == "pending"

    async def recorded() -> PaymentCallback | None:
        return await read(shop.payments, order_id)

    verdict = await wait_for(recorded, within=10)
    assert (verdict.status, verdict.amount) == ("approved", Decimal("12.50"))

    async def delivery_recorded() -> dict[str, Any] | None:  # written after the hand-over
        entry: dict[str, Any] = (await http.get(f"/sim/payments/{order_id}")).json()
        return entry if entry["callbacks"] == 1 else None

    assert (await wait_for(delivery_recorded, within=10))["payment_id"] == order_id
    assert_problem(await http.get(f"/sim/payments/{UNKNOWN_ORDER}"), 404)
    served = (await http.get("/metrics")).text
    assert 'route="/sim/payments/authorize"' in served
    assert 'route="/payments/callback"' not in served


async def test_no_gateway_is_hosted_when_the_payment_url_names_one(
    settings: Settings, broker: Handles
) -> None:
    elsewhere = msgspec.structs.replace(settings, payment_url="http://payments.example:8001")
    async with running_api(elsewhere) as api:
        await wait_ready(api)
        assert_problem(await api.get(f"/sim/payments/{UNKNOWN_ORDER}"), 404)
        assert (await api.get("/healthz")).status_code == 200


# --- notifications and whole orders ----------------------------------------------------------


async def test_notifications_of_unknown_orders_are_404(api: httpx.AsyncClient) -> None:
    for order_id in (UNKNOWN_ORDER, "not-an-order"):
        assert_problem(await api.get(f"/orders/{order_id}/notifications"), 404)


async def submit(http: httpx.AsyncClient, **changes: Any) -> str:
    response = await http.post("/orders", json=order_body(**changes))
    assert response.status_code == 202, response.text
    order_id: str = response.json()["order_id"]
    return order_id


async def final(http: httpx.AsyncClient, order_id: str, within: float = 20.0) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        order: dict[str, Any] = (await http.get(f"/orders/{order_id}")).json()
        return order if order["status"] in ("completed", "failed") else None

    return await wait_for(probe, within)


async def notified(
    http: httpx.AsyncClient, order_id: str, kinds: set[str], within: float = 20.0
) -> dict[str, dict[str, Any]]:
    """The order's notifications by kind, once ``kinds`` are all listed."""

    async def probe() -> dict[str, dict[str, Any]] | None:
        response = await http.get(f"/orders/{order_id}/notifications")
        assert response.status_code == 200, response.text
        assert response.json()["order_id"] == order_id
        found = {n["kind"]: n for n in response.json()["notifications"]}
        return found if kinds <= set(found) else None

    return await wait_for(probe, within, interval=0.1)


async def test_orders_are_paid_at_the_hosted_gateway_and_notified(
    served_api: ServedApi,
) -> None:
    http = served_api.http
    async with running_node(served_api.settings, "node-shop"):
        paid = await submit(http, contact={"email": "ann@example.com"})
        declined = await submit(http, payment_token="tok_decline_insufficient_funds")
        completed, failed = await final(http, paid), await final(http, declined)
        assert completed["status"] == "completed", completed["failure"]
        assert (completed["payment"]["status"], completed["payment"]["amount"]) == (
            "captured", "12.50",
        )  # fmt: skip
        assert failed["status"] == "failed"
        assert failed["failure"]["reason"].startswith("payment_declined")
        assert failed["payment"]["status"] == "declined"
        sent = await notified(http, paid, {"order.completed"})
        assert sent["order.completed"]["state"] == "skipped"  # no webhook configured
        assert sent["order.completed"]["notification_id"] == f"{paid}:order.completed"
        assert set(await notified(http, declined, {"order.failed"})) == {"order.failed"}
    product = (await http.get("/products/sku-1")).json()
    assert product["stock"]["reserved"] == 0


@contextlib.asynccontextmanager
async def slow_to_pay(settings: Settings) -> AsyncIterator[ServedApi]:
    """An api whose orders are late after 0.3 s, and whose silent payments time out after 3 s."""
    async with serve_api(settings, order_sla=0.3, payment_timeout=3.0) as served:
        yield served


async def test_an_order_past_its_sla_gets_one_delayed_notification(
    settings: Settings, broker: Handles
) -> None:
    async with slow_to_pay(settings) as served, running_node(served.settings, "node-late"):
        late = await submit(served.http, payment_token="tok_silent_network")
        sent = await notified(served.http, late, {"order.delayed"})
        assert sent["order.delayed"]["notification_id"] == f"{late}:order.delayed"
        failed = await final(served.http, late)
        assert failed["failure"]["reason"].startswith("payment_timeout")
        sent = await notified(served.http, late, {"order.delayed", "order.failed"})
        assert set(sent) == {"order.delayed", "order.failed"}


async def test_openapi_documents_the_shop_routes(api: httpx.AsyncClient) -> None:
    doc = (await api.get("/schema/openapi.json")).json()
    paths = doc["paths"]
    callback = paths["/payments/callback"]["post"]
    schema = callback["requestBody"]["content"]["application/json"]["schema"]
    assert schema["title"] == "PaymentCallback"
    assert set(callback["responses"]) >= {"200", "401", "409", "422", "503"}
    notifications = paths["/orders/{order_id}/notifications"]["get"]
    assert set(notifications["responses"]) >= {"200", "404", "503"}
    assert "OrderNotifications" in doc["components"]["schemas"]
    submit_body = paths["/orders"]["post"]["requestBody"]["content"]["application/json"]
    contact = submit_body["schema"]["properties"]["contact"]
    assert "ContactRequest" in str(contact)
    assert not [p for p in paths if p.startswith("/sim/")]  # a third party's, not ours
