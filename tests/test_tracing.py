"""One order, one trace across processes: api server span -> producer -> node consumer -> steps.

A real api process and a real node process export to a local OTLP/HTTP receiver, as they would
to Jaeger.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from nodeapp.core.errors import OrderNotFound
from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import STEP_NAMES
from tests.support.api_fixtures import order_body
from tests.support.otlp import (
    OtlpReceiver,
    ReceivedSpan,
    exporter_env,
)
from tests.support.processes import NodeProcesses
from tests.support.services import ApiProcess
from tests.support.waiting import wait_for


@pytest.fixture
async def traced_api(
    settings: Settings,
    broker: Handles,
    node_processes: NodeProcesses,
    receiver: OtlpReceiver,
    tmp_path: Path,
) -> AsyncIterator[ApiProcess]:
    """A traced api on the test's broker (its catalog loaded); the nodes pay at its gateway."""
    paying = msgspec.structs.replace(settings, payment_secret="tracing-test-payment-secret")
    api = ApiProcess(paying, tmp_path / "api.log", **exporter_env(receiver))
    node_processes.settings = msgspec.structs.replace(paying, api_url=api.url)
    try:
        await api.wait_ready()
        yield api
    finally:
        assert api.stop() == 0


class OrderTrace:
    """The spans of one order's trace, found from its producer span."""

    def __init__(self, spans: list[ReceivedSpan], order_id: str) -> None:
        producer = next(
            s for s in spans if s.attributes.get("messaging.message.id") == order_id
            and s.kind == "PRODUCER"
        )  # fmt: skip
        self.producer = producer
        self.spans = sorted(
            (s for s in spans if s.trace_id == producer.trace_id), key=lambda s: s.start_ns
        )
        self.order_spans = [s for s in spans if s.attributes.get("orderflow.order_id") == order_id]

    def one(self, **match: str) -> ReceivedSpan:
        found = [s for s in self.spans if all(getattr(s, k) == v for k, v in match.items())]
        assert len(found) == 1, (match, found)
        return found[0]

    def children(self, parent: ReceivedSpan) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.parent_span_id == parent.span_id]


async def wait_trace(
    receiver: OtlpReceiver, order_id: str, last_span: str, within: float = 20.0
) -> OrderTrace:
    """Wait until the order's trace holds ``last_span`` (spans arrive in batches, per process)."""

    async def probe() -> OrderTrace | None:
        spans = receiver.snapshot()
        try:
            trace = OrderTrace(spans, order_id)
        except StopIteration:
            return None
        names = {s.name for s in trace.spans}
        return trace if {"POST /orders", "orders.work process", last_span} <= names else None

    return await wait_for(probe, within, interval=0.1)


async def submit(api: ApiProcess, **body: str) -> str:
    async with api.client() as client:  # as the test admin
        response = await client.post("/orders", json=order_body(**body))
    assert response.status_code == 202, response.text
    order_id: str = response.json()["order_id"]
    return order_id


def assert_chain(trace: OrderTrace, order_id: str) -> ReceivedSpan:
    """server -> producer -> consumer, across the two services; return the consumer span."""
    server = trace.one(name="POST /orders")
    assert (server.service, server.kind, server.parent_span_id) == ("orderflow-api", "SERVER", "")
    assert server.attributes["http.route"] == "/orders"
    producer = trace.producer
    assert (producer.name, producer.service) == ("orders.work publish", "orderflow-api")
    assert producer.parent_span_id == server.span_id
    assert producer.attributes["messaging.system"] == "nats"
    assert producer.attributes["messaging.destination.name"] == "orders.work"
    consumer = trace.one(name="orders.work process")
    assert (consumer.service, consumer.kind) == ("orderflow-node", "CONSUMER")
    assert consumer.parent_span_id == producer.span_id
    assert consumer.attributes["orderflow.order_id"] == order_id
    # Everything the order touched is in this one trace.
    assert {s.trace_id for s in trace.order_spans} == {producer.trace_id}
    return consumer


