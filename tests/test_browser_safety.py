"""Browser safety on the console's login and placeholder page (DESIGN "Security" -> Browser):
the headers, the session cookie's flags, CSRF on every form, a session that is the only way
in, and bearer API calls left without cookie or CSRF token. A real nats-server and api app.
"""

from __future__ import annotations

import httpx
import msgspec
import pytest

from api import create_app
from api.browser import CSRF_COOKIE, CSRF_FIELD, SESSION_COOKIE
from api.console.access import console_access
from api.console.pages import PAGES, PUBLIC
from api.paths import CONSOLE_HOME, CONSOLE_LOGIN, CONSOLE_LOGOUT
from nodeapp.core.errors import SettingsError
from nodeapp.core.settings import Settings, load_settings
from nodeapp.orders.handles import Handles
from nodeapp.security.scopes import ORDERS_READ
from nodeapp.security.tokens import parse_token
from tests.support.api_fixtures import order_body, running_api, wait_ready
from tests.support.browser import browser, cookie_attributes, csrf_field, log_in, set_cookie
from tests.support.tokens import TEST_ADMIN_TOKEN, bearer, mint_token, token_store
from tests.support.waiting import wait_for

STRICT_COOKIE = {"secure", "httponly", "samesite=strict", "path=/console"}
CSP_DIRECTIVES = {
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'self'",
}


def assert_console_headers(response: httpx.Response) -> None:
    csp = {d.strip() for d in response.headers["content-security-policy"].split(";")}
    assert csp >= CSP_DIRECTIVES, csp
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"


def assert_login_redirect(response: httpx.Response) -> None:
    assert response.status_code == 303, response.text
    assert response.headers["location"] == CONSOLE_LOGIN


async def test_console_answers_carry_the_browser_safety_headers(api: httpx.AsyncClient) -> None:
    async with browser(api) as tab:
        page = await tab.get(CONSOLE_LOGIN)
        assert (page.status_code, page.headers["content-type"]) == (200, "text/html; charset=utf-8")
        redirect = await tab.get(CONSOLE_HOME)
        refusal = await tab.post(CONSOLE_LOGIN, data={"token": TEST_ADMIN_TOKEN})  # no CSRF
        assert (redirect.status_code, refusal.status_code) == (303, 403)
        for answer in (page, redirect, refusal):
            assert_console_headers(answer)
    answer = await api.get("/products")  # the API's JSON gets the harmless ones too
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"


async def test_login_keeps_a_secure_httponly_strict_session_cookie(api: httpx.AsyncClient) -> None:
    async with browser(api) as tab:
        form = await tab.get(CONSOLE_LOGIN)
        assert cookie_attributes(set_cookie(form, CSRF_COOKIE)) >= STRICT_COOKIE
        assert set_cookie(form, SESSION_COOKIE) is None  # nobody yet: nothing kept
        answer = await tab.post(
            CONSOLE_LOGIN, data={"token": TEST_ADMIN_TOKEN, CSRF_FIELD: csrf_field(form)}
        )
        assert (answer.status_code, answer.headers["location"]) == (303, CONSOLE_HOME)
        session = set_cookie(answer, SESSION_COOKIE)
        assert cookie_attributes(session) >= STRICT_COOKIE
        assert TEST_ADMIN_TOKEN not in str(session)  # an id; the token stays on the server
        home = await tab.get(CONSOLE_HOME)
        assert home.status_code == 200
        assert "orderflow console" in home.text
        assert "bootstrap admin" in home.text


async def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(
    api: httpx.AsyncClient,
) -> None:
    async with browser(api) as tab:
        await tab.get(CONSOLE_LOGIN)  # the CSRF cookie is there; the form field is not sent
        missing = await tab.post(CONSOLE_LOGIN, data={"token": TEST_ADMIN_TOKEN})
        forged = await tab.post(
            CONSOLE_LOGIN, data={"token": TEST_ADMIN_TOKEN, CSRF_FIELD: "0" * 128}
        )
        for refused in (missing, forged):
            assert refused.status_code == 403
            assert "did not come from this console" in refused.text
            assert set_cookie(refused, SESSION_COOKIE) is None
        assert_login_redirect(await tab.get(CONSOLE_HOME))  # not logged in

        assert (await log_in(tab, TEST_ADMIN_TOKEN)).status_code == 303
        assert (await tab.post(CONSOLE_LOGOUT)).status_code == 403
        page = await tab.get(CONSOLE_HOME)
        assert page.status_code == 200  # still logged in
        out = await tab.post(CONSOLE_LOGOUT, data={CSRF_FIELD: csrf_field(page)})
        assert_login_redirect(out)
        assert "max-age=0" in cookie_attributes(set_cookie(out, SESSION_COOKIE))
        assert_login_redirect(await tab.get(CONSOLE_HOME))


async def test_a_wrong_token_is_a_401_page_and_keeps_nothing(
    api: httpx.AsyncClient, broker: Handles, settings: Settings
) -> None:
    revoked = await mint_token(broker, settings, ORDERS_READ, name="gone")
    await (await token_store(broker, settings)).revoke(parse_token(revoked)[0])
    async with browser(api) as tab:
        for wrong in ("", "not-a-token", TEST_ADMIN_TOKEN + "x", revoked):
            answer = await log_in(tab, wrong)
            assert answer.status_code == 401, wrong
            assert "That token is not valid" in answer.text
            assert set_cookie(answer, SESSION_COOKIE) is None
            assert not wrong or wrong not in answer.text  # never echoed
        assert_login_redirect(await tab.get(CONSOLE_HOME))


