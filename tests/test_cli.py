"""The operator's CLI, run as ``python -m nodeapp ...`` subprocesses against a real api (uvicorn
in this process, on a free port) and a real broker: what it prints, and how it fails."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from api.server import serve_async
from nodeapp.cli.client_parser import handles
from nodeapp.cli.main import parse
from nodeapp.core.settings import Settings, settings_env
from nodeapp.local.natsserver import free_port
from nodeapp.orders.handles import Handles
from tests.support.cli import Cli, Run
from tests.support.nodes import running_node
from tests.support.processes import NodeProcesses
from tests.support.waiting import wait_for

UNKNOWN_ORDER = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


@pytest.fixture
async def cli(settings: Settings, broker: Handles) -> AsyncIterator[Cli]:
    """An api served by uvicorn on a free port in this event loop, and a CLI pointed at it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api_settings = msgspec.structs.replace(settings, api_port=port, api_url=url)
    stop = asyncio.Event()
    server = asyncio.create_task(serve_async(api_settings, stop))

    async def ready() -> bool:
        assert not server.done(), server
        async with httpx.AsyncClient(base_url=url) as client:
            try:
                return (await client.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

    try:
        await wait_for(ready, within=15)
        yield Cli({**os.environ, **settings_env(api_settings), "ORDERFLOW_LOG_FORMAT": "json"})
    finally:
        stop.set()
        await server


async def test_submit_watch_get_and_history_of_a_completed_order(
    cli: Cli, settings: Settings
) -> None:
    submitted = await cli(
        "order", "submit", "--customer", "c-1", "--item", "sku-1:2", "--item", "a:b:3",
        "--amount", "19.99", "--idempotency-key", "k-1", "--json",
    )  # fmt: skip
    assert submitted.code == 0, submitted.err
    order_id = submitted.json()["order_id"]
    assert submitted.json()["status"] == "accepted"

    # Steps slow enough for the watch (polling every 50 ms) to see them go by.
    async with running_node(msgspec.structs.replace(settings, step_seconds=0.3), "node-c"):
        watched = await cli("order", "watch", order_id, "--interval", "0.05")
    assert watched.code == 0, watched.err
    lines = watched.out.splitlines()
    assert len(lines) >= 3, lines
    assert "started" in lines[1]
    assert lines[-1].split()[1:3] == ["completed", "Completed"]
    assert lines[-1].endswith("order completed")

    shown = await cli("order", "get", order_id)
    assert shown.code == 0, shown.err
    assert "completed (Completed)" in shown.out
    assert "sku-1 x2, a:b x3" in shown.out
    assert shown.out.count("node-c") >= 4  # owner and each step
    document = (await cli("order", "get", order_id, "--json")).json()
    assert document["status"] == "completed"
    assert document["amount"] == "19.99"

    history = await cli("order", "history", order_id)
    assert history.code == 0, history.err
    assert "claimed by node-c (epoch 1), Scheduling started" in history.out
    assert history.out.splitlines()[0].split() == [
        "REV", "TIME", "STATUS", "STEP", "NODE", "TRANSITION",
    ]  # fmt: skip
    revisions = (await cli("order", "history", order_id, "--json")).json()
    assert [r["transition"] for r in revisions][-1] == "Post-Processing completed, order completed"

    replay = await cli(
        "order", "submit", "--customer", "c-1", "--item", "sku-1:2", "--item", "a:b:3",
        "--amount", "19.99", "--idempotency-key", "k-1",
    )  # fmt: skip
    assert replay.code == 0, replay.err
    assert order_id in replay.out
    assert "replayed" in replay.out


async def test_watch_follows_a_failure_and_its_rollback(cli: Cli, settings: Settings) -> None:
    submitted = await cli(
        "order", "submit", "--customer", "c-2", "--item", "sku-2:1", "--fail-at", "Processing"
    )
    assert submitted.code == 0, submitted.err
    order_id = submitted.out.split()[1]
    assert f"orderflow order watch {order_id}" in submitted.out
    async with running_node(settings, "node-c"):
        watched = await cli("order", "watch", order_id, "--interval", "0.05", "--json")
    assert watched.code == 0, watched.err
    documents = [json.loads(line) for line in watched.out.splitlines()]
    assert documents[-1]["status"] == "failed"
    assert documents[-1]["failure"]["reason"] == "injected failure (fail_at)"
    revisions = [d["revision"] for d in documents]
    assert revisions == sorted(set(revisions))


async def test_cluster_and_inspect(cli: Cli, settings: Settings) -> None:
    async with running_node(settings, "node-c"):

        async def listed() -> Run | None:
            run = await cli("cluster", "--json")
            assert run.code == 0, run.err
            return run if [n["node_id"] for n in run.json()["nodes"]] == ["node-c"] else None

        view = (await wait_for(listed, within=10)).json()
        assert view["capacity"] == settings.concurrency
        table = await cli("cluster")
        assert table.code == 0, table.err
        assert table.out.splitlines()[1].split()[:3] == [
            "node-c",
            "active",
            f"0/{settings.concurrency}",
        ]
        assert "stream ORDERS" in table.out
        assert "consumer workers" in table.out

        inspected = await cli("inspect")
        assert inspected.code == 0, inspected.err
        for heading in (
            "Stream ORDERS ",
            "Stream ORDERS_DLQ ",
            "Consumer ORDERS > workers",
            "Key-Value Store orders",
            "Key-Value Store nodes",
            "Key-Value Store idempotency",
        ):
            assert heading in inspected.out
        assert "node-c" in inspected.out  # the nodes bucket's keys
        report = (await cli("inspect", "--json")).json()
        assert [s["name"] for s in report["streams"]] == ["ORDERS", "ORDERS_DLQ"]
        assert report["consumers"][0]["ack_wait"] == settings.ack_wait
        assert report["missing"] == []


async def test_failures_are_one_line_and_an_exit_code(cli: Cli) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    runs = await asyncio.gather(
        cli("order", "get", UNKNOWN_ORDER),
        cli("order", "history", "not-an-order"),
        cli("node", "drain", "nobody"),
        cli("order", "get", UNKNOWN_ORDER, "--api-url", dead),
        cli("cluster", env={"ORDERFLOW_API_URL": dead}),
        cli("inspect", "--nats-url", f"nats://127.0.0.1:{free_port()}"),
        cli("order", "submit", "--customer", "c", "--item", "no-quantity"),
        cli("order", "submit", "--customer", "c", "--item", "p:0"),
        cli("order", "submit", "--customer", "bad id!", "--item", "p:1"),
        cli("order", "watch"),
    )
    not_found, bad_id, no_node, unreachable, unreachable_env, broker_down, *bad_args = runs
    assert (not_found.code, not_found.err) == (
        1,
        f"orderflow order get: order {UNKNOWN_ORDER} not found\n",
    )
    assert bad_id.code == 1
    assert "not found" in bad_id.err
    assert no_node.code == 1
    assert "no live node nobody" in no_node.err
    for run in (unreachable, unreachable_env):
        assert run.code == 3
        assert f"cannot reach the api at {dead}" in run.err
    assert broker_down.code == 3
    assert "broker unavailable" in broker_down.err
    no_quantity, zero, refused, missing_id = bad_args
    assert no_quantity.code == zero.code == missing_id.code == 2
    assert "argument --item: 'no-quantity' is not PRODUCT:QTY" in no_quantity.err
    assert "quantity must be at least 1" in zero.err
    assert refused.code == 2  # the api's 422, naming the field
    assert "customer_id" in refused.err
    assert all(run.out == "" for run in runs)


async def test_node_drain_through_the_cli(cli: Cli, node_processes: NodeProcesses) -> None:
    node = node_processes.start("node-x")

    async def registered() -> bool:
        nodes: list[Any] = (await cli("cluster", "--json")).json()["nodes"]
        return nodes != []

    await wait_for(registered, within=20)
    drained = await cli("node", "drain", "node-x", "--wait", "--timeout", "20")
    assert drained.code == 0, drained.err
    assert drained.out.splitlines() == [
        "node node-x is draining: it finishes each order's current step, hands the rest back, "
        "then exits",
        "node node-x has left the cluster",
    ]
    assert await asyncio.to_thread(node.proc.wait, 20) == 0


def test_node_alone_still_runs_a_node() -> None:
    args, settings = parse(["node", "--node-id", "n-1", "--concurrency", "3"])
    assert (args.command, args.node_id, args.node_action) == ("node", "n-1", None)
    assert settings.concurrency == 3
    assert not handles(args)
    args, _ = parse(["node", "drain", "n-1", "--api-url", "http://h:1"])
    assert handles(args)
    assert (args.target_node_id, args.api_url) == ("n-1", "http://h:1")
