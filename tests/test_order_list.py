"""``GET /orders`` and ``GET /stats`` from the api's read model (issue 10, tests 1 and 2): a
real api, a real nats-server and a real node; every filter against the set computed from the
KV documents, paging, bad parameters, customer tokens; restarts that resume from the
checkpoint, a deleted database rebuilt, ``orderflow readmodel rebuild``."""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec
import pytest

from nodeapp.core.settings import Settings, load_settings, settings_env
from nodeapp.local.natsserver import NatsServer
from nodeapp.local.up import local_settings
from nodeapp.orders.handles import Handles, broker_handles
from nodeapp.orders.model import Order, encode
from nodeapp.readmodel.params import STATUSES
from nodeapp.readmodel.stream import KV_STREAM
from nodeapp.security.scopes import ORDERS_READ
from tests.support.api_fixtures import (
    ServedApi,
    assert_problem,
    client_as,
    order_body,
    running_api,
    serve_api,
)
from tests.support.cli import Cli
from tests.support.listing import expected
from tests.support.nodes import running_node
from tests.support.orders import wait_all_terminal
from tests.support.services import ApiProcess
from tests.support.tokens import mint_token
from tests.support.waiting import wait_for

CUSTOMERS: Final = ("c-0", "c-1", "c-2")
PRODUCTS: Final = ("sku-1", "sku-2", "sku-3")
PROCESSED: Final = 27  # orders a node runs to the end; the last three stay accepted
CATCH_UP: Final = 15.0
SHOWN_WITHIN: Final = 1.5  # "a change to an order shows in the list within about a second"
SUMMARY_FIELDS: Final = (
    "order_id", "status", "current_step", "customer_id", "amount", "start_time", "complete_time",
)  # fmt: skip


