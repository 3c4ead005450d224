"""The operator's CLI, run as ``python -m nodeapp ...`` subprocesses against a real api (uvicorn
in this process, on a free port) and a real broker: what it prints, and how it fails."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats.js.errors
import pytest

from api.server import serve_async
from nodeapp.cli.client_parser import handles
from nodeapp.cli.main import parse
from nodeapp.core.settings import Settings, settings_env
from nodeapp.local.natsserver import free_port
from nodeapp.local.supervisor import Child, child_env, python_module
from nodeapp.orders.handles import Handles
from nodeapp.shop.catalog import Catalog
from nodeapp.shop.resources import ensure_shop_resources
from tests.support.api_fixtures import served_settings
from tests.support.broker_users import as_role
from tests.support.cli import Cli, Run
from tests.support.nodes import running_node
from tests.support.processes import NodeProcesses
from tests.support.waiting import wait_for

UNKNOWN_ORDER = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    """The test's settings for an api on a free port, hosting the payment gateway: nodes run
    with these pay there."""
    return served_settings(settings, free_port())


@pytest.fixture
async def cli(api_settings: Settings, broker: Handles) -> AsyncIterator[Cli]:
    """An api served by uvicorn on a free port in this event loop, and a CLI pointed at it."""
    url = api_settings.api_url
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
    cli: Cli, api_settings: Settings
) -> None:
    submitted = await cli(
        "order", "submit", "--customer", "c-1", "--item", "sku-1:2", "--item", "a:1:3",
        "--amount", "20.00", "--idempotency-key", "k-1", "--json",
        "--email", "ann@example.com", "--phone", "+49 30 1234567", "--payment-token", "tok_visa",
    )  # fmt: skip
    assert submitted.code == 0, submitted.err
    order_id = submitted.json()["order_id"]
    assert submitted.json()["status"] == "accepted"

    # The watch follows the event stream: one line per stored revision.
    async with running_node(msgspec.structs.replace(api_settings, step_seconds=0.3), "node-c"):
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
    assert "sku-1 x2 at 6.25, a:1 x3 at 2.50" in shown.out
    assert "captured 20.00" in shown.out
    assert "ann@example.com, +49 30 1234567" in shown.out
    assert shown.out.count("node-c") >= 4  # owner and each step
    document = (await cli("order", "get", order_id, "--json")).json()
    assert document["status"] == "completed"
    assert document["amount"] == "20.00"
    assert document["payment_token"] == "tok_visa"
    assert document["contact"] == {"email": "ann@example.com", "phone": "+49 30 1234567"}

    history = await cli("order", "history", order_id)
    assert history.code == 0, history.err
    assert "claimed by node-c (epoch 1), Scheduling started" in history.out
    assert history.out.splitlines()[0].split() == [
        "REV", "TIME", "STATUS", "STEP", "NODE", "TRANSITION",
    ]  # fmt: skip
    revisions = (await cli("order", "history", order_id, "--json")).json()
    assert [r["transition"] for r in revisions][-1] == "Post-Processing completed, order completed"

    replay = await cli(
        "order", "submit", "--customer", "c-1", "--item", "sku-1:2", "--item", "a:1:3",
        "--amount", "20.00", "--idempotency-key", "k-1",
        "--email", "ann@example.com", "--phone", "+49 30 1234567", "--payment-token", "tok_visa",
    )  # fmt: skip
    assert replay.code == 0, replay.err
    assert order_id in replay.out
    assert "replayed" in replay.out


async def test_watch_follows_a_failure_and_its_rollback(cli: Cli, api_settings: Settings) -> None:
    submitted = await cli(
        "order", "submit", "--customer", "c-2", "--item", "sku-2:1", "--fail-at", "Processing"
    )
    assert submitted.code == 0, submitted.err
    order_id = submitted.out.split()[1]
    assert f"orderflow order watch {order_id}" in submitted.out
    async with running_node(api_settings, "node-c"):
        watched = await cli("order", "watch", order_id, "--interval", "0.05", "--json")
    assert watched.code == 0, watched.err
    documents = [json.loads(line) for line in watched.out.splitlines()]
    assert documents[-1]["status"] == "failed"
    assert documents[-1]["failure"]["reason"] == "injected failure (fail_at)"
    revisions = [d["revision"] for d in documents]
    assert revisions == sorted(set(revisions))


async def test_cancel_a_queued_order_then_again(cli: Cli) -> None:
    submitted = await cli("order", "submit", "--customer", "c-3", "--item", "sku-1:1")
    assert submitted.code == 0, submitted.err
    order_id = submitted.out.split()[1]
    cancelled = await cli("order", "cancel", order_id)  # no node runs: it never started
    assert cancelled.code == 0, cancelled.err
    assert cancelled.out == f"order {order_id} cancelled: no step had started\n"
    again = await cli("order", "cancel", order_id)
    assert again.code == 2  # the api's 409
    assert again.err.strip() == (
        f"orderflow order cancel: order {order_id} is already cancelled: nothing to cancel"
    )
    shown = await cli("order", "get", order_id, "--json")
    assert (shown.json()["status"], shown.json()["current_step"]) == ("cancelled", "Cancelled")
    assert (await cli("order", "cancel", UNKNOWN_ORDER)).code == 1


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


async def test_init_creates_the_shops_resources_too(
    settings: Settings, bare_broker: Handles
) -> None:
    with pytest.raises(nats.js.errors.NotFoundError):
        await bare_broker.js.key_value("catalog")
    run = await Cli({**os.environ, **settings_env(settings)})("init")
    assert (run.code, run.out) == (0, f"JetStream resources ready on {settings.nats_url_shown}\n")
    for bucket in ("catalog", "stock", "gateway", "payments", "notifications"):
        await bare_broker.js.key_value(bucket)
    await bare_broker.js.consumer_info("NOTIFICATIONS", "notifier")


async def test_catalog_load_then_ls(
    cli: Cli, broker: Handles, api_settings: Settings, tmp_path: Path
) -> None:
    """``catalog load`` goes straight to the broker; a reload changes nothing; ``ls`` pages."""
    products = [
        {"product_id": "tea:green", "name": "Green tea", "price": "4.5", "on_hand": 12},
        {"product_id": "tea-pot", "name": "Tea pot", "price": 30, "active": False},
    ]
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(products))
    loaded = await cli("catalog", "load", str(path))
    assert loaded.code == 0, loaded.err
    assert f"{path}: 2 products: 2 created, 0 updated, 0 unchanged; stock set for 1" in loaded.out
    again = await cli("catalog", "load", str(path), "--json")
    assert again.code == 0, again.err
    assert again.json() == {
        "created": 0, "updated": 0, "unchanged": 2, "stocked": 0, "stock_kept": 1,
    }  # fmt: skip
    catalog = Catalog(broker.js, await ensure_shop_resources(broker.js, api_settings))
    assert (await catalog.view("tea:green")).stock.on_hand == 12
    assert (await catalog.get("tea-pot")).price == Decimal("30.00")

    listed = await cli("catalog", "ls", "--limit", "500")
    assert listed.code == 0, listed.err
    rows = {line.split()[0]: line.split()[1:3] for line in listed.out.splitlines()[1:]}
    assert rows["tea:green"] == ["4.50", "yes"]
    assert rows["tea-pot"] == ["30.00", "no"]
    first = await cli("catalog", "ls", "--limit", "1", "--json")
    cursor = first.json()["next_cursor"]
    assert cursor is not None
    second = await cli("catalog", "ls", "--limit", "1", "--cursor", cursor, "--json")
    assert second.json()["products"][0]["product_id"] > first.json()["products"][0]["product_id"]


async def test_catalog_load_refuses_a_bad_file_whole(
    cli: Cli, broker: Handles, api_settings: Settings, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            [
                {"product_id": "fine", "name": "Fine", "price": "1.00"},
                {"product_id": "pricey", "name": "Pricey", "price": "1.005"},
            ]
        )
    )
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    runs = await asyncio.gather(
        cli("catalog", "load", str(bad)),
        cli("catalog", "load", str(broken)),
        cli("catalog", "load", str(tmp_path / "missing.json")),
        # The file is checked before the broker is asked: no wait for a broker that is away.
        cli("catalog", "load", str(bad), "--nats-url", f"nats://127.0.0.1:{free_port()}"),
    )
    refused, unreadable, missing, refused_offline = runs
    assert refused_offline.err == refused.err
    assert refused.code == 2
    assert refused.err == (
        f"orderflow catalog load: {bad}: nothing loaded: "
        "entry 1 (pricey): price must have at most 2 fractional digits\n"
    )
    assert unreadable.code == 2
    assert "body is not valid JSON" in unreadable.err
    assert missing.code == 2
    assert "cannot read" in missing.err
    assert all(run.out == "" and run.err.count("\n") == 1 for run in runs)
    catalog = Catalog(broker.js, await ensure_shop_resources(broker.js, api_settings))
    assert await catalog.find("fine") is None  # nothing of the bad file was written


async def test_payments_runs_the_gateway_alone(
    api_settings: Settings, broker: Handles, tmp_path: Path
) -> None:
    """``orderflow payments``: the simulated gateway on its own port (as the broker's ``api``
    user, as compose would run it); SIGTERM exits 0."""
    port = free_port()
    env = child_env(as_role(api_settings, "api"), ORDERFLOW_LOG_FORMAT="json")
    gateway = Child(
        "payments", python_module("nodeapp", "payments", "--port", str(port)), env=env,
        log_path=tmp_path / "payments.log",
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def answers() -> httpx.Response | None:
                assert gateway.alive, gateway.log_tail()
                try:
                    return await http.get(f"/{UNKNOWN_ORDER}")
                except httpx.TransportError:
                    return None

            unknown = await wait_for(answers, within=20)
            assert unknown.status_code == 404
            assert unknown.headers["content-type"].startswith("application/problem+json")
            body = {
                "order_id": UNKNOWN_ORDER, "amount": "1.00", "token": "tok_silent", "epoch": 1,
                "callback_url": f"{api_settings.api_url}/payments/callback",
            }  # fmt: skip
            authorized = await http.post("/authorize", json=body)
            assert authorized.status_code == 202, authorized.text
            assert authorized.json()["status"] == "pending"
    finally:
        assert await asyncio.to_thread(gateway.stop, 15.0) == 0, gateway.log_tail()


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


async def test_tokens_create_list_revoke_and_the_api_follows(
    cli: Cli, caplog: pytest.LogCaptureFixture
) -> None:
    """``token create`` prints the token once; ``list`` never shows it (nor its hash); the CLI
    sends ``ORDERFLOW_TOKEN``; a revoked token is refused at once (exit 2, one line, no token)."""
    caplog.set_level(logging.INFO)  # the api serves in this process: its log lines land here
    created = await cli(
        "token", "create", "--name", "reader", "--scopes", "orders:read", "--ttl", "3600"
    )
    assert created.code == 0, created.err
    token = created.out.split()[1]
    shown = dict(line.split(None, 1) for line in created.out.splitlines()[:-1])
    assert shown["token"] == token
    assert token.startswith(f"of_{shown['id']}_")
    assert (shown["name"], shown["scopes"]) == ("reader", "orders:read")
    assert "expires" in shown
    assert created.out.splitlines()[-1].startswith("shown once")
    ops = (await cli("token", "create", "--name", "ops bot", "--scopes", "ops,orders:read",
                     "--customer", "c-9", "--json")).json()  # fmt: skip
    assert set(ops) == {
        "token", "token_id", "name", "scopes", "customer_id", "created_at", "expires_at",
        "revoked_at",
    }  # fmt: skip
    assert (ops["scopes"], ops["customer_id"], ops["expires_at"]) == (["ops", "orders:read"],
                                                                     "c-9", None)  # fmt: skip

    submitted = await cli("order", "submit", "--customer", "c-1", "--item", "sku-1:1", "--json")
    assert submitted.code == 0, submitted.err  # as the settings' admin (ORDERFLOW_ADMIN_TOKEN)
    order_id = submitted.json()["order_id"]
    as_reader = {"ORDERFLOW_TOKEN": token}
    got = await cli("order", "get", order_id, "--json", env=as_reader)
    assert (got.code, got.json()["order_id"]) == (0, order_id)
    refused = await cli("order", "submit", "--customer", "c-1", "--item", "sku-1:1", env=as_reader)
    assert refused.code == 2
    assert refused.err.startswith("orderflow order submit: forbidden: ")
    assert "orders:write" in refused.err
    assert "ORDERFLOW_TOKEN" in refused.err

    listed = await cli("token", "list")
    assert listed.code == 0, listed.err
    header, *rows = listed.out.splitlines()
    assert header.split() == ["ID", "NAME", "SCOPES", "CUSTOMER", "CREATED", "EXPIRES", "REVOKED"]
    assert [row.split()[0] for row in rows] == [shown["id"], ops["token_id"]]
    assert rows[0].split()[-1] == "-"  # not revoked
    records = (await cli("token", "list", "--json")).json()
    assert [set(r) for r in records] == [set(ops) - {"token"}] * 2  # no token, no hash

    revoked = await cli("token", "revoke", shown["id"])
    assert revoked.code == 0, revoked.err
    assert revoked.out.startswith(f"token {shown['id']} (reader) revoked at ")
    assert (await cli("token", "revoke", shown["id"])).code == 0  # again: still revoked

    async def refused_now() -> Run | None:
        run = await cli("order", "get", order_id, env=as_reader)
        return run if run.code != 0 else None

    after = await wait_for(refused_now, within=5)
    assert after.code == 2
    assert after.err == (
        "orderflow order get: unauthorized: API token revoked (the token in ORDERFLOW_TOKEN); "
        "set ORDERFLOW_TOKEN to a valid one\n"
    )
    listed_again = (await cli("token", "list", "--json")).json()
    assert listed_again[0]["revoked_at"] is not None
    everything = [created.err, listed.out, listed.err, revoked.out, after.out, after.err]
    everything += [str(records), str(listed_again), caplog.text]
    for secret in (token, ops["token"], token.split("_", 2)[2], ops["token"].split("_", 2)[2]):
        assert all(secret not in text for text in everything)


async def test_token_commands_name_the_bad_field(cli: Cli) -> None:
    runs = await asyncio.gather(
        cli("token", "create", "--name", "x", "--scopes", "orders:reed,ops"),
        cli("token", "create", "--name", "x", "--scopes", "ops", "--ttl", "-5"),
        cli("token", "create", "--name", "x", "--scopes", "ops", "--customer", "bad id!"),
        cli("token", "create", "--name", " ", "--scopes", ""),
        cli("token", "revoke", "0123456789abcdef"),
        cli("token", "revoke", "not-an-id"),
        cli(
            "order", "get", UNKNOWN_ORDER, env={"ORDERFLOW_ADMIN_TOKEN": "", "ORDERFLOW_TOKEN": ""}
        ),
        cli("order", "get", UNKNOWN_ORDER, env={"ORDERFLOW_TOKEN": "of_guess"}),
        cli("token", "list", "--nats-url", f"nats://127.0.0.1:{free_port()}"),
    )
    scope, ttl, customer, empty, unknown, bad_id, no_token, guessed, broker_down = runs
    assert scope.code == ttl.code == customer.code == empty.code == 2
    assert scope.err == (
        "orderflow token create: --scopes: unknown scope 'orders:reed' "
        "(known: admin, catalog:write, ops, orders:read, orders:write)\n"
    )
    assert ttl.err.startswith("orderflow token create: --ttl: must be seconds, > 0")
    assert customer.err.startswith("orderflow token create: --customer: must be 1-64 of")
    assert "--scopes: name at least one scope; --name: must be 1-64" in empty.err
    for run in (unknown, bad_id):
        assert run.code == 1
        assert "not found" in run.err
    assert no_token.code == 2
    assert no_token.err.startswith(
        "orderflow order get: the api needs a token: set ORDERFLOW_TOKEN"
    )
    assert guessed.code == 2
    assert "unauthorized: API token malformed" in guessed.err
    assert "of_guess" not in guessed.err
    assert broker_down.code == 3
    assert all(run.out == "" and run.err.count("\n") == 1 for run in runs)
