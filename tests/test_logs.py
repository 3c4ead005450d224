"""A node process's JSON log: one line per order transition, each with the order's ids.

The node exports traces (to a local receiver), so each line carries the trace and span ids of
the span it was written in, and the trace id is the one the order's spans were exported with.
In-process: a transition's line is the same whether it is queued directly or as a record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from nodeapp.core.logs import configure_logging, direct_lines, stop_logging
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import STEP_NAMES
from nodeapp.worker.orderlog import log_order
from tests.support.orders import submit, wait_terminal
from tests.support.otlp import (
    OtlpReceiver,
    exporter_env,
)
from tests.support.processes import NodeProcess, NodeProcesses
from tests.support.waiting import wait_for

STARTED_COMPLETED = [(e, s) for s in STEP_NAMES for e in ("step.started", "step.completed")]


def order_lines(node: NodeProcess, order_id: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in node.log_lines() if line.startswith("{")]
    return [line for line in lines if line.get("order_id") == order_id]


async def assert_transitions(
    node: NodeProcess, receiver: OtlpReceiver, order_id: str, expected: list[tuple[str, Any]]
) -> None:
    """The order's lines are exactly ``expected`` (event, step), in order, fully labelled."""

    async def logged() -> list[dict[str, Any]] | None:
        lines = order_lines(node, order_id)
        return lines if len(lines) >= len(expected) else None

    lines = await wait_for(logged, within=15)
    assert [(line["event"], line["step"]) for line in lines] == expected
    consumer = await wait_for(
        lambda: _consumer_span_trace(receiver, order_id), within=15, interval=0.1
    )
    for line in lines:
        assert line["node_id"] == node.node_id
        assert line["level"] == "info"
        assert line["ts"].endswith("Z")
        assert line["trace_id"] == consumer, line
        assert len(line["span_id"]) == 16, line
        assert "attempt" in line
    assert {line["attempt"] for line in lines if line["step"] is not None} == {1}


async def _consumer_span_trace(receiver: OtlpReceiver, order_id: str) -> str | None:
    for span in receiver.snapshot():
        if span.kind == "CONSUMER" and span.attributes.get("orderflow.order_id") == order_id:
            return span.trace_id
    return None


async def test_each_transition_logs_one_line_with_order_and_trace_ids(
    broker: Handles, node_processes: NodeProcesses, receiver: OtlpReceiver
) -> None:
    node = node_processes.start("logging-node", **exporter_env(receiver))
    completed = await submit(broker.intake)
    failed = await submit(broker.intake, fail_at="Processing")
    await wait_terminal(broker.store, completed)
    await wait_terminal(broker.store, failed)

    await assert_transitions(
        node, receiver, completed, [*STARTED_COMPLETED, ("order.completed", None)]
    )
    await assert_transitions(
        node,
        receiver,
        failed,
        [
            *STARTED_COMPLETED[:5],
            ("step.failed", "Processing"),
            ("step.rolled_back", "Processing"),
            ("step.rolled_back", "Pre-Processing"),
            ("step.rolled_back", "Scheduling"),
            ("order.failed", None),
        ],
    )


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The test may ``configure_logging`` as a process does; pytest's logging comes back after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging._srcfile, logging.logThreads)
    try:
        yield
    finally:
        stop_logging()
        root.handlers[:], level, logging._srcfile, logging.logThreads = saved
        root.setLevel(level)
        logging.logProcesses = logging.logMultiprocessing = True


def test_a_transition_line_is_the_same_queued_directly_or_as_a_record(
    restored_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "json")  # here: pytest adds its own handlers before each test
    log = logging.getLogger("orderflow.test-lines")
    assert direct_lines(log) is not None  # nothing else listens: no LogRecord is built
    log_order(log, logging.INFO, "Processing started", "step.started", "o-1", "n-1", attempt=2)
    listener = logging.NullHandler()
    log.addHandler(listener)  # someone else listens too: the line goes as a record
    try:
        assert direct_lines(log) is None
        log_order(log, logging.INFO, "Processing started", "step.started", "o-1", "n-1", attempt=2)
    finally:
        log.removeHandler(listener)
    log_order(log, logging.DEBUG, "not written", "step.debug", "o-1", "n-1")  # below INFO
    for handler in logging.getLogger().handlers:
        handler.flush()  # waits for the writer thread

    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines()]
    assert len(lines) == 2
    for line in lines:
        assert line.pop("ts").endswith("Z")
    assert (
        lines[0]
        == lines[1]
        == {
            "level": "info",
            "logger": "orderflow.test-lines",
            "msg": "Processing started",
            "event": "step.started",
            "order_id": "o-1",
            "node_id": "n-1",
            "step": None,
            "attempt": 2,
        }
    )