def order_plan(i: int) -> dict[str, Any]:
    """Order ``i``: customers in turn, products by threes, a second product on every fourth;
    every fifth (from 1) paid with a declined card, every fifth from 3 failing at Processing
    (deterministic failures: no random failure rate)."""
    product = PRODUCTS[(i // 3) % 3]
    items = [{"product_id": product, "quantity": 1 + i % 2}]
    if i % 4 == 0 and product != "sku-2":
        items.append({"product_id": "sku-2", "quantity": 1})
    body: dict[str, Any] = {"customer_id": CUSTOMERS[i % 3], "items": items}
    if i % 5 == 1:
        body["payment_token"] = "tok_decline_card"
    if i % 5 == 3:
        body["fail_at"] = "Processing"
    return body


def zulu(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def summary(order: Order) -> dict[str, Any]:
    """What ``GET /orders`` must show for ``order`` (its JSON, as the api encodes it)."""
    document = msgspec.json.decode(encode(order))
    return {field: document[field] for field in SUMMARY_FIELDS} | {"revision": order.revision}


async def documents(broker: Handles, order_ids: list[str]) -> list[Order]:
    return [await broker.store.get(order_id) for order_id in order_ids]


async def listed(http: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await http.get("/orders", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def in_step(http: httpx.AsyncClient, broker: Handles, order_ids: list[str]) -> list[Order]:
    """Wait until the api lists exactly the KV documents of ``order_ids``; those documents."""

    async def same() -> list[Order] | None:
        orders = await documents(broker, order_ids)
        want = sorted(orders, key=lambda o: (o.start_time, o.order_id), reverse=True)
        page = await listed(http, limit=500)
        return orders if page["orders"] == [summary(o) for o in want] else None

    return await wait_for(same, within=CATCH_UP, interval=0.1)


async def submit(http: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await http.post("/orders", json=body)
    assert response.status_code == 202, response.text
    order_id: str = response.json()["order_id"]
    return order_id


@pytest.fixture
async def shop(settings: Settings, broker: Handles) -> AsyncIterator[tuple[ServedApi, list[str]]]:
    """A served api (no rate limit to speak of: the test sends hundreds of requests) and 30
    orders over 3 customers: 27 run to completion or failure by a node, 3 left accepted."""
    async with serve_api(settings, rate_limit=100_000.0) as served:
        fast = msgspec.structs.replace(served.settings, step_seconds=0.0)
        async with running_node(fast, "node-list"):
            order_ids = [await submit(served.http, order_plan(i)) for i in range(PROCESSED)]
            await wait_all_terminal(broker.store, order_ids, within=60)
        order_ids += [await submit(served.http, order_plan(i)) for i in range(PROCESSED, 30)]
        yield served, order_ids


async def test_every_filter_combination_and_page_lists_exactly_the_kv_documents(
    shop: tuple[ServedApi, list[str]], broker: Handles
) -> None:
    served, order_ids = shop
    http = served.http
    orders = await in_step(http, broker, order_ids)
    assert Counter(o.status for o in orders) == {"completed": 16, "failed": 11, "accepted": 3}
    reasons = {o.failure.reason.split(":")[0] for o in orders if o.failure}
    assert reasons == {"payment_declined", "injected failure (fail_at)"}
    by_time = sorted(orders, key=lambda o: o.start_time)
    since, until = by_time[4].start_time, by_time[21].start_time
    windows = [(None, None), (since, None), (None, until), (since, until)]
    combos = itertools.product(
        [None, *sorted(STATUSES)], [None, *CUSTOMERS], [None, *PRODUCTS], windows
    )
    for status, customer, product, (after, before) in combos:
        params = {"status": status, "customer_id": customer, "product_id": product}
        params |= {
            "created_after": after and zulu(after),
            "created_before": before and zulu(before),
        }
        page = await listed(http, limit=500, **{k: v for k, v in params.items() if v})
        want = expected(orders, status, customer, product, after, before)
        assert [o["order_id"] for o in page["orders"]] == want, params
        assert page["next_cursor"] is None
    # an empty parameter is an absent one (as a plain HTML form sends it)
    everything = await listed(http, status="", customer_id="", limit="", cursor="")
    assert [o["order_id"] for o in everything["orders"]] == expected(orders)[:50]

    # Paging with limit=7 visits each order once, in order, filtered or not.
    for filters, sizes in (({}, [7, 7, 7, 7, 2]), ({"customer_id": "c-1"}, [7, 3])):
        pages: list[list[str]] = []
        cursor = None
        while True:
            page = await listed(http, limit=7, **filters, **({"cursor": cursor} if cursor else {}))
            pages.append([o["order_id"] for o in page["orders"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [len(p) for p in pages] == sizes
        assert [o for p in pages for o in p] == expected(
            orders, customer=filters.get("customer_id")
        )


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ({"status": "lost"}, ["status"]),
        ({"customer_id": "two words"}, ["customer_id"]),
        ({"product_id": "p" * 65}, ["product_id"]),
        ({"created_after": "2025-03-01T10:00:00"}, ["created_after"]),
        ({"created_after": "2025-03-01T10:00Z"}, ["created_after"]),  # ISO, not the one form
        ({"created_before": "yesterday"}, ["created_before"]),
        ({"created_before": "2025-02-29T10:00:00Z"}, ["created_before"]),  # the shape, no day
        ({"limit": "0"}, ["limit"]),
        ({"limit": "501"}, ["limit"]),
        ({"limit": "ten"}, ["limit"]),
        ({"cursor": "!!"}, ["cursor"]),
        ({"status": "x", "limit": "-1", "cursor": "x"}, ["status", "limit", "cursor"]),
        ({"limit": ["1", "2"]}, ["limit"]),  # which one was meant?
    ],
)
async def test_a_bad_parameter_is_a_422_naming_it(
    api: httpx.AsyncClient, query: dict[str, str | list[str]], fields: list[str]
) -> None:
    problem = assert_problem(await api.get("/orders", params=query), 422)
    assert [e["field"] for e in problem["errors"]] == fields


async def test_a_customer_token_lists_only_its_own_orders_and_stats_count_each_once(
    shop: tuple[ServedApi, list[str]], broker: Handles, settings: Settings
) -> None:
    served, order_ids = shop
    orders = await in_step(served.http, broker, order_ids)
    token = await mint_token(broker, settings, ORDERS_READ, customer="c-1")
    async with client_as(served.http, token) as customer:
        own = await listed(customer, limit=500)
        assert [o["order_id"] for o in own["orders"]] == expected(orders, customer="c-1")
        failed = await listed(customer, status="failed", customer_id="c-1")
        assert [o["order_id"] for o in failed["orders"]] == expected(orders, "failed", "c-1")
        # another customer's filter meets the forced one: nothing, as for a customer with none
        assert await listed(customer, customer_id="c-2") == {"orders": [], "next_cursor": None}
        assert_problem(await customer.get("/orders", params={"customer_id": "a b"}), 422)
        assert_problem(await customer.get("/stats"), 403)  # stats are ops'

    # The stats, from the same read model, count every order once.
    response = await served.http.get("/stats", params={"window": "3600"})
    assert response.status_code == 200, response.text
    stats = response.json()
    assert stats["by_status"] == Counter(o.status for o in orders)
    assert stats["by_step"] == Counter(o.current_step for o in orders)
    assert stats["completed_in_window"] == 16
    assert 0 <= stats["latency_seconds"]["p50"] <= stats["latency_seconds"]["p99"]
    for window in ("0", "-5", "soon", "nan", "1_000", ".5", ["60", "61"]):
        problem = assert_problem(await served.http.get("/stats", params={"window": window}), 422)
        assert [e["field"] for e in problem["errors"]] == ["window"]


async def test_openapi_describes_the_list_and_the_stats(api: httpx.AsyncClient) -> None:
    doc = (await api.get("/schema/openapi.json")).json()
    listing = doc["paths"]["/orders"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {
        "status", "customer_id", "product_id", "created_after", "created_before", "limit",
        "cursor",
    }  # fmt: skip
    assert set(listing["responses"]) >= {"200", "422", "503"}
    stats = doc["paths"]["/stats"]["get"]
    for parameter in (*listing["parameters"], *stats["parameters"]):  # empty is absent
        assert parameter["allowEmptyValue"] is True, parameter["name"]
    page = doc["components"]["schemas"]["OrderPage"]
    assert set(page["properties"]) == {"orders", "next_cursor"}
    order = doc["components"]["schemas"]["OrderSummary"]
    assert set(order["properties"]) == {*SUMMARY_FIELDS, "revision"}
    assert set(stats["responses"]) >= {"200", "422", "503"}


# Issue 10, test 2: a real api process, stopped and started again.


@contextlib.asynccontextmanager
async def api_process(
    settings: Settings, folder: Path, read_db: Path, name: str
) -> AsyncIterator[ApiProcess]:
    """A ready ``python -m api`` on ``read_db``; stopped by SIGTERM at the end, which it
    must survive cleanly (exit 0: the projector stopped, the file closed)."""
    process = ApiProcess(settings, folder / f"{name}.log", ORDERFLOW_READ_DB=str(read_db))
    try:
        await process.wait_ready()
        yield process
    finally:
        assert process.stop() == 0


async def read_model_state(process: ApiProcess) -> dict[str, Any]:
    """``/readyz``'s ``read_model``."""
    async with process.client(None) as http:
        state: dict[str, Any] = (await http.get("/readyz")).json()["read_model"]
    return state


async def stream_messages(broker: Handles) -> tuple[int, int]:
    """``KV_orders``' message count and last sequence."""
    info = await broker.js.stream_info(KV_STREAM)
    return info.state.messages, info.state.last_seq


async def move(broker: Handles, order_id: str, step: str) -> Order:
    """What a node would write: the order running at ``step``."""
    order = await broker.store.get(order_id)
    order.status, order.current_step = "running", step
    await broker.store.update(order)
    return order


async def assert_counted_once(http: httpx.AsyncClient, orders: list[Order]) -> None:
    page = await listed(http, limit=500)
    assert len({o["order_id"] for o in page["orders"]}) == len(page["orders"]) == len(orders)
    stats = (await http.get("/stats")).json()
    assert stats["by_status"] == Counter(o.status for o in orders)


async def test_a_restarted_api_resumes_from_its_checkpoint_and_a_deleted_file_is_rebuilt(
    settings: Settings, broker: Handles, tmp_path: Path
) -> None:
    read_db = tmp_path / "api" / "orders-read.db"
    async with api_process(settings, tmp_path, read_db, "api-1") as first, first.client() as http:
        order_ids = [await submit(http, order_plan(i)) for i in range(12)]
        await in_step(http, broker, order_ids)
        moved = await move(broker, order_ids[0], "Scheduling")

        async def shown() -> bool:
            page = await listed(http, status="running")
            return [o["revision"] for o in page["orders"]] == [moved.revision]

        await wait_for(shown, within=SHOWN_WITHIN, interval=0.02)
        state = await read_model_state(first)
    messages, last = await stream_messages(broker)
    assert (state["applied"], state["checkpoint"], state["lag_messages"]) == (messages, last, 0)

    # Two changes while no api runs: the restarted one applies those two, nothing before.
    await move(broker, order_ids[1], "Scheduling")
    await move(broker, order_ids[2], "Pre-Processing")
    async with api_process(settings, tmp_path, read_db, "api-2") as second, second.client() as http:
        orders = await in_step(http, broker, order_ids)
        state = await read_model_state(second)
        assert (state["applied"], state["checkpoint"]) == (2, last + 2)
        metrics = (await http.get("/metrics")).text
        assert "orderflow_readmodel_revisions_applied_total 2.0" in metrics
        assert "orderflow_readmodel_lag_messages 0.0" in metrics
        await assert_counted_once(http, orders)

    # The file deleted (with its WAL): rebuilt from the bucket, every order once.
    for leftover in read_db.parent.glob(f"{read_db.name}*"):
        leftover.unlink()
    async with api_process(settings, tmp_path, read_db, "api-3") as third, third.client() as http:
        orders = await in_step(http, broker, order_ids)
        state = await read_model_state(third)
        messages, last = await stream_messages(broker)
        assert (state["applied"], state["checkpoint"]) == (messages, last)
        await assert_counted_once(http, orders)

    # `orderflow readmodel rebuild` with the api stopped; the next start has nothing to read.
    cli = Cli({**os.environ, **settings_env(settings), "ORDERFLOW_LOG_FORMAT": "json"})
    run = await cli("readmodel", "rebuild", "--read-db", str(read_db), "--json")
    assert run.code == 0, run.err
    assert run.json() | {"seconds": 0} == {
        "path": str(read_db), "orders": 12, "checkpoint": last, "seconds": 0,
    }  # fmt: skip
    human = await cli("readmodel", "rebuild", "--read-db", str(read_db))
    assert f"read model {read_db} rebuilt from {KV_STREAM}: 12 orders" in human.out
    async with api_process(settings, tmp_path, read_db, "api-4") as fourth, fourth.client() as http:
        await in_step(http, broker, order_ids)
        assert (await read_model_state(fourth))["applied"] == 0


async def test_rebuild_refuses_clearly_without_a_bucket_or_with_a_locked_file(
    settings: Settings, nats_server: NatsServer, tmp_path: Path
) -> None:
    read_db = tmp_path / "locked.db"
    cli = Cli({**os.environ, **settings_env(settings), "ORDERFLOW_LOG_FORMAT": "json"})
    missing = await cli("readmodel", "rebuild", "--read-db", str(read_db))
    assert missing.code == 2, missing.err
    assert "no orders bucket" in missing.err
    assert "orderflow init" in missing.err

    async with broker_handles(settings, "tests"):  # creates the orders bucket
        pass
    holder = sqlite3.connect(read_db, isolation_level=None)
    try:
        holder.execute("CREATE TABLE mine (x)")
        holder.execute("BEGIN EXCLUSIVE")  # another process writing, and not letting go
        locked = await cli("readmodel", "rebuild", "--read-db", str(read_db))
        assert locked.code == 2, locked.err
        assert "locked" in locked.err
        assert "stop the api using it" in locked.err
        holder.execute("ROLLBACK")
        tables = holder.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        assert [name for (name,) in tables] == ["mine"]  # left as it was
    finally:
        holder.close()


async def test_an_unusable_file_keeps_the_api_up_and_unready_saying_why(
    settings: Settings, broker: Handles, tmp_path: Path
) -> None:
    (tmp_path / "plain-file").write_text("not a folder")
    bad = msgspec.structs.replace(settings, read_db=str(tmp_path / "plain-file" / "read.db"))
    async with running_api(bad) as api:

        async def unready() -> dict[str, Any] | None:
            response = await api.get("/readyz")
            detail = response.json().get("detail", "")
            return response.json() if "cannot open the read model" in detail else None

        problem = await wait_for(unready, within=CATCH_UP)
        assert problem["status"] == 503
        assert str(tmp_path / "plain-file" / "read.db") in problem["detail"]
        listing = assert_problem(await api.get("/orders"), 503)
        assert listing["type"].endswith("/read-model-unavailable")
        assert listing["detail"] == problem["detail"].removeprefix("read model not open: ")
        assert (
            await api.post("/orders", json=order_body())
        ).status_code == 202  # still takes orders
        assert (await api.get("/healthz")).status_code == 200


def test_up_keeps_the_read_model_in_its_data_folder(tmp_path: Path) -> None:
    assert local_settings(load_settings({}), tmp_path).read_db == str(
        tmp_path / "orderflow-read.db"
    )
    chosen = load_settings({"ORDERFLOW_READ_DB": "/srv/read.db"})
    assert local_settings(chosen, tmp_path).read_db == "/srv/read.db"