async def test_a_console_page_needs_a_session_not_a_bearer_token(api: httpx.AsyncClient) -> None:
    async with browser(api) as tab:
        assert_login_redirect(await tab.get(CONSOLE_HOME))
        assert_login_redirect(await tab.get(CONSOLE_HOME, headers=bearer(TEST_ADMIN_TOKEN)))
        tab.cookies.set(SESSION_COOKIE, "made-up", domain="orderflow.test", path="/console")
        assert_login_redirect(await tab.get(CONSOLE_HOME))


async def test_login_starts_a_new_session_id(api: httpx.AsyncClient) -> None:
    """An id planted in the browser before the login never names the logged-in session."""
    planted = "planted-by-another-site"
    async with browser(api) as tab, browser(api) as attacker:
        tab.cookies.set(SESSION_COOKIE, planted, domain="orderflow.test", path="/console")
        answer = await log_in(tab, TEST_ADMIN_TOKEN)
        assert answer.status_code == 303
        assert answer.cookies[SESSION_COOKIE] != planted
        assert (await tab.get(CONSOLE_HOME)).status_code == 200
        attacker.cookies.set(SESSION_COOKIE, planted, domain="orderflow.test", path="/console")
        assert_login_redirect(await attacker.get(CONSOLE_HOME))


async def test_bearer_api_calls_need_no_csrf_token_and_get_no_cookie(
    api: httpx.AsyncClient,
) -> None:
    answers = [
        await api.post("/orders", json=order_body()),
        await api.put("/products/mug", json={"name": "Mug", "price": "4.50"}),
        await api.get("/products"),
    ]
    assert [a.status_code for a in answers] == [202, 201, 200]
    assert all("set-cookie" not in a.headers for a in answers)
    async with browser(api) as tab:  # and a console session opens no API route
        assert (await log_in(tab, TEST_ADMIN_TOKEN)).status_code == 303
        assert (await tab.get("/products")).status_code == 401


async def test_any_valid_token_logs_in_and_its_revocation_ends_the_session(
    api: httpx.AsyncClient, broker: Handles, settings: Settings
) -> None:
    """Logging in needs no particular scope (each page names its own); the token is verified
    at every request, so revoking it ends the session at once."""
    token = await mint_token(broker, settings, ORDERS_READ, customer="cust-1", name="reader")
    async with browser(api) as tab:
        assert (await log_in(tab, token)).status_code == 303
        home = await tab.get(CONSOLE_HOME)
        assert home.status_code == 200, home.text
        for shown in ("reader", "orders:read", "cust-1"):
            assert shown in home.text
        await (await token_store(broker, settings)).revoke(parse_token(token)[0])

        async def logged_out() -> httpx.Response | None:
            answer = await tab.get(CONSOLE_HOME)
            return answer if answer.status_code == 303 else None

        answer = await wait_for(logged_out, within=5.0, interval=0.05)
        assert_login_redirect(answer)
        assert "max-age=0" in cookie_attributes(set_cookie(answer, SESSION_COOKIE))


async def test_forms_are_signed_with_the_session_secret(
    settings: Settings, broker: Handles
) -> None:
    """Two api processes with one ``ORDERFLOW_SESSION_SECRET`` take each other's forms; a
    process with another secret refuses them, and its answer clears the stale token."""
    secret = "s" * 32
    shared = msgspec.structs.replace(settings, session_secret=secret)
    other = msgspec.structs.replace(settings, session_secret="o" * 32)
    async with running_api(shared) as first, running_api(shared) as second:
        await wait_ready(first)
        async with browser(first) as tab:
            form = await tab.get(CONSOLE_LOGIN)
        data = {"token": TEST_ADMIN_TOKEN, CSRF_FIELD: csrf_field(form)}
        async with browser(second) as tab:
            tab.cookies = form.cookies
            assert (await tab.post(CONSOLE_LOGIN, data=data)).status_code == 303
    async with running_api(other) as third, browser(third) as tab:
        # Linked before it closes: a link cancelled mid-connect leaves nats-py's socket to the
        # garbage collector, and its ResourceWarning fails whichever test is running then.
        await wait_ready(third)
        tab.cookies = form.cookies
        refused = await tab.post(CONSOLE_LOGIN, data=data)
        assert refused.status_code == 403
        assert "max-age=0" in cookie_attributes(set_cookie(refused, CSRF_COOKIE))


async def test_secure_cookies_can_be_turned_off_for_plain_http(
    settings: Settings, broker: Handles
) -> None:
    plain = msgspec.structs.replace(settings, cookie_secure=False)
    async with running_api(plain) as client, browser(client) as tab:
        await wait_ready(client)
        form = await tab.get(CONSOLE_LOGIN)
        answer = await log_in(tab, TEST_ADMIN_TOKEN)
        for header in (set_cookie(form, CSRF_COOKIE), set_cookie(answer, SESSION_COOKIE)):
            attributes = cookie_attributes(header)
            assert "secure" not in attributes
            assert attributes >= STRICT_COOKIE - {"secure"}


def test_every_console_page_but_the_login_is_behind_the_session() -> None:
    assert {h.handler_name for h in PUBLIC} == {"login_page", "log_in", "log_out"}
    assert PAGES, "the console has a page"
    app = create_app(Settings())
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if handler.fn in {p.fn for p in PAGES}:
                assert console_access in handler.resolve_guards()


def test_a_short_session_secret_is_refused() -> None:
    with pytest.raises(SettingsError, match="ORDERFLOW_SESSION_SECRET"):
        load_settings({"ORDERFLOW_SESSION_SECRET": "short"})
