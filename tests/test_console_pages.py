"""The console's pages over its session, in-process (``tests/test_console.py`` drives them in
a real browser): each page renders what the JSON routes answer, checks the scope its data
needs, keeps a customer's token to its orders, names a bad filter, and its forms act (CSRF
token included) or refuse with the API's status, changing nothing. No node runs here.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import msgspec
import pytest

from api.browser import CSRF_FIELD, SESSION_STORE
from api.paths import CONSOLE_CLUSTER, CONSOLE_DEAD_LETTERS, CONSOLE_ORDERS, CONSOLE_PRODUCTS
from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.security.scopes import OPS, ORDERS_READ
from nodeapp.security.tokens import parse_token
from tests.support.api_fixtures import order_body
from tests.support.browser import browser, csrf_field, log_in
from tests.support.catalog import PRICES
from tests.support.dead_letters import park
from tests.support.tokens import TEST_ADMIN_TOKEN, mint_token
from tests.support.waiting import wait_for

UNKNOWN_ORDER = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
_ROW = re.compile(r'<tr data-order-id="([0-9A-Z]{26})"')


async def submit(api: httpx.AsyncClient, customer: str = "cust-1") -> str:
    answer = await api.post("/orders", json=order_body(customer_id=customer))
    assert answer.status_code == 202, answer.text
    order_id: str = answer.json()["order_id"]
    return order_id


def listed(page: httpx.Response) -> list[str]:
    """The order ids of an orders page's rows (and a dead-letter page's), in order."""
    return _ROW.findall(page.text)


@pytest.fixture
async def tab(api: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    """A browser logged in as the test admin."""
    async with browser(api) as logged_in:
        assert (await log_in(logged_in, TEST_ADMIN_TOKEN)).status_code == 303
        yield logged_in


async def post_form(tab: httpx.AsyncClient, page: str, action: str) -> httpx.Response:
    """Send a form of ``page`` (its CSRF token included) to ``action``."""
    shown = await tab.get(page)
    assert shown.status_code == 200, shown.text
    return await tab.post(action, data={CSRF_FIELD: csrf_field(shown)})


async def test_every_page_renders_for_the_admin(
    api: httpx.AsyncClient, tab: httpx.AsyncClient
) -> None:
    order_id = await submit(api)

    async def listed() -> bool:  # the list is the read model's: it follows within moments
        return order_id in (await tab.get(CONSOLE_ORDERS)).text

    await wait_for(listed, within=10)
    pages = {
        "/console/": "Welcome",
        CONSOLE_ORDERS: order_id,
        f"{CONSOLE_ORDERS}/{order_id}": "Pre-Processing",
        f"{CONSOLE_ORDERS}/{order_id}/timeline": 'id="timeline"',
        CONSOLE_CLUSTER: "No live node",
        CONSOLE_DEAD_LETTERS: "No dead letters.",
        CONSOLE_PRODUCTS: "test product sku-1",
    }
    for path, shown in pages.items():
        page = await tab.get(path)
        assert page.status_code == 200, (path, page.text)
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert shown in page.text, path
        assert " style=" not in page.text, path  # the CSP allows no inline style
        assert "<script>" not in page.text, path  # nor inline script
    fragment = (await tab.get(f"{CONSOLE_ORDERS}/{order_id}/timeline")).text
    assert fragment.lstrip().startswith("<section"), "the live part alone, no page around it"
    for product_id in PRICES:
        assert f'data-product-id="{product_id}"' in (await tab.get(CONSOLE_PRODUCTS)).text
    assert (await tab.get("/console/static/console.js")).status_code == 200
    assert (await tab.get("/console/static/console.css")).status_code == 200


async def test_each_page_needs_the_scope_its_data_needs(
    api: httpx.AsyncClient, broker: Handles, settings: Settings
) -> None:
    order_id = await submit(api)
    reader = await mint_token(broker, settings, ORDERS_READ, name="reader")
    operator = await mint_token(broker, settings, OPS, name="operator")
    allowed = {
        reader: {CONSOLE_ORDERS, f"{CONSOLE_ORDERS}/{order_id}", CONSOLE_PRODUCTS},
        operator: {CONSOLE_CLUSTER, CONSOLE_DEAD_LETTERS, CONSOLE_PRODUCTS},
    }
    every = {path for paths in allowed.values() for path in paths}
    for token, paths in allowed.items():
        async with browser(api) as tab:
            assert (await log_in(tab, token)).status_code == 303
            home = (await tab.get("/console/")).text
            for path in every:
                page = await tab.get(path)
                assert page.status_code == (200 if path in paths else 403), (path, page.text)
                if page.status_code == 403:
                    assert "This page is not for this token" in page.text
                menu_link = f'<a href="{path}"'
                assert (menu_link in home) == (path in paths) or "/orders/" in path
    async with browser(api) as tab:  # reading orders is not cancelling them
        assert (await log_in(tab, reader)).status_code == 303
        order_page = await tab.get(f"{CONSOLE_ORDERS}/{order_id}")
        assert "Cancel order" not in order_page.text
        refused = await tab.post(
            f"{CONSOLE_ORDERS}/{order_id}/cancel", data={CSRF_FIELD: csrf_field(order_page)}
        )
        assert refused.status_code == 403
    assert (await broker.store.get(order_id)).cancel_requested_at is None


async def test_a_customer_token_sees_only_its_orders(
    api: httpx.AsyncClient, broker: Handles, settings: Settings
) -> None:
    mine = [await submit(api, "cust-1") for _ in range(2)]
    theirs = await submit(api, "cust-2")
    token = await mint_token(broker, settings, ORDERS_READ, customer="cust-1", name="c1")
    async with browser(api) as tab:
        assert (await log_in(tab, token)).status_code == 303

        async def everything_listed() -> list[str]:
            return listed(await tab.get(CONSOLE_ORDERS))

        assert sorted(await _eventually(everything_listed, 2)) == sorted(mine)
        asked_for_theirs = await tab.get(CONSOLE_ORDERS, params={"customer_id": "cust-2"})
        assert (asked_for_theirs.status_code, listed(asked_for_theirs)) == (200, [])
        for path in ("", "/timeline", "/events"):
            page = await tab.get(f"{CONSOLE_ORDERS}/{theirs}{path}")
            assert page.status_code == 404, path
            assert theirs in page.text or path == "/events"


async def test_filters_and_paging(api: httpx.AsyncClient, tab: httpx.AsyncClient) -> None:
    first = [await submit(api, "cust-1") for _ in range(3)]
    other = await submit(api, "cust-2")

    async def everything() -> list[str]:
        return listed(await tab.get(CONSOLE_ORDERS))

    await _eventually(everything, 4)  # all four projected (the read model applies in batches)
    page_one = listed(await tab.get(CONSOLE_ORDERS, params={"customer_id": "cust-1", "limit": "2"}))
    assert page_one == first[::-1][:2]  # newest first
    shown = await tab.get(CONSOLE_ORDERS, params={"customer_id": "cust-1", "limit": "2"})
    found = re.search(r'href="([^"]+)" rel="next"', shown.text)
    assert found, shown.text
    next_page = await tab.get(found[1].replace("&amp;", "&"))
    assert listed(next_page) == first[:1]  # the filter carried over, nothing repeated
    assert other not in listed(next_page)
    statuses = await tab.get(CONSOLE_ORDERS, params={"status": "completed"})
    assert listed(statuses) == []
    window = await tab.get(
        CONSOLE_ORDERS, params={"created_after": "2000-01-01T00:00", "customer_id": "cust-2"}
    )
    assert listed(window) == [other]  # a browser's zone-less time is read as UTC


async def test_a_bad_filter_is_named_and_lists_nothing(tab: httpx.AsyncClient) -> None:
    page = await tab.get(
        CONSOLE_ORDERS,
        params={"status": "bogus", "limit": "0", "created_before": "yesterday"},
    )
    assert page.status_code == 422
    for field in ("status", "limit", "created_before"):
        assert f'id="{field}-error"' in page.text, field
    assert listed(page) == []
    unknown = await tab.get(CONSOLE_ORDERS, params={"colour": "red"})
    assert unknown.status_code == 422
    assert unknown.headers["content-type"].startswith("text/html")
    assert "<code>colour</code> is not a query parameter of this route" in unknown.text


async def test_the_session_keeps_the_token_id_not_the_token(
    api: httpx.AsyncClient, broker: Handles, settings: Settings
) -> None:
    token = await mint_token(broker, settings, ORDERS_READ, name="reader")
    transport = api._transport
    assert isinstance(transport, httpx.ASGITransport)
    store = transport.app.stores.get(SESSION_STORE)  # type: ignore[attr-defined]
    async with browser(api) as tab:
        assert (await log_in(tab, token)).status_code == 303
        kept = await store.get(tab.cookies["orderflow_session"])
    assert kept is not None
    assert token.encode() not in kept
    assert msgspec.json.decode(kept) == {"token_id": parse_token(token)[0]}


async def test_cancel_from_the_console(
    api: httpx.AsyncClient, tab: httpx.AsyncClient, broker: Handles
) -> None:
    order_id = await submit(api)
    page = f"{CONSOLE_ORDERS}/{order_id}"
    answer = await post_form(tab, page, f"{page}/cancel")
    assert (answer.status_code, answer.headers["location"]) == (303, page)
    shown = await tab.get(page)
    assert "Cancelled: no step had started." in shown.text
    assert 'data-terminal="true"' in shown.text
    assert "Cancel order" not in shown.text
    assert "Cancelled: no step" not in (await tab.get(page)).text  # said once
    assert (await broker.store.get(order_id)).status == "cancelled"
    revision = (await broker.store.get(order_id)).revision
    again = await tab.post(f"{page}/cancel", data={CSRF_FIELD: csrf_field(shown)})
    assert again.status_code == 409
    assert "already" in again.text
    assert (await broker.store.get(order_id)).revision == revision  # nothing changed
    unknown = f"{CONSOLE_ORDERS}/{UNKNOWN_ORDER}/cancel"
    assert (await tab.post(unknown, data={CSRF_FIELD: csrf_field(shown)})).status_code == 404


async def test_the_events_of_a_finished_order_end_after_its_last_revision(
    api: httpx.AsyncClient, tab: httpx.AsyncClient
) -> None:
    order_id = await submit(api)
    assert (await api.post(f"/orders/{order_id}/cancel")).status_code == 202
    answer = await tab.get(f"{CONSOLE_ORDERS}/{order_id}/events")  # ends by itself
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert '"status":"cancelled"' in answer.text
    assert "event: order" in answer.text


async def test_replay_from_the_dead_letters_page(
    api: httpx.AsyncClient, tab: httpx.AsyncClient, broker: Handles
) -> None:
    order_id = await submit(api)
    await park(broker, order_id)
    page = await tab.get(CONSOLE_DEAD_LETTERS)
    assert order_id in page.text
    assert "max deliveries reached (3)" in page.text
    answer = await tab.post(
        f"{CONSOLE_DEAD_LETTERS}/{order_id}/replay", data={CSRF_FIELD: csrf_field(page)}
    )
    assert (answer.status_code, answer.headers["location"]) == (303, CONSOLE_DEAD_LETTERS)
    after = await tab.get(CONSOLE_DEAD_LETTERS)
    assert f"Order {order_id} replayed" in after.text
    assert "No dead letters." in after.text
    assert (await broker.store.get(order_id)).dead_letter is None
    again = await tab.post(
        f"{CONSOLE_DEAD_LETTERS}/{order_id}/replay", data={CSRF_FIELD: csrf_field(after)}
    )
    assert again.status_code == 404
    assert f"no dead letter for order {order_id}" in again.text


async def test_a_drain_of_no_node_is_a_404_page(tab: httpx.AsyncClient) -> None:
    page = await tab.get(CONSOLE_CLUSTER)
    for node_id in ("node-gone", "bad.id"):
        answer = await tab.post(
            f"{CONSOLE_CLUSTER}/nodes/{node_id}/drain", data={CSRF_FIELD: csrf_field(page)}
        )
        assert answer.status_code == 404, answer.text
        assert answer.headers["content-type"].startswith("text/html")


async def test_forms_without_their_csrf_token_are_refused_and_change_nothing(
    api: httpx.AsyncClient, tab: httpx.AsyncClient, broker: Handles
) -> None:
    order_id = await submit(api)
    other = await submit(api)
    await park(broker, other)
    for action in (
        f"{CONSOLE_ORDERS}/{order_id}/cancel",
        f"{CONSOLE_DEAD_LETTERS}/{other}/replay",
        f"{CONSOLE_CLUSTER}/nodes/node-1/drain",
    ):
        refused = await tab.post(action, data={"reason": "cross-site"})
        assert refused.status_code == 403, action
        assert "did not come from this console" in refused.text
    assert (await broker.store.get(order_id)).cancel_requested_at is None
    assert (await broker.store.get(other)).dead_letter is not None


async def _eventually(probe: Callable[[], Awaitable[list[str]]], count: int) -> list[str]:
    """The probe's list once it has ``count`` entries (the read model follows in ~ms)."""

    async def enough() -> list[str] | None:
        found = await probe()
        return found if len(found) >= count else None

    return await wait_for(enough, within=5.0)
