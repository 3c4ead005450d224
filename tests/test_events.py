"""Live status over Server-Sent Events (``GET /orders/{id}/events``, issue 10 test 3) and
``orderflow order watch`` on top of it, against a real nats-server, a served api (uvicorn on a
free port, or a real ``python -m api``) and an in-process node with short steps.

Every revision arrives in order and matches the bucket's history, the stream ends after the
terminal one, ``Last-Event-ID`` resumes with only the newer ones, unknown and other customers'
orders are 404, a client that leaves takes its watch with it, and a stopping api ends its
streams at once instead of waiting for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec

from api import create_app
from api.server import serve_async
from api.streams import STREAMS_KEY, LiveStreams
from nodeapp.cli.watch import SseEvent, sse_events
from nodeapp.core.settings import Settings, settings_env
from nodeapp.local.natsserver import free_port
from nodeapp.orders.handles import Handles
from nodeapp.security.scopes import ORDERS_READ
from tests.support.api_fixtures import (
    ServedApi,
    assert_problem,
    client_as,
    order_body,
    served_settings,
    wait_ready,
)
from tests.support.cli import Cli
from tests.support.events import documents, events, order_stream, revision_ids, take
from tests.support.nodes import running_node
from tests.support.services import ApiProcess
from tests.support.serving import serving
from tests.support.tokens import bearer, mint_token
from tests.support.waiting import wait_for

UNKNOWN_ORDER = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
KV_ORDERS = "KV_orders"
STREAMS_METRIC = re.compile(r"^orderflow_api_event_streams (\S+)$", re.MULTILINE)


async def submit(http: httpx.AsyncClient, **changes: Any) -> str:
    response = await http.post("/orders", json=order_body(**changes))
    assert response.status_code == 202, response.text
    order_id: str = response.json()["order_id"]
    return order_id


async def history_ids(http: httpx.AsyncClient, order_id: str) -> list[int]:
    response = await http.get(f"/orders/{order_id}/history")
    assert response.status_code == 200, response.text
    return [r["revision"] for r in response.json()]


async def open_streams(http: httpx.AsyncClient) -> float:
    """``orderflow_api_event_streams`` from the api's ``/metrics``."""
    found = STREAMS_METRIC.search((await http.get("/metrics")).text)
    assert found, "no orderflow_api_event_streams series"
    return float(found.group(1))


