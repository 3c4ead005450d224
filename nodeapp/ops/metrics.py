"""A node's Prometheus metrics (the backlog probe it shares with the api is ``cluster.backlog``).

Every process object owns its own ``CollectorRegistry`` (never the global default), so a test can
build several apps or nodes in one interpreter. The hot path does one pre-resolved ``observe`` or
``inc`` per step and per order; what the node already counts (``NodeStats``), its in-flight and
capacity gauges and the consumer backlog are read when Prometheus scrapes, not kept up to date.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from nodeapp import __version__
from nodeapp.cluster.backlog import BacklogProbe
from nodeapp.orders.model import STEP_NAMES, utcnow
from nodeapp.worker.observer import Observer

if TYPE_CHECKING:
    from nodeapp.worker.node import Node

log = logging.getLogger("orderflow.metrics")

STEP_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0)
LATENCY_BUCKETS: Final = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
STEP_OUTCOMES: Final = ("completed", "failed")

# NodeStats field -> (metric name without _total, help); exported at scrape time.
NODE_COUNTERS: Final = {
    "received": ("orderflow_node_messages_received", "Work messages received"),
    "redeliveries": ("orderflow_node_redeliveries", "Work messages received more than once"),
    "takeovers": ("orderflow_node_takeovers", "Orders taken over from another node's lease"),
    "cas_conflicts": ("orderflow_node_cas_conflicts", "Orders lost on a compare-and-set conflict"),
    "dead_lettered": ("orderflow_node_dead_letters", "Work messages moved to ORDERS_DLQ"),
    "deferred": ("orderflow_node_deferred", "Deliveries deferred: another node held the lease"),
    "handed_back": ("orderflow_node_handed_back", "Orders handed back while draining"),
    "abandoned": ("orderflow_node_abandoned", "Orders dropped mid-way (broker away, fenced)"),
    "reconciled": ("orderflow_node_reconciled", "Orders re-driven by the reconciler"),
    "errors": ("orderflow_node_errors", "Order runs that failed unexpectedly"),
}
# Already series of their own, with labels (orderflow_orders_completed/failed/cancelled_total).
NOT_EXPORTED: Final = frozenset({"completed", "failed", "cancelled"})


class PrometheusObserver(Observer):
    """Step and order outcomes as Prometheus series; children resolved once, not per call."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.step_seconds = Histogram(
            "orderflow_step_duration_seconds",
            "Duration of a step's action, by step and outcome",
            ["step", "outcome"],
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "orderflow_order_latency_seconds",
            "Submit to terminal state, by final status",
            ["status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.completed = Counter(
            "orderflow_orders_completed", "Orders that reached Completed", registry=registry
        )
        self.failed = Counter(
            "orderflow_orders_failed",
            "Orders that reached Failed, by failing step",
            ["step"],
            registry=registry,
        )
        self.cancelled = Counter(
            "orderflow_orders_cancelled", "Orders that reached Cancelled", registry=registry
        )
        # Series exist (at 0) from the start, so rate() and alerts see them before the first event.
        self._steps = {
            (s, o): self.step_seconds.labels(s, o) for s in STEP_NAMES for o in STEP_OUTCOMES
        }
        self._latency = {s: self.latency.labels(s) for s in ("completed", "failed", "cancelled")}
        self._failed = {s: self.failed.labels(s) for s in STEP_NAMES}

    def step_finished(self, step: str, seconds: float, outcome: str) -> None:
        child = self._steps.get((step, outcome)) or self.step_seconds.labels(step, outcome)
        child.observe(seconds)

    def order_finished(self, status: str, failed_step: str | None, latency: float) -> None:
        (self._latency.get(status) or self.latency.labels(status)).observe(latency)
        if status == "completed":
            self.completed.inc()
        elif status == "cancelled":
            self.cancelled.inc()
        elif failed_step is not None:
            (self._failed.get(failed_step) or self.failed.labels(failed_step)).inc()


class NodeStateCollector(Collector):
    """In-flight, capacity, fencing and the ``NodeStats`` counters, read from the node."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterable[Metric]:
        node = self._node
        info = GaugeMetricFamily("orderflow_node_info", "This node", labels=["node_id", "version"])
        info.add_metric([node.node_id, __version__], 1)
        yield info
        yield GaugeMetricFamily("orderflow_node_in_flight", "Orders held now", node.in_flight)
        yield GaugeMetricFamily(
            "orderflow_node_capacity", "Orders the node holds at most", node.settings.concurrency
        )
        yield GaugeMetricFamily(
            "orderflow_node_draining", "1 while draining", node.draining.is_set()
        )
        yield GaugeMetricFamily("orderflow_node_fenced", "1 while fenced", node.fenced())
        yield GaugeMetricFamily(
            "orderflow_node_uptime_seconds",
            "Seconds since the node started",
            (utcnow() - node.started_at).total_seconds(),
        )
        stats = node.stats
        for field in stats.__struct_fields__:
            if field not in NOT_EXPORTED:
                # A counter added to NodeStats later is exported too, under a generic help text.
                name, help_text = NODE_COUNTERS.get(
                    field, (f"orderflow_node_{field}", f"NodeStats.{field}")
                )
                yield CounterMetricFamily(name, help_text, getattr(stats, field))


class NodeMetrics:
    """A node's registry: the observer is built first (the node takes it at construction), the
    node's own state is attached once the node exists."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.observer = PrometheusObserver(self.registry)
        self.backlog: BacklogProbe | None = None

    def attach(self, node: Node) -> None:
        self.registry.register(NodeStateCollector(node))
        self.backlog = BacklogProbe(lambda: node.js)
        self.registry.register(self.backlog)

    async def render(self) -> bytes:
        """The Prometheus text exposition, backlog read fresh (bounded by its timeout)."""
        if self.backlog is not None:
            await self.backlog.refresh()
        return generate_latest(self.registry)
