"""The console in a real headless Chromium (issue 10, test 5): a real ``python -m api``
process, real ``orderflow node`` processes with 0.3 s steps, a real nats-server.

Log in with a token; watch a submitted order move to Completed on its page without a reload;
filter the orders list; drain a node from the cluster page (its process exits); replay a dead
letter; a cross-site form without the CSRF token is refused (403) and changes nothing; and no
page draws a Content-Security-Policy complaint. ``test_console_pages`` checks the pages
in-process, without a browser.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import msgspec
import pytest
from playwright.async_api import Browser, Page, expect

from api.paths import CONSOLE_CLUSTER, CONSOLE_DEAD_LETTERS, CONSOLE_ORDERS, CONSOLE_PRODUCTS
from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from tests.support.api_fixtures import order_body
from tests.support.chromium import MISSING, CspWatch, chromium, chromium_missing, log_in
from tests.support.chromium import console_page as open_console_page
from tests.support.dead_letters import park
from tests.support.orders import wait_all_terminal, wait_terminal
from tests.support.processes import NodeProcess, NodeProcesses, wait_registered
from tests.support.services import ApiProcess
from tests.support.tokens import TEST_ADMIN_TOKEN
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.skipif(chromium_missing(), reason=MISSING)]

LIVE_WITHIN = 20_000  # ms, for Playwright's expectations


class Stack(NamedTuple):
    api: ApiProcess
    nodes: NodeProcesses
    broker: Handles


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Steps of 0.3 s: an order takes about 1.5 s, long enough to be seen moving."""
    return msgspec.structs.replace(
        settings, step_seconds=0.3, payment_secret="console-tests-payment-secret"
    )


@pytest.fixture(scope="session")
async def chromium_browser() -> AsyncIterator[Browser]:
    async with chromium() as browser:
        yield browser


@pytest.fixture
async def stack(
    settings: Settings, broker: Handles, node_processes: NodeProcesses, tmp_path: Path
) -> AsyncIterator[Stack]:
    """A ready api process; nodes start when a test says (``start_node``), paying at the
    gateway this api hosts."""
    api = ApiProcess(settings, tmp_path / "api.log")
    try:
        await api.wait_ready()
        node_processes.settings = msgspec.structs.replace(settings, api_url=api.url)
        yield Stack(api, node_processes, broker)
    finally:
        api.stop()


@pytest.fixture
async def console(chromium_browser: Browser, stack: Stack) -> AsyncIterator[tuple[Page, CspWatch]]:
    async with open_console_page(chromium_browser, stack.api.url) as opened:
        yield opened


async def start_node(stack: Stack, node_id: str = "node-a") -> NodeProcess:
    node = stack.nodes.start(node_id)
    await wait_registered(stack.broker, node)
    return node


async def submit(stack: Stack, **changes: Any) -> str:
    async with stack.api.client() as http:
        answer = await http.post("/orders", json=order_body(**changes))
    assert answer.status_code == 202, answer.text
    order_id: str = answer.json()["order_id"]
    return order_id


async def test_a_submitted_order_moves_to_completed_live_without_a_reload(
    stack: Stack, console: tuple[Page, CspWatch]
) -> None:
    page, csp = console
    await log_in(page, TEST_ADMIN_TOKEN)
    await expect(page.locator("header nav")).to_contain_text("Orders")
    order_id = await submit(stack)  # no node yet: it waits, accepted
    await page.goto(f"{CONSOLE_ORDERS}/{order_id}")
    await expect(page.locator("#order-status")).to_have_text("accepted")
    await expect(page.locator("#live")).to_have_text("following live")
    # Mark this document and record each status it shows: a reload would lose both.
    await page.evaluate(
        """() => {
          window.seen = [];
          const note = () => {
            const shown = document.querySelector("#order-status")?.textContent;
            if (shown && window.seen.at(-1) !== shown) window.seen.push(shown);
          };
          new MutationObserver(note).observe(document.body, {childList: true, subtree: true});
          note();
        }"""
    )

    await start_node(stack)
    await expect(page.locator("#order-status")).to_have_text("completed", timeout=LIVE_WITHIN)
    seen = await page.evaluate("window.seen")
    assert seen is not None, "the page was reloaded"
    assert seen[0] == "accepted"
    assert "running" in seen
    assert seen[-1] == "completed"
    await expect(page.locator("#live")).to_have_text("finished")
    await expect(page.locator("#steps .status-completed")).to_have_count(4)
    await expect(page.locator("#payment .status")).to_have_text("captured")
    await expect(page.locator("#cancel")).to_have_count(0)  # no Cancel for a finished order
    await expect(page.locator("#notifications [data-kind='order.completed']")).to_have_count(
        1, timeout=LIVE_WITHIN
    )
    assert await page.evaluate("window.seen !== undefined")
    csp.assert_clean()


