"""A node process's ops endpoints: stat, the two watchdogs (also while the broker is down),
metrics, errors, and ``POST /stop`` draining the node until the process exits 0, for a token
with ``ops`` only (401 without a valid one, 403 without the scope); the read-only endpoints need
no token. A token other than the admin's is judged by the api over NATS (the node may not read
the ``tokens`` bucket): without an api it gets 503."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from nodeapp.broker.kv import live_keys
from nodeapp.core.settings import Settings
from nodeapp.local.natsserver import NatsServer
from nodeapp.orders.handles import Handles
from tests.support.orders import submit, wait_terminal
from tests.support.processes import NodeProcess, NodeProcesses
from tests.support.services import wait_ops_url
from tests.support.tokens import TEST_ADMIN_TOKEN, bearer, mint_token, token_store
from tests.support.waiting import wait_for


@pytest.fixture
async def ops(
    broker: Handles, node_processes: NodeProcesses
) -> AsyncIterator[tuple[NodeProcess, httpx.AsyncClient]]:
    node = node_processes.start("ops-node")
    ops_url = await wait_ops_url(broker, "ops-node")
    async with httpx.AsyncClient(base_url=ops_url, timeout=5.0) as client:
        yield node, client


async def status_of(client: httpx.AsyncClient, path: str) -> tuple[int, Any]:
    response = await client.get(path)
    assert response.headers["content-type"] == "application/json"
    return response.status_code, response.json()


async def test_stat_reports_the_node(
    ops: tuple[NodeProcess, httpx.AsyncClient], settings: Settings, broker: Handles
) -> None:
    _, client = ops
    order_id = await submit(broker.intake)
    await wait_terminal(broker.store, order_id)

    async def counted() -> Any:
        _, stat = await status_of(client, "/stat")
        return stat if stat["counters"]["completed"] == 1 else None

    stat = await wait_for(counted, within=10)
    assert stat["node_id"] == "ops-node"
    assert stat["state"] == "active"
    assert stat["fenced"] is False
    assert (stat["in_flight"], stat["capacity"]) == (0, settings.concurrency)
    assert stat["uptime_s"] > 0
    assert stat["ops_url"] == str(client.base_url).rstrip("/")


async def test_unknown_paths_and_wrong_methods_are_json_errors(
    ops: tuple[NodeProcess, httpx.AsyncClient],
) -> None:
    node, client = ops
    missing = await client.get("/nope")
    assert (missing.status_code, missing.json()["status"]) == (404, 404)
    wrong = await client.get("/stop")
    assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")
    assert (await client.post("/stat")).status_code == 405
    # A request head over the bound is refused, and the node carries on.
    huge = await client.get("/stat", headers={"X-Padding": "x" * 20_000})
    assert huge.status_code == 431
    assert (await client.get("/metrics")).status_code == 200
    assert node.alive


async def test_watchdogs_report_a_broker_outage_and_recovery(
    ops: tuple[NodeProcess, httpx.AsyncClient], nats_server: NatsServer
) -> None:
    _, client = ops
    status, healthy = await status_of(client, "/watchdog/external")
    assert status == 200, healthy
    assert set(healthy["checks"]) == {
        "broker",
        "jetstream",
        "kv",
        "stream ORDERS",
        "consumer workers",
        "bucket orders",
        "bucket nodes",
    }
    assert all(check["ok"] for check in healthy["checks"].values())
    assert healthy["checks"]["jetstream"]["ms"] >= 0
    status, self_check = await status_of(client, "/watchdog/self")
    assert (status, self_check["heartbeat_fresh"], self_check["fenced"]) == (200, True, False)
    assert self_check["loop_lag_ms"] < 1000

    nats_server.stop()
    started = time.monotonic()
    status, down = await status_of(client, "/watchdog/external")
    assert time.monotonic() - started < 2.5
    assert status == 503
    assert down["checks"]["broker"]["ok"] is False

    async def fenced() -> bool:
        # Without heartbeats for longer than the lease the node fences itself.
        return (await status_of(client, "/watchdog/self"))[0] == 503

    await wait_for(fenced, within=10, interval=0.2)

    nats_server.start()

    async def recovered() -> bool:
        external, _ = await status_of(client, "/watchdog/external")
        own, _ = await status_of(client, "/watchdog/self")
        return external == own == 200

    await wait_for(recovered, within=15, interval=0.2)


@pytest.mark.usefixtures("api")  # judges the tokens the node is shown
async def test_post_stop_needs_a_token_with_ops(
    ops: tuple[NodeProcess, httpx.AsyncClient], broker: Handles, settings: Settings
) -> None:
    node, client = ops
    reader = await mint_token(broker, settings, "orders:read", "catalog:write")
    revoked = await mint_token(broker, settings, "ops")
    await (await token_store(broker, settings)).revoke(revoked.split("_")[1])
    refusals = {
        "none": await client.post("/stop"),
        "basic": await client.post("/stop", headers={"Authorization": "Basic b3BzOm9wcw=="}),
        "unknown": await client.post("/stop", headers=bearer("of_" + "0" * 16 + "_" + "x" * 43)),
        "revoked": await client.post("/stop", headers=bearer(revoked)),
        "no ops": await client.post("/stop", headers=bearer(reader)),
    }
    statuses = {name: response.status_code for name, response in refusals.items()}
    assert statuses == {"none": 401, "basic": 401, "unknown": 401, "revoked": 401, "no ops": 403}
    assert refusals["none"].headers["www-authenticate"] == "Bearer"
    assert refusals["revoked"].json()["error"].endswith("API token revoked")
    assert "lacks the scope ops" in refusals["no ops"].json()["error"]
    for text in (reader, revoked):
        assert all(text not in r.text for r in refusals.values())
        assert all(text not in line for line in node.log_lines())
    # Nothing happened: still active, and the read-only endpoints need no token.
    assert (await status_of(client, "/stat"))[1]["state"] == "active"
    assert (await client.get("/watchdog/self")).status_code == 200
    assert node.alive


async def test_post_stop_without_an_api_takes_only_the_admin_token(
    ops: tuple[NodeProcess, httpx.AsyncClient], broker: Handles, settings: Settings
) -> None:
    node, client = ops
    token = await mint_token(broker, settings, "ops")
    response = await client.post("/stop", headers=bearer(token))
    assert response.status_code == 503
    assert "no api answers token checks" in response.json()["error"]
    assert token not in response.text
    assert (await status_of(client, "/stat"))[1]["state"] == "active"
    # The admin token is the node's own ORDERFLOW_ADMIN_TOKEN: no api needed.
    assert (await client.post("/stop", headers=bearer(TEST_ADMIN_TOKEN))).status_code == 202

    async def exited() -> bool:
        return not node.alive

    await wait_for(exited, within=15)
    assert node.proc.returncode == 0


@pytest.mark.usefixtures("api")
@pytest.mark.parametrize("who", ["ops token", "admin token"])
async def test_post_stop_drains_the_node_and_it_exits_0(
    ops: tuple[NodeProcess, httpx.AsyncClient], broker: Handles, settings: Settings, who: str
) -> None:
    node, client = ops
    token = TEST_ADMIN_TOKEN if who == "admin token" else await mint_token(broker, settings, "ops")
    assert settings.admin_token == TEST_ADMIN_TOKEN  # the node's ORDERFLOW_ADMIN_TOKEN
    response = await client.post("/stop", headers=bearer(token))
    assert response.status_code == 202
    assert response.json() == {"node_id": "ops-node", "state": "draining"}

    async def exited() -> bool:
        return not node.alive

    await wait_for(exited, within=15)
    assert node.proc.returncode == 0
    assert any('"event":"node.stop_requested"' in line for line in node.log_lines())

    async def deregistered() -> bool:
        return "ops-node" not in await live_keys(broker.js, broker.buckets.nodes)

    await wait_for(deregistered, within=5)
