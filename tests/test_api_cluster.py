"""The ops views of the api: ``/cluster`` with a live node, one node, drain, an order's history."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import msgspec

from nodeapp.cluster.membership import Heartbeat, NodeStats
from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import STEP_NAMES, encode, utcnow
from tests.support.api_fixtures import ServedApi, assert_problem, order_body
from tests.support.nodes import running_node
from tests.support.processes import NodeProcesses
from tests.support.waiting import wait_for

UNKNOWN_ORDER = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


async def _submit(api: httpx.AsyncClient, **changes: Any) -> str:
    response = await api.post("/orders", json=order_body(**changes))
    assert response.status_code == 202, response.text
    order_id: str = response.json()["order_id"]
    return order_id


async def _cluster(api: httpx.AsyncClient) -> dict[str, Any]:
    response = await api.get("/cluster")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


async def _wait_terminal(api: httpx.AsyncClient, order_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        order: dict[str, Any] = (await api.get(f"/orders/{order_id}")).json()
        return order if order["status"] in ("completed", "failed") else None

    return await wait_for(probe, within=20)


async def test_cluster_shows_the_backlog_then_the_node_working_it_off(
    served_api: ServedApi,
) -> None:
    api, settings = served_api.http, served_api.settings
    idle = await _cluster(api)
    assert idle["nodes"] == []
    assert (idle["capacity"], idle["in_flight"]) == (0, 0)
    assert idle["stream"]["name"] == "ORDERS"
    assert idle["consumer"]["name"] == "workers"
    assert idle["consumer"]["ack_wait"] == settings.ack_wait
    assert idle["consumer"]["max_deliver"] == settings.max_deliver
    assert idle["buckets"]["orders"]["history"] == 64
    assert idle["dead_letters"] == {"messages": 0}

    for _ in range(3):
        await _submit(api)
    backlog = await _cluster(api)
    assert backlog["stream"]["messages"] == 3
    assert backlog["stream"]["last_seq"] == 3
    assert backlog["consumer"]["num_pending"] == 3
    assert backlog["buckets"]["orders"]["values"] == 3

    async with running_node(settings, "node-a"):

        async def worked_off() -> dict[str, Any] | None:
            view = await _cluster(api)
            nodes = view["nodes"]
            done = nodes and nodes[0]["counters"]["completed"] == 3
            return view if done and view["stream"]["messages"] == 0 else None

        view = await wait_for(worked_off, within=20)
        [node] = view["nodes"]
        assert node["node_id"] == "node-a"
        assert node["state"] == "active"
        assert node["concurrency"] == settings.concurrency
        assert view["capacity"] == settings.concurrency
        assert view["consumer"]["num_pending"] == 0
        assert view["consumer"]["num_ack_pending"] == 0
        assert view["buckets"]["nodes"]["values"] >= 1

        one = await api.get("/cluster/nodes/node-a")
        assert one.status_code == 200, one.text
        assert one.json()["node_id"] == "node-a"
        assert one.json()["pid"] > 0
    # A node that exits cleanly leaves the registry at once.
    assert (await _cluster(api))["nodes"] == []
    assert_problem(await api.get("/cluster/nodes/node-a"), 404)


async def test_unknown_and_malformed_node_ids_are_404(api: httpx.AsyncClient) -> None:
    for node_id in ("nobody", "not.a.node", "*"):
        problem = assert_problem(await api.get(f"/cluster/nodes/{node_id}"), 404)
        assert problem["detail"] == f"no live node {node_id}"
        problem = assert_problem(await api.post(f"/cluster/nodes/{node_id}/drain"), 404)
        assert problem["detail"] == f"no live node {node_id}"


async def test_drain_of_a_registered_node_that_does_not_answer_is_503(
    api: httpx.AsyncClient, broker: Handles, settings: Settings
) -> None:
    """A heartbeat with nobody behind the drain subject (an older node, or a stale entry)."""
    ghost = Heartbeat(
        node_id="ghost",
        host=socket.gethostname(),
        pid=1,
        version="0.0.1",
        started_at=utcnow(),
        state="active",
        concurrency=settings.concurrency,
        in_flight=0,
        ops_url=None,
        counters=NodeStats(),
        updated_at=utcnow(),
    )
    await broker.buckets.nodes.put("ghost", encode(ghost))
    listed = await _cluster(api)
    assert [n["node_id"] for n in listed["nodes"]] == ["ghost"]
    problem = assert_problem(await api.post("/cluster/nodes/ghost/drain"), 503)
    assert "ghost" in problem["detail"]
    assert "does not answer drain requests" in problem["detail"]


async def test_unreadable_heartbeat_is_left_out(api: httpx.AsyncClient, broker: Handles) -> None:
    await broker.buckets.nodes.put("garbled", b"{not json")
    assert (await _cluster(api))["nodes"] == []
    assert_problem(await api.get("/cluster/nodes/garbled"), 404)


async def test_drain_through_the_api_stops_the_node(
    api: httpx.AsyncClient, broker: Handles, node_processes: NodeProcesses
) -> None:
    """A real ``orderflow node`` process: the drain travels api -> NATS -> node, which exits 0."""
    node = node_processes.start("node-d")
    await wait_for(lambda: _listed(api, "node-d"), within=20)
    response = await api.post("/cluster/nodes/node-d/drain")
    assert response.status_code == 202, response.text
    assert response.json() == {"node_id": "node-d", "state": "draining"}
    assert await asyncio.to_thread(node.proc.wait, 20) == 0
    assert not await _listed(api, "node-d")
    assert_problem(await api.post("/cluster/nodes/node-d/drain"), 404)


async def _listed(api: httpx.AsyncClient, node_id: str) -> bool:
    return node_id in [n["node_id"] for n in (await _cluster(api))["nodes"]]


async def _history(api: httpx.AsyncClient, order_id: str) -> list[dict[str, Any]]:
    response = await api.get(f"/orders/{order_id}/history")
    assert response.status_code == 200, response.text
    revisions: list[dict[str, Any]] = response.json()
    return revisions


def _assert_well_ordered(revisions: list[dict[str, Any]], final: dict[str, Any]) -> None:
    numbers = [r["revision"] for r in revisions]
    assert numbers == sorted(numbers)
    assert len(set(numbers)) == len(numbers)
    times = [r["time"] for r in revisions]
    assert all(t.endswith("Z") for t in times)
    assert times == sorted(times)
    for r in revisions:
        assert r["document"]["revision"] == r["revision"]
        assert r["status"] == r["document"]["status"]
        assert r["current_step"] == r["document"]["current_step"]
    assert revisions[-1]["document"] == final
    assert revisions[0]["transition"] == "accepted"
    assert revisions[0]["node_id"] is None
    assert all(r["node_id"] == "node-h" for r in revisions[1:])


async def test_history_of_a_completed_order(served_api: ServedApi) -> None:
    api, settings = served_api.http, served_api.settings
    order_id = await _submit(api)
    async with running_node(settings, "node-h"):
        final = await _wait_terminal(api, order_id)
    revisions = await _history(api, order_id)
    _assert_well_ordered(revisions, final)
    transitions = [r["transition"] for r in revisions]
    assert transitions == [
        "accepted",
        "claimed by node-h (epoch 1), Scheduling started",
        "Scheduling completed, Pre-Processing started",
        "Pre-Processing completed, Processing started",
        "Processing completed, Post-Processing started",
        "Post-Processing completed, order completed",
    ]
    assert [r["current_step"] for r in revisions] == [
        STEP_NAMES[0],
        *STEP_NAMES,
        "Completed",
    ]


async def test_history_of_a_failed_order(served_api: ServedApi) -> None:
    api, settings = served_api.http, served_api.settings
    order_id = await _submit(api, fail_at="Processing")
    async with running_node(settings, "node-h"):
        final = await _wait_terminal(api, order_id)
    assert final["status"] == "failed"
    revisions = await _history(api, order_id)
    _assert_well_ordered(revisions, final)
    transitions = [r["transition"] for r in revisions]
    assert transitions[3:] == [
        "Pre-Processing completed, Processing started",
        "Processing failed: injected failure (fail_at)",
        "Processing rolled back",
        "Pre-Processing rolled back",
        "Scheduling rolled back, order failed",
    ]
    assert [r["status"] for r in revisions][-4:] == ["rolling_back"] * 3 + ["failed"]


async def test_history_of_unknown_or_malformed_ids_is_404(api: httpx.AsyncClient) -> None:
    assert_problem(await api.get(f"/orders/{UNKNOWN_ORDER}/history"), 404)
    assert_problem(await api.get("/orders/not-an-id/history"), 404)


async def test_openapi_documents_the_ops_routes(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/schema/openapi.json")).json()
    paths = spec["paths"]
    assert set(paths["/cluster/nodes/{node_id}/drain"]["post"]["responses"]) >= {
        "202",
        "404",
        "503",
        "504",
    }
    assert "200" in paths["/cluster"]["get"]["responses"]
    assert "404" in paths["/orders/{order_id}/history"]["get"]["responses"]
    history = spec["components"]["schemas"]["Revision"]["properties"]
    assert {"revision", "time", "transition", "document"} <= set(history)


def test_heartbeat_decoding_tolerates_unknown_fields() -> None:
    """A newer node may add fields to its heartbeat; this api still lists it."""
    from nodeapp.cluster.view import decode_heartbeat

    raw = msgspec.json.decode(
        encode(
            Heartbeat(
                node_id="n",
                host="h",
                pid=2,
                version="9.9.9",
                started_at=utcnow(),
                state="draining",
                concurrency=5,
                in_flight=1,
                ops_url="http://127.0.0.1:1",
                counters=NodeStats(completed=4),
                updated_at=utcnow(),
            )
        )
    )
    raw["added_in_a_later_version"] = {"x": 1}
    raw["counters"]["new_counter"] = 7
    beat = decode_heartbeat("n", msgspec.json.encode(raw))
    assert beat is not None
    assert (beat.node_id, beat.state, beat.counters.completed) == ("n", "draining", 4)