async def test_filter_the_orders_list(
    stack: Stack, console: tuple[Page, CspWatch], broker: Handles
) -> None:
    page, csp = console
    ours = [await submit(stack, customer_id="c-ours") for _ in range(2)]
    failing = await submit(stack, customer_id="c-ours", fail_at="Processing")
    theirs = await submit(stack, customer_id="c-theirs")
    await start_node(stack)
    await wait_all_terminal(broker.store, [*ours, failing, theirs], within=30)
    await log_in(page, TEST_ADMIN_TOKEN)
    await page.click("header nav >> text=Orders")

    async def rows() -> list[str]:
        ids: list[str] = await page.locator("#orders tbody tr[data-order-id]").evaluate_all(
            "rows => rows.map(r => r.dataset.orderId)"
        )
        return ids

    async def listing_all() -> list[str] | None:
        await page.goto(CONSOLE_ORDERS)
        found = await rows()
        return found if len(found) == 4 else None  # the read model follows in milliseconds

    assert set(await wait_for(listing_all, within=10)) == {*ours, failing, theirs}
    await page.fill("input[name=customer_id]", "c-ours")
    await page.select_option("select[name=status]", "failed")
    await page.click("form.filters button[type=submit]")
    await page.wait_for_url("**/console/orders?*status=failed*")
    assert await rows() == [failing]
    await page.select_option("select[name=status]", "completed")
    await page.click("form.filters button[type=submit]")
    await page.wait_for_url("**/console/orders?*status=completed*")
    assert sorted(await rows()) == sorted(ours)
    await page.fill("input[name=product_id]", "no-such-product")
    await page.click("form.filters button[type=submit]")
    await expect(page.locator("#orders")).to_contain_text("No orders match these filters.")
    await page.fill("input[name=product_id]", "bad product!")
    await page.click("form.filters button[type=submit]")
    await expect(page.locator("#product_id-error")).to_be_visible()
    await page.click("text=Clear")
    assert len(await rows()) == 4
    csp.assert_clean()


async def test_drain_a_node_from_the_cluster_page(
    stack: Stack, console: tuple[Page, CspWatch]
) -> None:
    page, csp = console
    node = await start_node(stack, "node-a")
    await log_in(page, TEST_ADMIN_TOKEN)
    await page.click("header nav >> text=Cluster")
    row = page.locator("#nodes tr[data-node-id='node-a']")
    await expect(row).to_contain_text("active")
    await row.locator("button", has_text="Drain").click()
    await expect(page.locator(".flash")).to_have_text(
        "Node node-a is draining: it leaves the list when done."
    )
    assert await asyncio.to_thread(node.wait, 20.0) == 0, node.log_tail()

    async def gone() -> bool:
        await page.goto(CONSOLE_CLUSTER)
        return await page.locator("#nodes tr[data-node-id='node-a']").count() == 0

    await wait_for(gone, within=10)
    await expect(page.locator("#nodes")).to_contain_text("No live node")
    csp.assert_clean()


async def test_replay_a_dead_letter(
    stack: Stack, console: tuple[Page, CspWatch], broker: Handles
) -> None:
    page, csp = console
    order_id = await submit(stack)
    await park(broker, order_id)  # no node ran it: parked, as after its last delivery
    await start_node(stack)
    await log_in(page, TEST_ADMIN_TOKEN)
    await page.click("header nav >> text=Dead letters")
    row = page.locator(f"#dead-letters tr[data-order-id='{order_id}']")
    await expect(row).to_contain_text("max deliveries reached (3)")
    await row.locator("button", has_text="Replay").click()
    await expect(page.locator(".flash")).to_contain_text(f"Order {order_id} replayed")
    await expect(page.locator("#dead-letters")).to_contain_text("No dead letters.")
    done = await wait_terminal(broker.store, order_id, within=20)
    assert done.status == "completed"
    await page.goto(f"{CONSOLE_ORDERS}/{order_id}")
    await expect(page.locator("#order-status")).to_have_text("completed")
    csp.assert_clean()


