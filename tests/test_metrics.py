"""``/metrics`` on the api and on a node's ops listener: Prometheus text whose counters move as
orders flow."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from nodeapp import __version__
from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from tests.support.api_fixtures import (
    order_body,
)
from tests.support.orders import submit, wait_terminal
from tests.support.processes import NodeProcesses
from tests.support.services import wait_ops_url
from tests.support.waiting import wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(response: httpx.Response) -> Samples:
    """Every sample of a Prometheus text answer, keyed by (name, labels)."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_api_metrics_count_submissions_by_outcome(
    api: httpx.AsyncClient, broker: Handles
) -> None:
    before = parse(await api.get("/metrics"))
    assert value(before, "orderflow_orders_submitted_total", outcome="accepted") == 0

    key = {"Idempotency-Key": "metrics-1"}
    assert (await api.post("/orders", json=order_body(), headers=key)).status_code == 202
    assert (await api.post("/orders", json=order_body(), headers=key)).status_code == 202
    assert (await api.post("/orders", json=order_body())).status_code == 202
    assert (await api.post("/orders", json=order_body(customer_id=""))).status_code == 422

    after = parse(await api.get("/metrics"))
    submitted = "orderflow_orders_submitted_total"
    assert value(after, submitted, outcome="accepted") == 2
    assert value(after, submitted, outcome="replayed") == 1
    assert value(after, submitted, outcome="rejected") == 1
    assert value(after, submitted, outcome="unavailable") == 0
    latency = "orderflow_http_request_duration_seconds_count"
    assert value(after, latency, method="POST", route="/orders", status="202") == 3
    assert value(after, latency, method="POST", route="/orders", status="422") == 1
    # No node runs: both accepted orders wait in the stream.
    assert value(after, "orderflow_backlog_up") == 1
    assert value(after, "orderflow_backlog_pending") == 2
    assert value(after, "orderflow_backlog_ack_pending") == 0


async def test_node_metrics_move_as_orders_flow(
    settings: Settings, broker: Handles, node_processes: NodeProcesses
) -> None:
    node_processes.start("metrics-node")
    ops_url = await wait_ops_url(broker, "metrics-node")
    async with httpx.AsyncClient(base_url=ops_url, timeout=5.0) as client:
        before = parse(await client.get("/metrics"))
        assert value(before, "orderflow_orders_completed_total") == 0
        assert value(before, "orderflow_node_capacity") == settings.concurrency
        assert value(before, "orderflow_backlog_up") == 1

        completed = await submit(broker.intake)
        failed = await submit(broker.intake, fail_at="Pre-Processing")
        await wait_terminal(broker.store, completed)
        await wait_terminal(broker.store, failed)

        async def settled() -> Samples | None:
            # The counters move just after the terminal state is stored; scrape until they have.
            samples = parse(await client.get("/metrics"))
            done = value(samples, "orderflow_order_latency_seconds_count", status="failed")
            return samples if done == 1 else None

        after = await wait_for(settled, within=10)

    assert value(after, "orderflow_orders_completed_total") == 1
    assert value(after, "orderflow_orders_failed_total", step="Pre-Processing") == 1
    assert value(after, "orderflow_orders_failed_total", step="Processing") == 0
    steps = "orderflow_step_duration_seconds_count"
    assert value(after, steps, step="Scheduling", outcome="completed") == 2
    assert value(after, steps, step="Pre-Processing", outcome="failed") == 1
    assert value(after, steps, step="Post-Processing", outcome="completed") == 1
    assert value(after, "orderflow_order_latency_seconds_count", status="completed") == 1
    assert value(after, "orderflow_node_messages_received_total") == 2
    assert value(after, "orderflow_node_takeovers_total") == 0
    assert value(after, "orderflow_node_in_flight") == 0
    assert value(after, "orderflow_node_info", node_id="metrics-node", version=__version__) == 1
    assert value(after, "orderflow_backlog_pending") == 0
