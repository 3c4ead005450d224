"""The work backlog as Prometheus series: consumer ``workers``'s pending and ack-pending counts,
read from consumer info when Prometheus scrapes. The api and every node export it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, Final

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from nodeapp.broker.connection import ANY_NATS_ERROR
from nodeapp.broker.resources import ORDERS_STREAM, WORKERS_CONSUMER
from nodeapp.core.errors import BrokerUnavailable

log = logging.getLogger("orderflow.metrics")

CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4
BACKLOG_TIMEOUT: Final = 0.5
# A scrape answers without the backlog rather than fail when the broker is away.
SCRAPE_ERRORS: Final[tuple[type[BaseException], ...]] = (BrokerUnavailable, *ANY_NATS_ERROR)


class BacklogProbe(Collector):
    """Consumer ``workers``'s pending and ack-pending counts, read once per scrape.

    ``refresh`` is awaited by the scrape handler before rendering (collectors are synchronous);
    while the broker is away ``orderflow_backlog_up`` is 0 and the backlog series are left out
    rather than reported as a stale number.
    """

    def __init__(self, jetstream: Callable[[], Any], timeout: float = BACKLOG_TIMEOUT) -> None:
        self._jetstream = jetstream
        self._timeout = timeout
        self._info: Any = None

    async def refresh(self) -> None:
        self._info = None
        try:
            async with asyncio.timeout(self._timeout):
                self._info = await self._jetstream().consumer_info(ORDERS_STREAM, WORKERS_CONSUMER)
        except SCRAPE_ERRORS as exc:
            log.debug("backlog not read: %r", exc, extra={"event": "metrics.backlog_unavailable"})

    def collect(self) -> Iterable[Metric]:
        info = self._info
        yield GaugeMetricFamily(
            "orderflow_backlog_up", "1 when the last scrape read consumer info", info is not None
        )
        if info is None:
            return
        for name, help_text, value in (
            ("orderflow_backlog_pending", "Work messages not yet delivered", info.num_pending),
            ("orderflow_backlog_ack_pending", "Delivered, not yet acked", info.num_ack_pending),
            ("orderflow_backlog_redelivered", "Delivered more than once", info.num_redelivered),
            ("orderflow_backlog_waiting", "Open pull requests", info.num_waiting),
        ):
            yield GaugeMetricFamily(name, help_text, value or 0)