async def until_ready(http: httpx.AsyncClient) -> None:
    """Wait for an api that may not be listening yet."""

    async def ready() -> bool:
        try:
            return (await http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    await wait_for(ready, within=15.0)


async def bound_watches(broker: Handles) -> int:
    """Consumers on the orders bucket's stream that a subscriber still listens to."""
    return sum(1 for c in await broker.js.consumers_info(KV_ORDERS) if c.push_bound)


async def test_every_revision_arrives_in_order_and_the_stream_ends_after_the_terminal_one(
    served_api: ServedApi,
) -> None:
    http = served_api.http
    order_id = await submit(http)
    async with order_stream(http, order_id) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        stream = events(response)
        first = await take(stream, 1)  # the current document, before any node runs
        async with running_node(served_api.settings, "node-sse"):
            rest = [event async for event in stream]  # ends by itself after the terminal one
    received = first + rest
    assert {e.event for e in received} == {"order"}
    ids = revision_ids(received)
    assert ids == sorted(set(ids)), "ids must strictly increase"
    orders = documents(received)
    assert orders[0]["status"] == "accepted"
    assert [o["revision"] for o in orders] == ids
    assert orders[-1]["status"] == "completed"
    assert [o["status"] for o in orders[:-1]].count("completed") == 0
    assert ids == await history_ids(http, order_id)  # every revision the bucket kept, no other
    assert orders[-1] == (await http.get(f"/orders/{order_id}")).json()


async def test_a_reconnect_with_last_event_id_gets_only_the_newer_revisions(
    served_api: ServedApi,
) -> None:
    http = served_api.http
    order_id = await submit(http)
    async with order_stream(http, order_id) as response:
        before = await take(events(response), 1)
    # Resumed while the node works, or after it finished: either way, only what is newer.
    async with (
        running_node(served_api.settings, "node-sse"),
        order_stream(http, order_id, last_event_id=before[0].id) as response,
    ):
        after = [event async for event in events(response)]
    ids = revision_ids(before + after)
    assert ids == await history_ids(http, order_id)
    assert documents(after)[-1]["status"] == "completed"

    async with order_stream(http, order_id, last_event_id=ids[-3]) as response:
        assert revision_ids([e async for e in events(response)]) == ids[-2:]
    async with order_stream(http, order_id, last_event_id=ids[-1]) as response:
        assert response.status_code == 204  # it ended there: nothing more will ever come
    async with order_stream(http, order_id, last_event_id=ids[-1] + 1000) as response:
        # Not an id this order's stream sent: start again with the current document.
        assert revision_ids([e async for e in events(response)]) == ids[-1:]


async def test_unknown_ids_are_404_and_a_bad_last_event_id_400(api: httpx.AsyncClient) -> None:
    for order_id in (UNKNOWN_ORDER, "not-an-order"):
        assert_problem(await api.get(f"/orders/{order_id}/events"), 404)
    order_id = await submit(api)
    for bad in ("x", "-1", "1.5", "9" * 40):
        answer = await api.get(f"/orders/{order_id}/events", headers={"Last-Event-ID": bad})
        assert_problem(answer, 400, field="Last-Event-ID")


async def test_a_customer_token_streams_only_its_own_orders(
    served_api: ServedApi, broker: Handles, settings: Settings
) -> None:
    http = served_api.http
    mine = await submit(http, customer_id="cust-1")
    theirs = await submit(http, customer_id="cust-2")
    token = await mint_token(broker, settings, ORDERS_READ, customer="cust-1")
    async with client_as(http, token) as customer:
        assert_problem(await customer.get(f"/orders/{theirs}/events"), 404)
        async with order_stream(customer, mine) as response:
            assert response.status_code == 200
            assert documents(await take(events(response), 1))[0]["order_id"] == mine


@contextlib.asynccontextmanager
async def api_with_short_timers(
    settings: Settings, keepalive: float, cleanup: float
) -> AsyncIterator[httpx.AsyncClient]:
    """A served api whose idle streams send a comment every ``keepalive`` seconds, and whose
    left streams' consumers the broker deletes after ``cleanup`` seconds."""
    served = served_settings(settings, free_port())
    app = create_app(served)
    streams: LiveStreams = app.state[STREAMS_KEY]
    streams.keepalive, streams.cleanup = keepalive, cleanup
    async with (
        serving(app, served.api_port),
        httpx.AsyncClient(
            base_url=served.api_url, timeout=10.0, headers=bearer(served.admin_token)
        ) as http,
    ):
        await wait_ready(http)
        yield http


async def test_an_idle_stream_keeps_alive_and_a_client_that_leaves_takes_its_watch_along(
    settings: Settings, broker: Handles
) -> None:
    cleanup = 0.5
    async with api_with_short_timers(settings, keepalive=0.1, cleanup=cleanup) as http:
        order_id = await submit(http)  # no node: it stays accepted, the stream stays open
        baseline = await bound_watches(broker)
        async with order_stream(http, order_id) as response:
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith("id: ")
            comments = 0
            while comments < 3 * cleanup / 0.1:  # idle for well past the cleanup delay
                comments += await anext(lines) == ": keep-alive"
            assert await open_streams(http) == 1
            # A consumer is deleted only once nobody listens, however idle the stream.
            assert await bound_watches(broker) == baseline + 1
        # The client went away: the stream's generator ended and its watch unsubscribed.

        async def released() -> bool:
            return await open_streams(http) == 0 and await bound_watches(broker) == baseline

        await wait_for(released, within=5.0)

        async def consumer_deleted() -> bool:
            # Push consumers only: the api's read model pulls through a consumer of its own.
            consumers = await broker.js.consumers_info(KV_ORDERS)
            return sum(1 for c in consumers if c.config.deliver_subject) <= baseline

        await wait_for(consumer_deleted, within=cleanup + 10.0)


def test_the_cli_reads_an_event_stream_as_the_html_spec_says() -> None:
    lines = [": keep-alive", "", "id: 7", "event: order", 'data: {"a":', "data:1}", "", "retry: 5"]
    lines += ["data: x", "", "data", "", "event: order", ""]  # the last block has no data
    assert list(sse_events(lines)) == [
        SseEvent("order", '{"a":\n1}', "7"),
        SseEvent("message", "x", "7"),  # the id stays, the event type does not
        SseEvent("message", "", "7"),
    ]


async def test_a_stopping_api_process_ends_its_streams_instead_of_waiting_for_them(
    settings: Settings, broker: Handles, tmp_path: Path
) -> None:
    process = ApiProcess(settings, tmp_path / "api.log")
    try:
        await process.wait_ready()
        async with process.client(timeout=30.0) as http:
            order_id = await submit(http)
            async with order_stream(http, order_id) as response:
                stream = events(response)
                assert len(await take(stream, 1)) == 1
                # SIGTERM; the grace is below uvicorn's graceful-shutdown wait (10 s), so a
                # stop that waited for the stream would be killed and exit -9.
                stopping = asyncio.create_task(asyncio.to_thread(process.stop, 8.0))
                assert [e async for e in stream] == []  # ended cleanly, without an error
                assert await stopping == 0
    finally:
        process.kill()
    assert not any("graceful shutdown exceeded" in line for line in process.log_lines())


async def test_order_watch_follows_an_order_to_its_end_over_the_stream(
    settings: Settings, broker: Handles
) -> None:
    """``orderflow order watch`` prints one line per revision; when its api stops mid-stream
    it reconnects to the next one with ``Last-Event-ID`` and misses nothing, repeats nothing."""
    served = served_settings(settings, free_port())
    cli = Cli({**os.environ, **settings_env(served), "ORDERFLOW_LOG_FORMAT": "json"})
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=served.api_url, headers=bearer(served.admin_token))
        )
        first_api = asyncio.Event()
        first = asyncio.create_task(serve_async(served, first_api))
        await until_ready(http)
        order_id = await submit(http)
        watching = asyncio.create_task(
            cli("order", "watch", order_id, "--json", "--interval", "0.1", "--timeout", "60")
        )

        async def following() -> bool:
            assert not watching.done(), watching.result()
            return await open_streams(http) == 1

        await wait_for(following, within=15.0)
        first_api.set()
        await first  # returns once its stream has ended: it does not wait for the watcher
        second_api = asyncio.Event()
        second = asyncio.create_task(serve_async(served, second_api))
        try:
            await until_ready(http)
            async with running_node(msgspec.structs.replace(served, step_seconds=0.1)):
                watched = await watching
            history = await history_ids(http, order_id)
            human = await cli("order", "watch", order_id)  # ended: its current document, once
            missing = await cli("order", "watch", UNKNOWN_ORDER)
        finally:
            second_api.set()
            await second
    assert watched.code == 0, watched.err
    printed = [json.loads(line) for line in watched.out.splitlines()]
    assert [d["revision"] for d in printed] == history  # each once, in order, none missed
    assert printed[0]["status"] == "accepted"
    assert printed[-1]["status"] == "completed"
    assert human.code == 0, human.err
    assert human.out.split()[1:3] == ["completed", "Completed"]
    assert (missing.code, missing.err) == (
        1,
        f"orderflow order watch: order {UNKNOWN_ORDER} not found\n",
    )
