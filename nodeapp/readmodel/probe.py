"""The read model as Prometheus series, read when Prometheus scrapes (like ``BacklogProbe``).

``refresh`` is awaited by the scrape handler before rendering (collectors are synchronous). The
lag needs the broker: while it is away ``orderflow_readmodel_lag_up`` is 0 and the lag series are
left out rather than reported stale; what the projector knows by itself is always there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from nodeapp.broker.connection import ANY_NATS_ERROR
from nodeapp.core.errors import BrokerUnavailable
from nodeapp.readmodel.projector import Projector
from nodeapp.readmodel.stream import Lag

log = logging.getLogger("orderflow.metrics")

LAG_TIMEOUT: Final = 0.5
SCRAPE_ERRORS: Final[tuple[type[BaseException], ...]] = (BrokerUnavailable, *ANY_NATS_ERROR)


class ReadModelProbe(Collector):
    """``registry.register(ReadModelProbe(lambda: projector_or_none))``, registered before the
    lifespan opens the read model (``None`` until then); ``await probe.refresh()`` before
    ``generate_latest``."""

    def __init__(
        self, projector: Callable[[], Projector | None], timeout: float = LAG_TIMEOUT
    ) -> None:
        self._projector = projector
        self._timeout = timeout
        self._lag: Lag | None = None

    async def refresh(self) -> None:
        self._lag = None
        projector = self._projector()
        if projector is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                self._lag = await projector.lag()
        except SCRAPE_ERRORS as exc:
            log.debug(
                "read model lag not read: %r", exc, extra={"event": "metrics.lag_unavailable"}
            )

    def collect(self) -> Iterable[Metric]:
        projector = self._projector()
        status = None if projector is None else projector.status()
        yield GaugeMetricFamily(
            "orderflow_readmodel_running",
            "1 while the projection task runs",
            status is not None and status.running,
        )
        if status is None:
            return
        yield GaugeMetricFamily(
            "orderflow_readmodel_checkpoint", "Last KV_orders sequence applied", status.checkpoint
        )
        yield CounterMetricFamily(
            "orderflow_readmodel_revisions_applied",
            "KV_orders messages applied since the process started",
            status.applied,
        )
        yield CounterMetricFamily(
            "orderflow_readmodel_bad_revisions",
            "KV_orders messages that were not an order document (skipped)",
            status.bad_revisions,
        )
        lag = self._lag
        yield GaugeMetricFamily(
            "orderflow_readmodel_lag_up", "1 when the last scrape read the lag", lag is not None
        )
        if lag is None:
            return
        yield GaugeMetricFamily(
            "orderflow_readmodel_lag_messages", "KV_orders sequences not applied yet", lag.messages
        )
        yield GaugeMetricFamily(
            "orderflow_readmodel_lag_seconds", "Age of the oldest revision not applied", lag.seconds
        )
