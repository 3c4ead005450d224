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


async def test_broker_stop_gives_503_and_recovery_resumes_service(
    api: httpx.AsyncClient, broker: Handles, nats_server: NatsServer
) -> None:
    await asyncio.to_thread(nats_server.stop)
    await _assert_unavailable(api)
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
    assert await order_keys(broker) == [order_id]
    assert await work_messages(broker) == 1
    assert (await api.get(f"/orders/{order_id}")).status_code == 200


async def test_api_starts_without_a_broker_and_connects_when_it_appears(tmp_path: Path) -> None:
    port = free_port()
    settings: Settings = load_settings(
        {}, nats_url=f"nats://127.0.0.1:{port}", request_timeout=1.0, admin_token=TEST_ADMIN_TOKEN
    )
    async with running_api(settings) as client:
        await _assert_unavailable(client)
        server = await asyncio.to_thread(NatsServer(tmp_path / "late", port=port).start)
        try:
            await wait_ready(client, within=30)
            async with broker_handles(settings, "tests") as handles:
                await load_test_catalog(handles, settings)  # a new broker: an empty catalog
            assert await _submit_succeeds(client) is not None
        finally:
            await asyncio.to_thread(server.stop)


async def test_api_stops_cleanly_while_still_connecting() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    settings = load_settings({}, nats_url=url, request_timeout=1.0, admin_token=TEST_ADMIN_TOKEN)
    async with running_api(settings) as client:
        await _assert_unavailable(client)
    # Leaving the lifespan cancelled the pending connect; warnings are errors in this suite,
    # so a leaked socket or task would have failed the test.
