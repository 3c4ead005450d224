"""The api's security contract (DESIGN part 2, Security) on the real app, a real nats-server and,
where another process matters, a real ``python -m api``: every route against every kind of
caller, customer isolation, revocation reaching another process, the rate limit, and no token
in clear where one could leak (the ``tokens`` bucket, the api's log)."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final, NamedTuple

import httpx
import msgspec
import nats.js.errors
import pytest

from api import create_app
from api.auth import unguarded_routes
from nodeapp.broker.resources import DLQ_STREAM
from nodeapp.cluster.control import DrainReply, drain_subject
from nodeapp.cluster.membership import Heartbeat, NodeStats
from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import encode
from nodeapp.security.bucket import TOKENS_BUCKET
from nodeapp.security.scopes import CATALOG_WRITE, OPS, ORDERS_READ, ORDERS_WRITE
from nodeapp.security.store import utcnow
from nodeapp.security.tokens import parse_token
from nodeapp.shop.notify_resources import STREAM as NOTIFICATIONS_STREAM
from tests.support.api_fixtures import (
    assert_problem,
    client_as,
    order_body,
    order_keys,
    work_messages,
)
from tests.support.services import ApiProcess
from tests.support.tokens import TEST_ADMIN_TOKEN, bearer, mint_token, token_store
from tests.support.waiting import wait_for

GHOST: Final = "ghost"  # a registered node whose drain subject the test answers
PRODUCT: Final = "sku-1"
NO_ORDER: Final = "01ARZ3NDEKTSV4RRFFQ69G5FAV"  # a well-formed order id that names no order
OPEN_PREFIXES: Final = (
    "/healthz", "/readyz", "/schema", "/payments/callback", "/sim/payments",
    "/console",  # no bearer token: a session, checked by the console's own guard
)  # fmt: skip


class Route(NamedTuple):
    """One route of DESIGN's table: a token with ``right`` passes (answering ``status``), one
    with only ``wrong`` gets 403; ``wrong`` None: any valid token passes."""

    method: str
    path: str  # {order} is the test's order, {node} a registered node
    right: str
    wrong: str | None
    status: int
    body: dict[str, Any] | None = None
    again: int | None = None  # the admin's call after the first changed things: its status

    @property
    def label(self) -> str:
        return f"{self.method} {self.path} as {self.right}"


ROUTES: Final = [
    Route("POST", "/orders", ORDERS_WRITE, ORDERS_READ, 202, order_body()),
    Route("GET", "/orders", ORDERS_READ, ORDERS_WRITE, 200),
    Route("GET", "/orders/{order}", ORDERS_READ, ORDERS_WRITE, 200),
    # A live order's stream does not end, and httpx's in-process transport answers only once it
    # has: the stream of an order that does not exist stands in (its 200: tests/test_events.py).
    Route("GET", f"/orders/{NO_ORDER}/events", ORDERS_READ, ORDERS_WRITE, 404),
    Route("GET", "/orders/{order}/history", ORDERS_READ, CATALOG_WRITE, 200),
    Route("GET", "/orders/{order}/history", OPS, ORDERS_WRITE, 200),
    Route("GET", "/orders/{order}/notifications", ORDERS_READ, OPS, 200),
    # No node runs: the first cancel ends the order at once, the admin's finds it cancelled.
    Route("POST", "/orders/{order}/cancel", ORDERS_WRITE, ORDERS_READ, 202, again=409),
    Route("GET", "/products", ORDERS_WRITE, None, 200),
    Route("GET", f"/products/{PRODUCT}", OPS, None, 200),
    Route("PUT", f"/products/{PRODUCT}", CATALOG_WRITE, ORDERS_WRITE, 200,
          {"name": "renamed", "price": "6.25"}),
    Route("POST", f"/products/{PRODUCT}/stock", CATALOG_WRITE, OPS, 200, {"delta": 5}),
    Route("GET", "/cluster", OPS, ORDERS_READ, 200),
    Route("GET", "/cluster/nodes/{node}", OPS, CATALOG_WRITE, 200),
    Route("POST", "/cluster/nodes/{node}/drain", OPS, ORDERS_WRITE, 202),
    Route("GET", "/dlq", OPS, ORDERS_READ, 200),
    Route("POST", "/dlq/{order}/replay", OPS, ORDERS_WRITE, 404),  # not dead-lettered: no such
    Route("GET", "/metrics", OPS, CATALOG_WRITE, 200),
    Route("GET", "/stats", OPS, ORDERS_READ, 200),
]  # fmt: skip


def unknown_token() -> str:
    """Well formed, but no token has this id."""
    return f"of_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"


def assert_401(response: httpx.Response, reason: str) -> None:
    problem = assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert f"API token {reason}" in problem["detail"], problem


async def register_ghost(broker: Handles, settings: Settings) -> list[bytes]:
    """A heartbeat for ``GHOST`` and a responder on its drain subject; the list collects the
    drain requests it gets."""
    beat = Heartbeat(
        node_id=GHOST, host=socket.gethostname(), pid=1, version="0.0.1", started_at=utcnow(),
        state="active", concurrency=settings.concurrency, in_flight=0, ops_url=None,
        counters=NodeStats(), updated_at=utcnow(),
    )  # fmt: skip
    await broker.buckets.nodes.put(GHOST, encode(beat))
    drains: list[bytes] = []

    async def answer(msg: Any) -> None:
        drains.append(msg.data)
        await msg.respond(encode(DrainReply(GHOST, "draining")))

    await broker.nc.subscribe(drain_subject(GHOST), cb=answer)
    return drains


async def stream_messages(broker: Handles, stream: str) -> int:
    count: int = (await broker.js.stream_info(stream)).state.messages
    return count


async def world(admin: httpx.AsyncClient, broker: Handles, order_id: str) -> dict[str, Any]:
    """Everything a refused request might have changed."""
    product = await admin.get(f"/products/{PRODUCT}")
    order = await admin.get(f"/orders/{order_id}")
    return {
        "orders": sorted(await order_keys(broker)),
        "work": await work_messages(broker),
        "dead letters": await stream_messages(broker, DLQ_STREAM),
        "notifications": await stream_messages(broker, NOTIFICATIONS_STREAM),
        "product": product.json(),
        "order": order.json(),
    }


class Callers(msgspec.Struct):
    """Token texts for every kind of caller."""

    by_scope: dict[str, str]
    revoked: str
    expired: str
    unknown: str


async def make_callers(broker: Handles, settings: Settings, api: httpx.AsyncClient) -> Callers:
    expired = await mint_token(broker, settings, ORDERS_READ, ttl=1, name="short")
    by_scope = {
        scope: await mint_token(broker, settings, scope, name=scope)
        for scope in (ORDERS_WRITE, ORDERS_READ, CATALOG_WRITE, OPS)
    }
    revoked = await mint_token(broker, settings, ORDERS_READ, OPS, CATALOG_WRITE, name="gone")
    await (await token_store(broker, settings)).revoke(parse_token(revoked)[0])

    async def has_expired() -> bool:
        response = await api.get("/products", headers=bearer(expired))
        return response.status_code == 401

    await wait_for(has_expired, within=5.0)
    return Callers(by_scope, revoked, expired, unknown_token())


@pytest.fixture
async def callers(broker: Handles, settings: Settings, api: httpx.AsyncClient) -> Callers:
    return await make_callers(broker, settings, api)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.label)
async def test_every_route_answers_each_kind_of_caller_as_specified(
    api: httpx.AsyncClient,
    broker: Handles,
    settings: Settings,
    callers: Callers,
    route: Route,
) -> None:
    drains = await register_ghost(broker, settings)
    submitted = await api.post("/orders", json=order_body())
    assert submitted.status_code == 202, submitted.text
    order_id = submitted.json()["order_id"]
    path = route.path.format(order=order_id, node=GHOST)
    before = await world(api, broker, order_id)

    async def call(headers: dict[str, str]) -> httpx.Response:
        async with client_as(api, None) as client:
            return await client.request(route.method, path, json=route.body, headers=headers)

    refusals: list[tuple[dict[str, str], str]] = [
        ({}, "missing"),
        ({"Authorization": "Bearer not-a-token"}, "malformed"),
        ({"Authorization": f"Basic {TEST_ADMIN_TOKEN}"}, "malformed"),
        (bearer(callers.unknown), "unknown"),
        (bearer(TEST_ADMIN_TOKEN + "x"), "malformed"),  # the admin's text, one character off
        (bearer(callers.revoked), "revoked"),
        (bearer(callers.expired), "expired"),
    ]
    for headers, reason in refusals:
        assert_401(await call(headers), reason)
    if route.wrong is not None:
        problem = assert_problem(await call(bearer(callers.by_scope[route.wrong])), 403)
        assert "this token lacks the scope" in problem["detail"], problem
        assert "WWW-Authenticate" not in (await call(bearer(callers.by_scope[route.wrong]))).headers
    assert await world(api, broker, order_id) == before, "a refused request changed something"
    assert drains == []

    right = (callers.by_scope[route.right], route.status)
    for token, status in (right, (TEST_ADMIN_TOKEN, route.again or route.status)):
        answer = await call(bearer(token))
        assert answer.status_code == status, (token == TEST_ADMIN_TOKEN, answer.text)
        if status >= 400:
            assert_problem(answer, status)


async def test_the_scope_is_checked_before_the_order_is_looked_up(
    api: httpx.AsyncClient, broker: Handles, settings: Settings
) -> None:
    writer = await mint_token(broker, settings, ORDERS_WRITE)
    async with client_as(api, writer) as client:
        for path in (
            "/orders/no-such-order",
            "/orders/no-such-order/history",
            "/orders/no-such-order/events",
            "/dlq",
        ):
            assert_problem(await client.get(path), 403)
        assert_problem(await client.put("/products/nope", json={"name": "n", "price": "1"}), 403)


def test_every_route_but_the_open_ones_is_guarded(settings: Settings) -> None:
    app = create_app(settings)
    assert unguarded_routes(app) == []
    # and the open ones are exactly DESIGN's (plus the simulated gateway the api hosts)
    open_routes = unguarded_routes(app, exempt=[r"^$"])
    assert open_routes, "the health, schema and payment routes take no token"
    for route in open_routes:
        assert route.split(" ", 1)[1].startswith(OPEN_PREFIXES), route


async def test_open_routes_answer_without_a_token(api: httpx.AsyncClient) -> None:
    async with client_as(api, None) as anonymous:
        assert (await anonymous.get("/healthz")).status_code == 200
        assert (await anonymous.get("/readyz")).status_code == 200
        assert (await anonymous.get("/schema/openapi.json")).status_code == 200
        # unsigned: refused by its signature check, not by the token check
        callback = await anonymous.post("/payments/callback", content=b"{}")
        assert "WWW-Authenticate" not in callback.headers
        assert assert_problem(callback, 401)["type"].endswith("/bad-signature")
        assert_401(await anonymous.get("/orders/x"), "missing")


async def test_refusals_are_measured(api: httpx.AsyncClient) -> None:
    async with client_as(api, None) as anonymous:
        assert_401(await anonymous.get("/cluster"), "missing")
    metrics = (await api.get("/metrics")).text
    assert 'route="/cluster",status="401"' in metrics.replace('method="GET",', "")


async def test_a_customer_token_sees_and_submits_only_its_own_orders(
    api: httpx.AsyncClient, broker: Handles, settings: Settings
) -> None:
    mine = await mint_token(broker, settings, ORDERS_READ, ORDERS_WRITE, customer="cust-1")
    theirs = (await api.post("/orders", json=order_body(customer_id="cust-2"))).json()["order_id"]
    async with client_as(api, mine) as customer:
        own = await customer.post("/orders", json=order_body(customer_id="cust-1"))
        assert own.status_code == 202, own.text
        own_id = own.json()["order_id"]
        stored = (sorted(await order_keys(broker)), await work_messages(broker))

        refused = await customer.post("/orders", json=order_body(customer_id="cust-2"))
        assert "cust-1" in assert_problem(refused, 403)["detail"]
        assert (sorted(await order_keys(broker)), await work_messages(broker)) == stored

        for suffix in ("", "/history", "/notifications"):
            assert (await customer.get(f"/orders/{own_id}{suffix}")).status_code == 200
            hidden = assert_problem(await customer.get(f"/orders/{theirs}{suffix}"), 404)
            absent = assert_problem(await customer.get(f"/orders/ord-none{suffix}"), 404)
            # told exactly as an order that does not exist
            assert hidden["detail"].replace(theirs, "ID") == absent["detail"].replace(
                "ord-none", "ID"
            )
            assert (await api.get(f"/orders/{theirs}{suffix}")).status_code == 200  # admin


@pytest.fixture
async def api_process(
    settings: Settings, broker: Handles, tmp_path: Path
) -> AsyncIterator[ApiProcess]:
    process = ApiProcess(settings, tmp_path / "api.log")
    try:
        await process.wait_ready()
        yield process
    finally:
        assert process.stop() == 0


async def test_a_revocation_reaches_another_api_process_within_2s(
    api: httpx.AsyncClient, broker: Handles, settings: Settings, api_process: ApiProcess
) -> None:
    token = await mint_token(broker, settings, ORDERS_READ, name="to-revoke")
    async with api_process.client(token) as remote, client_as(api, token) as local:
        assert (await remote.get("/products")).status_code == 200  # now in its cache
        assert (await local.get("/products")).status_code == 200
        await (await token_store(broker, settings)).revoke(parse_token(token)[0])

        async def refused() -> bool:
            answers = await asyncio.gather(remote.get("/products"), local.get("/products"))
            return all(a.status_code == 401 for a in answers)

        await wait_for(refused, within=2.0, interval=0.05)
        assert_401(await remote.get("/products"), "revoked")


async def test_no_token_in_clear_in_the_tokens_bucket_or_the_api_log(
    broker: Handles, settings: Settings, api_process: ApiProcess
) -> None:
    texts = [
        await mint_token(broker, settings, ORDERS_READ, name="reader"),
        await mint_token(broker, settings, OPS, customer="cust-9", name="ops"),
        await mint_token(broker, settings, ORDERS_WRITE, ttl=3600, name="writer"),
    ]
    await (await token_store(broker, settings)).revoke(parse_token(texts[0])[0])
    presented = [*texts, TEST_ADMIN_TOKEN, unknown_token()]
    async with api_process.client(None) as http:
        for text in presented:
            for wrong in (text, text + "x", text[:-1]):
                for method, path in (
                    ("GET", "/orders/x"),
                    ("GET", "/cluster"),
                    ("POST", "/orders"),
                ):
                    await http.request(method, path, headers=bearer(wrong), json=order_body())
    secrets_ = [TEST_ADMIN_TOKEN, *(parse_token(t)[1] for t in texts)]
    assert api_process.log_path is not None
    log = api_process.log_path.read_text(encoding="utf-8")
    assert "auth.refused" in log  # refusals are logged, by reason and token id
    for secret in secrets_:
        assert secret not in log
        assert secret[:20] not in log
    info = await broker.js.stream_info(f"KV_{TOKENS_BUCKET}")
    assert info.state.messages >= len(texts)
    raw = b""
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await broker.js.get_msg(f"KV_{TOKENS_BUCKET}", seq)
        except nats.js.errors.NotFoundError:
            continue
        raw += (msg.subject or "").encode() + (msg.data or b"") + repr(msg.headers).encode()
    for secret in secrets_:
        assert secret.encode() not in raw


async def test_a_token_over_the_rate_limit_gets_429_while_another_is_unaffected(
    broker: Handles, settings: Settings, tmp_path: Path
) -> None:
    slow = msgspec.structs.replace(settings, rate_limit=2.0)  # ORDERFLOW_RATE_LIMIT=2: burst 4
    noisy = await mint_token(broker, slow, ORDERS_READ, name="noisy")
    quiet = await mint_token(broker, slow, ORDERS_READ, name="quiet")
    process = ApiProcess(slow, tmp_path / "api.log")
    try:
        await process.wait_ready()
        async with process.client(noisy) as http, process.client(quiet) as other:
            burst = await asyncio.gather(*(http.get("/products") for _ in range(12)))
            statuses = [r.status_code for r in burst]
            assert statuses.count(200) <= 5, statuses  # the burst (4), maybe one refilled
            assert statuses.count(429) >= 7, statuses
            limited = next(r for r in burst if r.status_code == 429)
            assert assert_problem(limited, 429)["type"].endswith("/rate-limited")
            assert int(limited.headers["Retry-After"]) >= 1
            assert (await other.get("/products")).status_code == 200

            async def refilled() -> bool:
                return (await http.get("/products")).status_code == 200

            # ... and it comes back once the bucket refills (Retry-After says when).
            await wait_for(refilled, within=float(limited.headers["Retry-After"]) + 5)
    finally:
        assert process.stop() == 0
