"""Api fixtures and helpers: an app from ``create_app`` on the test's own nats-server, reached
in-process through ``httpx.ASGITransport`` with its lifespan entered in the test's event loop
(``api``), or served by uvicorn on a free port (``served_api``) when nodes must reach it: they
pay at its simulated gateway and its callback route records the verdicts.

Every route but health, readiness, the schema and the payment routes needs a bearer token: the
clients made here send ``TEST_ADMIN_TOKEN`` (the test settings' admin) unless given another
token, or None for none; ``client_as`` makes a client for another token on the same api.

``conftest.py`` registers this module as a plugin, so tests ask for the fixtures by name.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping
from typing import Any, cast

import httpx
import msgspec
import pytest
from litestar import Litestar

from api import create_app
from nodeapp.broker.kv import live_keys
from nodeapp.broker.resources import ORDERS_STREAM
from nodeapp.core.settings import Settings
from nodeapp.local.natsserver import free_port
from nodeapp.orders.handles import Handles
from tests.support.broker_users import as_role
from tests.support.serving import serving
from tests.support.tokens import TEST_ADMIN_TOKEN, bearer
from tests.support.waiting import wait_for

PROBLEM_JSON = "application/problem+json"
BASE_URL = "http://orderflow.test"
PAYMENT_SECRET = "api-tests-payment-secret"


def order_body(**changes: Any) -> dict[str, Any]:
    """A valid order body with some fields replaced."""
    body: dict[str, Any] = {
        "customer_id": "cust-1",
        "items": [{"product_id": "sku-1", "quantity": 2}],
        "amount": "12.50",
    }
    body.update(changes)
    return body


Event = MutableMapping[str, Any]
ASGI = Callable[
    [Event, Callable[[], Awaitable[Event]], Callable[[Event], Awaitable[None]]],
    Coroutine[Any, Any, None],
]


def _asgi(app: Litestar) -> ASGI:
    """Litestar's precise ASGI types, loosened to the plain-dict shape httpx expects."""
    return cast(ASGI, app)


@contextlib.asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    """Drive the ASGI lifespan protocol from a task of its own, as uvicorn does.

    Entering ``app.lifespan()`` directly would tie its cancel scopes to the current task, and
    pytest-asyncio sets a fixture up and tears it down in different tasks.
    """
    to_app: asyncio.Queue[Event] = asyncio.Queue()
    from_app: asyncio.Queue[Event] = asyncio.Queue()
    scope: Event = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(_asgi(app)(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    started = await from_app.get()
    assert started["type"] == "lifespan.startup.complete", started
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        stopped = await from_app.get()
        await task
        assert stopped["type"] == "lifespan.shutdown.complete", stopped


def _headers(token: str | None) -> dict[str, str]:
    return bearer(token) if token else {}


@contextlib.asynccontextmanager
async def client_for(app: Litestar, token: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app``'s lifespan and yield a client talking to it in-process, presenting ``token``
    (none by default: the app may not be ``create_app``'s, nor know the test admin)."""
    transport = httpx.ASGITransport(app=_asgi(app))
    async with (
        lifespan(app),
        httpx.AsyncClient(
            transport=transport, base_url=BASE_URL, headers=_headers(token)
        ) as client,
    ):
        yield client


def running_api(
    settings: Settings, token: str | None = TEST_ADMIN_TOKEN
) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
    """The app for ``settings`` (as the broker's ``api`` user), running, and a client for it
    presenting ``token`` (the test admin by default)."""
    return client_for(create_app(as_role(settings, "api")), token)


@contextlib.asynccontextmanager
async def client_as(
    client: httpx.AsyncClient, token: str | None
) -> AsyncIterator[httpx.AsyncClient]:
    """Another client for the api ``client`` talks to (in-process or served), presenting
    ``token`` instead (None: no Authorization header at all)."""
    transport = client._transport  # the in-process app, reached without a second lifespan
    own = (
        httpx.ASGITransport(app=transport.app)
        if isinstance(transport, httpx.ASGITransport)
        else None
    )
    async with httpx.AsyncClient(
        transport=own, base_url=client.base_url, timeout=client.timeout, headers=_headers(token)
    ) as other:
        yield other


async def wait_ready(client: httpx.AsyncClient, within: float = 15.0) -> None:
    async def ready() -> bool:
        return (await client.get("/readyz")).status_code == 200

    await wait_for(ready, within)


@pytest.fixture(name="api")
async def api_fixture(settings: Settings, broker: Handles) -> AsyncIterator[httpx.AsyncClient]:
    """A ready api on the test's broker (``broker`` has created the resources first)."""
    async with running_api(settings) as client:
        await wait_ready(client)
        yield client


class ServedApi(msgspec.Struct, frozen=True):
    """A served api, a client for it, and the settings that point nodes at it."""

    http: httpx.AsyncClient
    settings: Settings


def served_settings(settings: Settings, port: int, **changes: Any) -> Settings:
    """``settings`` for an api on ``port`` that hosts the gateway, verdicts after 0.05 s."""
    url = f"http://127.0.0.1:{port}"
    return msgspec.structs.replace(
        settings,
        **{"payment_delay": 0.05, "payment_secret": PAYMENT_SECRET, **changes},
        api_url=url,
        api_port=port,
    )


@contextlib.asynccontextmanager
async def serve_api(settings: Settings, **changes: Any) -> AsyncIterator[ServedApi]:
    """The app for ``served_settings(settings, <a free port>, **changes)`` (as the broker's
    ``api`` user), served and ready; ``ServedApi.settings`` keep the caller's broker user."""
    port = free_port()
    served = served_settings(settings, port, **changes)
    async with (
        serving(create_app(as_role(served, "api")), port),
        httpx.AsyncClient(
            base_url=served.api_url, timeout=10.0, headers=_headers(served.admin_token)
        ) as http,
    ):
        await wait_ready(http)
        yield ServedApi(http, served)


@pytest.fixture
async def served_api(settings: Settings, broker: Handles) -> AsyncIterator[ServedApi]:
    """A ready api served on a free port; run nodes with ``served_api.settings``."""
    async with serve_api(settings) as served:
        yield served


async def order_keys(broker: Handles) -> list[str]:
    """Ids of the order documents stored (deleted ones excluded)."""
    return await live_keys(broker.js, broker.buckets.orders)


async def work_messages(broker: Handles) -> int:
    """Messages on the ORDERS stream; no node runs in api tests, so none is consumed."""
    info = await broker.js.stream_info(ORDERS_STREAM)
    messages: int = info.state.messages
    return messages


async def assert_nothing_stored(broker: Handles) -> None:
    assert await order_keys(broker) == []
    assert await work_messages(broker) == 0


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> Any:
    """An RFC 9457 problem with ``status``; when ``field`` is given, ``errors`` must name it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    problem = response.json()
    assert problem["status"] == status
    assert problem["type"].startswith(("https://orderflow.dev/problems/", "about:blank"))
    assert problem["title"]
    assert problem["detail"]
    if field is not None:
        assert field in [e["field"] for e in problem["errors"]], problem
    return problem