async def test_a_cross_site_form_without_the_csrf_token_is_refused(
    stack: Stack, console: tuple[Page, CspWatch], broker: Handles
) -> None:
    page, csp = console
    order_id = await submit(stack)  # no node: it stays accepted, cancellable
    await log_in(page, TEST_ADMIN_TOKEN)
    action = f"{stack.api.url}{CONSOLE_ORDERS}/{order_id}/cancel"
    forged = (
        f'<form method="post" action="{action}"><input name="why" value="forged">'
        '<button type="submit">Win a prize</button></form>'
    )
    await page.route(
        "http://evil.test/**",
        lambda route: route.fulfill(body=forged, content_type="text/html"),
    )
    await page.goto("http://evil.test/")
    async with page.expect_navigation() as sent:
        await page.click("text=Win a prize")
    answer = await sent.value
    assert answer is not None
    assert answer.status == 403
    await expect(page.locator("[role=alert]")).to_contain_text("did not come from this console")

    # From the console's own page, a script posting without the token is refused too.
    await page.goto(f"{CONSOLE_ORDERS}/{order_id}")
    status = await page.evaluate(
        "async (url) => (await fetch(url, {method: 'POST', credentials: 'same-origin'})).status",
        f"{CONSOLE_ORDERS}/{order_id}/cancel",
    )
    assert status == 403
    order = await broker.store.get(order_id)
    assert (order.status, order.cancel_requested_at) == ("accepted", None)  # nothing changed
    await page.goto(f"{CONSOLE_ORDERS}/{order_id}")  # still logged in, the button still works
    await page.click("#cancel")
    await expect(page.locator("#order-status")).to_have_text("cancelled")
    csp.assert_clean()


async def test_no_page_draws_a_content_security_policy_complaint(
    stack: Stack, console: tuple[Page, CspWatch]
) -> None:
    page, csp = console
    order_id = await submit(stack)
    await start_node(stack)
    await page.goto("/console/login")
    await log_in(page, TEST_ADMIN_TOKEN)
    for path in (
        "/console/",
        CONSOLE_ORDERS,
        f"{CONSOLE_ORDERS}/{order_id}",
        CONSOLE_CLUSTER,
        CONSOLE_DEAD_LETTERS,
        CONSOLE_PRODUCTS,
    ):
        answer = await page.goto(path)
        assert answer is not None
        assert answer.status == 200, path
        assert "script-src 'self'" in (await answer.all_headers())["content-security-policy"]
        await expect(page.locator("link[rel=stylesheet]")).to_have_count(1)
        # The stylesheet applied: the header is dark, as only console.css makes it.
        colour = await page.eval_on_selector(
            "header.top", "el => getComputedStyle(el).backgroundColor"
        )
        assert colour == "rgb(23, 32, 46)", path
    csp.assert_clean()
    # The watch does see a violation: an inline script is refused, and said so.
    await page.evaluate(
        """() => {
          const inline = document.createElement("script");
          inline.textContent = "window.inline = true";
          document.head.append(inline);
        }"""
    )
    await wait_for(lambda: _complained(csp), within=5)
    assert await page.evaluate("window.inline === undefined")


async def _complained(csp: CspWatch) -> bool:
    return bool(csp.complaints)


async def test_the_console_needs_a_session(stack: Stack, console: tuple[Page, CspWatch]) -> None:
    """Without a session every page goes to the login; a bad token stays there, said why."""
    page, csp = console
    await page.goto(CONSOLE_ORDERS)
    await page.wait_for_url("**/console/login")
    await page.fill("#token", "of_not_a_token")
    await page.click("button[type=submit]")
    await expect(page.locator("[role=alert]")).to_contain_text("That token is not valid")
    async with httpx.AsyncClient(base_url=stack.api.url) as plain:
        assert (await plain.get(CONSOLE_CLUSTER)).status_code == 303
    csp.assert_clean()