async def test_one_order_is_one_trace_across_api_and_node(
    traced_api: ApiProcess, receiver: OtlpReceiver, node_processes: NodeProcesses
) -> None:
    node_processes.start("traced-node", **exporter_env(receiver))
    order_id = await submit(traced_api)

    trace = await wait_trace(receiver, order_id, f"step {STEP_NAMES[-1]}")
    consumer = assert_chain(trace, order_id)
    assert not consumer.error
    assert consumer.attributes["orderflow.outcome"] == "completed"
    steps = trace.children(consumer)
    assert [s.name for s in steps] == [f"step {name}" for name in STEP_NAMES]
    for span, name in zip(steps, STEP_NAMES, strict=True):
        assert span.attributes == {
            "orderflow.order_id": order_id,
            "orderflow.step": name,
            "orderflow.node_id": "traced-node",
            "orderflow.attempt": 1,
            "orderflow.epoch": 1,
            "orderflow.outcome": "completed",
        }
        assert not span.error


async def test_a_failed_order_has_compensation_spans_and_an_error_status(
    traced_api: ApiProcess, receiver: OtlpReceiver, node_processes: NodeProcesses
) -> None:
    node_processes.start("traced-node", **exporter_env(receiver))
    order_id = await submit(traced_api, fail_at="Processing")

    trace = await wait_trace(receiver, order_id, "compensate Scheduling")
    consumer = assert_chain(trace, order_id)
    assert consumer.error
    assert consumer.attributes["orderflow.outcome"] == "failed"
    children = [
        (s.name, s.error, s.attributes["orderflow.outcome"]) for s in trace.children(consumer)
    ]
    assert children == [
        ("step Scheduling", False, "completed"),
        ("step Pre-Processing", False, "completed"),
        ("step Processing", True, "failed"),
        ("compensate Processing", False, "rolled_back"),
        ("compensate Pre-Processing", False, "rolled_back"),
        ("compensate Scheduling", False, "rolled_back"),
    ]


async def test_a_takeover_after_a_crash_continues_the_same_trace(
    traced_api: ApiProcess, receiver: OtlpReceiver, node_processes: NodeProcesses, broker: Handles
) -> None:
    crashing = node_processes.start(
        "crashing-node", ORDERFLOW_STEP_SECONDS="1.5", **exporter_env(receiver)
    )
    order_id = await submit(traced_api)

    async def second_step_running() -> bool:
        try:
            order = await broker.store.get(order_id)
        except OrderNotFound:
            return False
        return order.steps[1].status == "running"

    await wait_for(second_step_running, within=15)

    async def first_step_exported() -> bool:
        return any(
            s.name == "step Scheduling" and s.attributes["orderflow.order_id"] == order_id
            for s in receiver.snapshot()
        )

    await wait_for(first_step_exported, within=5)
    crashing.signal(signal.SIGKILL)  # its open spans die with it; the message comes back
    node_processes.start("rescuing-node", **exporter_env(receiver))

    async def rescued() -> OrderTrace | None:
        """The trace once the rescuer's completed delivery is in: its consumer span ends (and
        is exported) after the last step's, maybe in a later batch."""
        trace = await wait_trace(receiver, order_id, f"step {STEP_NAMES[-1]}", within=30)
        done = any(
            s.name == "orders.work process" and s.attributes["orderflow.outcome"] == "completed"
            for s in trace.spans
        )
        return trace if done else None

    trace = await wait_for(rescued, within=30, interval=0.1)
    # Every delivery to the rescuer (a first one may be deferred while the dead node's lease
    # runs out) continues the trace from the producer span, as the headers came back with it.
    deliveries = [s for s in trace.spans if s.name == "orders.work process"]
    assert {s.parent_span_id for s in deliveries} == {trace.producer.span_id}
    assert {s.attributes["orderflow.node_id"] for s in deliveries} == {"rescuing-node"}
    rescue = next(s for s in deliveries if s.attributes["orderflow.outcome"] == "completed")
    resumed = [
        (s.name, s.attributes["orderflow.attempt"], s.attributes["orderflow.epoch"])
        for s in trace.children(rescue)
    ]
    assert resumed == [
        ("step Pre-Processing", 2, 2),
        ("step Processing", 1, 2),
        ("step Post-Processing", 1, 2),
    ]
    # The crashed node's finished step is in the same trace.
    first = trace.one(name="step Scheduling")
    assert first.attributes["orderflow.node_id"] == "crashing-node"
