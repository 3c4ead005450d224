"""The api's bearer authentication, scope guards and rate limit, on a small Litestar app built
here with ``api.auth`` and a ``TokenCache`` on a real nats-server; the routes count their calls,
so a refused request is seen never to reach its handler."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
import msgspec
import pytest
from litestar import Litestar, Request, get, post
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.params import FromPath

from api.auth import (
    AUTH_EXCEPTION_HANDLERS,
    auth_middleware,
    check_customer,
    customer_of,
    requires,
    unguarded_routes,
)
from api.paths import HEALTHZ, SCHEMA
from api.problems import EXCEPTION_HANDLERS
from nodeapp.core.errors import InvalidTokenRequest, OrderNotFound
from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.security.bucket import ensure_tokens_bucket
from nodeapp.security.cache import TokenCache
from nodeapp.security.ratelimit import RateLimiter
from nodeapp.security.scopes import OPS, ORDERS_READ, ORDERS_WRITE
from nodeapp.security.store import TokenStore
from nodeapp.security.tokens import parse_token
from nodeapp.shop.payment_messages import CALLBACK_PATH, SIM_PREFIX
from tests.support.api_fixtures import assert_problem, client_for

ADMIN_SECRET = "admin-" + "y" * 40
KNOWN = "known"


CALLS = "calls"  # app state key: a Counter of handler calls


def count(state: State, handler: str) -> dict[str, str]:
    state[CALLS][handler] += 1
    return {}


@get("/things/{thing_id:str}", guards=[requires(ORDERS_READ)])
async def read_thing(state: State, thing_id: FromPath[str]) -> dict[str, str]:
    count(state, "read")
    if thing_id != KNOWN:
        raise OrderNotFound(thing_id)
    return {"thing_id": thing_id}


@post("/things", guards=[requires(ORDERS_WRITE)], status_code=202)
async def write_thing(state: State) -> dict[str, str]:
    return count(state, "write")


@get("/history", guards=[requires(ORDERS_READ, OPS)])
async def history(state: State) -> dict[str, str]:
    return count(state, "history")


@get("/products", guards=[requires()])
async def products(state: State) -> dict[str, str]:
    return count(state, "products")


@get("/mine", guards=[requires(ORDERS_READ)])
async def mine(request: Request[Any, Any, Any]) -> dict[str, str | None]:
    return {"customer": customer_of(request)}


@post("/mine/{customer_id:str}", guards=[requires(ORDERS_WRITE)], status_code=202)
async def submit_for(
    request: Request[Any, Any, Any], state: State, customer_id: FromPath[str]
) -> dict[str, str]:
    check_customer(request, customer_id)
    return count(state, "submit")


@get(HEALTHZ)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/x/healthz", guards=[requires()])
async def not_health(state: State) -> dict[str, str]:
    return count(state, "not_health")


@post(CALLBACK_PATH, status_code=200)
async def callback() -> dict[str, str]:
    return {}


@get(SIM_PREFIX + "/open")
async def sim_open() -> dict[str, str]:
    return {}


@get(SIM_PREFIX + "/guarded", guards=[requires(OPS)])
async def sim_guarded(state: State) -> dict[str, str]:
    return count(state, "sim_guarded")


ROUTES: Final = [
    read_thing, write_thing, history, products, mine, submit_for, healthz, not_health, callback,
    sim_open, sim_guarded,
]  # fmt: skip


def build_app(settings: Settings, broker: Handles, calls: Counter[str]) -> Litestar:
    """Dummy routes shaped like DESIGN's route -> scope table, each counting its calls."""
    tokens = TokenCache(lambda: broker.js, settings)
    return Litestar(
        route_handlers=ROUTES,
        state=State({CALLS: calls}),
        middleware=[auth_middleware(tokens, RateLimiter(settings.rate_limit))],
        lifespan=[tokens.lifespan],
        exception_handlers={**EXCEPTION_HANDLERS, **AUTH_EXCEPTION_HANDLERS},
        openapi_config=OpenAPIConfig(title="auth test", version="0", path=SCHEMA),
        logging_config=None,
    )


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, admin_token=ADMIN_SECRET, rate_limit=1000.0)


