"""With the broker away the api stays up: broker routes answer 503 fast, nothing is left behind,
and service resumes by itself when the broker returns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from nodeapp.core.settings import Settings, load_settings
from nodeapp.local.natsserver import NatsServer, free_port
from nodeapp.orders.handles import Handles, broker_handles
from tests.support.api_fixtures import (
    assert_problem,
    order_body,
    order_keys,
    running_api,
    wait_ready,
    work_messages,
)
from tests.support.catalog import load_test_catalog
from tests.support.tokens import TEST_ADMIN_TOKEN, bearer
from tests.support.waiting import wait_for

# A behavioural bound, not a benchmark: the design promises 503 "within a couple of seconds".
PROMPT = 3.0


async def _timed(send: Callable[[], Awaitable[httpx.Response]]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await send()
    return response, time.monotonic() - started


async def _assert_unavailable(client: httpx.AsyncClient) -> None:
    """Every broker route answers 503 problem+json with Retry-After, promptly; liveness 200."""
    requests: list[Callable[[], Awaitable[httpx.Response]]] = [
        lambda: client.post("/orders", json=order_body()),
        lambda: client.get("/orders/01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        lambda: client.get("/readyz"),
        # a token the api must read from the broker to verify: unknown is not the answer
        lambda: client.get("/products", headers=bearer(f"of_{'a' * 16}_{'b' * 43}")),
    ]
    for send in requests:
        response, elapsed = await _timed(send)
        assert_problem(response, 503)
        assert response.headers["retry-after"] == "1"
        assert elapsed < PROMPT, f"503 took {elapsed:.2f}s"
    assert (await client.get("/healthz")).status_code == 200


async def _submit_succeeds(client: httpx.AsyncClient) -> str | None:
    response = await client.post("/orders", json=order_body())
    if response.status_code == 503:
        return None
    assert response.status_code == 202, response.text
    order_id: str = response.json()["order_id"]
    return order_id


async def _listed(client: httpx.AsyncClient, order_id: str) -> bool:
    response = await client.get("/orders")
    assert response.status_code == 200, response.text
    return order_id in [o["order_id"] for o in response.json()["orders"]]


async def test_broker_stop_gives_503_and_recovery_resumes_service(
    api: httpx.AsyncClient, broker: Handles, nats_server: NatsServer
) -> None:
    before = await _submit_succeeds(api)
    assert before is not None
    await wait_for(lambda: _listed(api, before), 10)
    await asyncio.to_thread(nats_server.stop)
    await _assert_unavailable(api)
    assert await _listed(api, before)  # the read model answers from its file meanwhile
    for _ in range(3):  # repeated attempts while down stay prompt too
        response, elapsed = await _timed(
            lambda: api.post(
                "/orders", json=order_body(), headers={"Idempotency-Key": "while-down"}
            )
        )
        assert_problem(response, 503)
        assert elapsed < PROMPT

    await asyncio.to_thread(nats_server.start)
    order_id = await wait_for(lambda: _submit_succeeds(api), 30)
    await wait_ready(api)

    # Only the order accepted after recovery exists: the 503 answers left nothing behind.
    assert sorted(await order_keys(broker)) == sorted([before, order_id])
    assert await work_messages(broker) == 2
    assert (await api.get(f"/orders/{order_id}")).status_code == 200
    await wait_for(lambda: _listed(api, order_id), 15)  # the projection resumed


async def test_api_starts_without_a_broker_and_connects_when_it_appears(tmp_path: Path) -> None:
    port = free_port()
    settings: Settings = load_settings(
        {},
        nats_url=f"nats://127.0.0.1:{port}",
        request_timeout=1.0,
        admin_token=TEST_ADMIN_TOKEN,
        read_db=str(tmp_path / "read.db"),
    )
    async with running_api(settings) as client:
        await _assert_unavailable(client)
        not_open = assert_problem(await client.get("/orders"), 503)  # nothing to read yet
        assert not_open["type"].endswith("/read-model-unavailable")
        server = await asyncio.to_thread(NatsServer(tmp_path / "late", port=port).start)
        try:
            await wait_ready(client, within=30)
            async with broker_handles(settings, "tests") as handles:
                await load_test_catalog(handles, settings)  # a new broker: an empty catalog
            order_id = await _submit_succeeds(client)
            assert order_id is not None
            await wait_for(lambda: _listed(client, order_id), 10)  # the projector started
        finally:
            await asyncio.to_thread(server.stop)


async def test_api_stops_cleanly_while_still_connecting(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    settings = load_settings(
        {},
        nats_url=url,
        request_timeout=1.0,
        admin_token=TEST_ADMIN_TOKEN,
        read_db=str(tmp_path / "read.db"),
    )
    async with running_api(settings) as client:
        await _assert_unavailable(client)
    # Leaving the lifespan cancelled the pending connect; warnings are errors in this suite,
    # so a leaked socket or task would have failed the test.