@pytest.fixture
async def tokens(broker: Handles, app_settings: Settings) -> dict[str, str]:
    """A token text per kind of caller."""
    kv = await ensure_tokens_bucket(broker.js, app_settings)
    store = TokenStore(kv)
    made = {
        "read": (await store.create("reader", [ORDERS_READ]))[1],
        "write": (await store.create("writer", [ORDERS_WRITE]))[1],
        "ops": (await store.create("operator", [OPS]))[1],
        "customer": (await store.create("shop", [ORDERS_READ, ORDERS_WRITE], "cust-1"))[1],
        "revoked": (await store.create("gone", [ORDERS_READ]))[1],
        "admin": ADMIN_SECRET,
    }
    await store.revoke(parse_token(made["revoked"])[0])
    past = datetime.now(UTC) - timedelta(days=1)
    old = TokenStore(kv, clock=lambda: past)
    made["expired"] = (await old.create("old", [ORDERS_READ], ttl=3600))[1]
    made["unknown"] = "of_" + "f" * 16 + "_" + parse_token(made["read"])[1]
    return made


@contextlib.asynccontextmanager
async def running(
    settings: Settings, broker: Handles
) -> AsyncIterator[tuple[httpx.AsyncClient, Counter[str]]]:
    calls: Counter[str] = Counter()
    async with client_for(build_app(settings, broker, calls)) as client:
        yield client, calls


@pytest.fixture
async def client(
    app_settings: Settings, broker: Handles, tokens: dict[str, str]
) -> AsyncIterator[tuple[httpx.AsyncClient, Counter[str]]]:
    async with running(app_settings, broker) as pair:
        yield pair


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_401(response: httpx.Response) -> None:
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("caller", "status"),
    [
        (None, 401),
        ("malformed", 401),
        ("basic", 401),
        ("unknown", 401),
        ("revoked", 401),
        ("expired", 401),
        ("write", 403),
        ("ops", 403),
        ("read", 200),
        ("admin", 200),
    ],
)
async def test_each_caller_gets_its_answer_and_refused_ones_never_reach_the_handler(
    client: tuple[httpx.AsyncClient, Counter[str]],
    tokens: dict[str, str],
    caller: str | None,
    status: int,
) -> None:
    http, calls = client
    special = {
        None: {},
        "malformed": {"Authorization": "Bearer not-a-token"},
        "basic": {"Authorization": "Basic cmVhZDpyZWFk"},
    }
    headers = special[caller] if caller in special else bearer(tokens[str(caller)])
    response = await http.get(f"/things/{KNOWN}", headers=headers)
    if status == 401:
        assert_401(response)
        reason = {None: "missing", "basic": "malformed"}.get(caller, caller)
        assert f"API token {reason}" in response.json()["detail"]
    elif status == 403:
        problem = assert_problem(response, 403)
        assert "orders:read" in problem["detail"]
        assert "WWW-Authenticate" not in response.headers
    else:
        assert response.status_code == 200, response.text
        assert response.json() == {"thing_id": KNOWN}
    assert calls["read"] == (1 if status == 200 else 0)


async def test_the_scope_is_checked_before_the_resource_is_looked_up(
    client: tuple[httpx.AsyncClient, Counter[str]], tokens: dict[str, str]
) -> None:
    http, calls = client
    for thing in (KNOWN, "missing"):
        assert_problem(await http.get(f"/things/{thing}", headers=bearer(tokens["write"])), 403)
    assert calls["read"] == 0
    assert_problem(await http.get("/things/missing", headers=bearer(tokens["read"])), 404)
    assert_problem(await http.post("/things", headers=bearer(tokens["read"])), 403)
    assert (await http.post("/things", headers=bearer(tokens["write"]))).status_code == 202
    assert calls == Counter({"read": 1, "write": 1})


async def test_either_listed_scope_or_any_token_where_none_is_listed(
    client: tuple[httpx.AsyncClient, Counter[str]], tokens: dict[str, str]
) -> None:
    http, calls = client
    for caller in ("read", "ops", "admin"):
        assert (await http.get("/history", headers=bearer(tokens[caller]))).status_code == 200
    assert_problem(await http.get("/history", headers=bearer(tokens["write"])), 403)
    for caller in ("read", "write", "ops", "customer"):
        assert (await http.get("/products", headers=bearer(tokens[caller]))).status_code == 200
    assert_401(await http.get("/products"))
    assert calls == Counter({"history": 3, "products": 4})


async def test_only_the_exempt_paths_answer_without_a_token(
    client: tuple[httpx.AsyncClient, Counter[str]],
) -> None:
    http, calls = client
    assert (await http.get(HEALTHZ)).status_code == 200
    assert (await http.get(f"{SCHEMA}/openapi.json")).status_code == 200
    assert (await http.post(CALLBACK_PATH)).status_code == 200
    assert (await http.get(f"{SIM_PREFIX}/open")).status_code == 200
    assert_401(await http.get("/x/healthz"))  # an exempt path's name elsewhere is not exempt
    # a guard on an exempt path fails closed rather than letting anyone in
    assert_401(await http.get(f"{SIM_PREFIX}/guarded"))
    assert calls == Counter()


async def test_a_customer_token_acts_only_for_its_customer(
    client: tuple[httpx.AsyncClient, Counter[str]], tokens: dict[str, str]
) -> None:
    http, calls = client
    assert (await http.get("/mine", headers=bearer(tokens["customer"]))).json() == {
        "customer": "cust-1"
    }
    assert (await http.get("/mine", headers=bearer(tokens["admin"]))).json() == {"customer": None}
    refused = await http.post("/mine/cust-2", headers=bearer(tokens["customer"]))
    assert "cust-1" in assert_problem(refused, 403)["detail"]
    assert (await http.post("/mine/cust-1", headers=bearer(tokens["customer"]))).status_code == 202
    assert (await http.post("/mine/cust-2", headers=bearer(tokens["write"]))).status_code == 202
    assert calls["submit"] == 2


async def test_a_token_over_its_rate_gets_429_while_another_is_unaffected(
    app_settings: Settings, broker: Handles, tokens: dict[str, str]
) -> None:
    slow = msgspec.structs.replace(app_settings, rate_limit=1.0)  # burst of 2
    async with running(slow, broker) as (http, calls):
        answers = [await http.get("/products", headers=bearer(tokens["read"])) for _ in range(6)]
        assert [a.status_code for a in answers[:2]] == [200, 200]
        limited = [a for a in answers if a.status_code == 429]
        assert limited, [a.status_code for a in answers]
        problem = assert_problem(limited[0], 429)
        assert problem["type"].endswith("/rate-limited")
        assert int(limited[0].headers["Retry-After"]) >= 1
        other = await http.get("/products", headers=bearer(tokens["ops"]))
        assert other.status_code == 200
        assert calls["products"] == len(answers) - len(limited) + 1


async def test_no_token_reaches_the_logs(
    client: tuple[httpx.AsyncClient, Counter[str]],
    tokens: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    http, _ = client
    for text in tokens.values():
        for path in (f"/things/{KNOWN}", "/things", "/history"):
            await http.get(path, headers=bearer(text))
            await http.get(path, headers=bearer(text + "x"))
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "refused" in logged  # refusals were logged, with their reasons
    for text in tokens.values():
        secret = text if text == ADMIN_SECRET else parse_token(text)[1]
        assert secret not in logged


def test_guards_name_known_scopes_and_no_route_is_left_unguarded() -> None:
    with pytest.raises(InvalidTokenRequest, match="'orders:delete'"):
        requires("orders:delete")
    assert unguarded_routes(Litestar(route_handlers=ROUTES)) == []

    @get("/forgotten")
    async def forgotten() -> None: ...

    assert unguarded_routes(Litestar(route_handlers=[*ROUTES, forgotten])) == ["GET /forgotten"]
