"""The api's open Server-Sent Events streams: how many, their keep-alive, and ending them all.

Each stream (``api.routes.events``) owns a ``KeyFollower`` from the request until its generator
ends: after the terminal revision, when the client goes away (Litestar cancels the generator,
or closes it after the response) or when the api shuts down. The follower's unsubscribe is
handed to a task kept here, because an await in a generator's ``finally`` can be cancelled
again by the cancel scope that is closing it (anyio cancels until the scope exits), and a
half-done unsubscribe would leave the watch behind.

uvicorn waits for open responses before it runs the lifespan shutdown, so the lifespan is too
late to end a stream that would never end by itself: ``close_streams(app)`` is called by
``api.server`` as soon as a stop is asked for. Clients reconnect with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Final

from litestar import Litestar
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from api.responses import AnyRequest
from nodeapp.broker.kv import FOLLOW_CLEANUP, KeyFollower

log = logging.getLogger("orderflow.api.streams")

STREAMS_KEY: Final = "event_streams"
KEEPALIVE_SECONDS: Final = 15.0  # a comment after this long without an event: proxies cut idle
STOP_GRACE: Final = 5.0  # seconds the lifespan waits for unsubscribes still under way


class LiveStreams(Collector):
    """Every open stream's follower, and the stops under way; a Prometheus collector of
    ``orderflow_api_event_streams`` (streams open now)."""

    def __init__(self, keepalive: float = KEEPALIVE_SECONDS, cleanup: float = FOLLOW_CLEANUP):
        self.keepalive = keepalive
        self.cleanup = cleanup  # seconds the broker keeps a left stream's consumer
        self._open: set[KeyFollower] = set()
        self._stopping: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def closing(self) -> bool:
        """True once the api is shutting down: a new stream is refused (503)."""
        return self._closing

    @property
    def open_count(self) -> int:
        return len(self._open)

    def opened(self, follower: KeyFollower) -> None:
        """A stream starts following; ``release`` is due when it ends, however it ends."""
        self._open.add(follower)
        if self._closing:  # raced with close(): end it as close() would have
            self._stop(follower)

    def release(self, follower: KeyFollower) -> None:
        """A stream ended: unsubscribe its follower (in a task of ours; see the module doc)."""
        self._open.discard(follower)
        self._stop(follower)

    def close(self) -> None:
        """End every open stream now (each ends cleanly, without a further event)."""
        self._closing = True
        for follower in list(self._open):
            self._stop(follower)

    def _stop(self, follower: KeyFollower) -> None:
        if follower.stopped:
            return
        task = asyncio.create_task(follower.stop(), name="orderflow-api-stream-stop")
        self._stopping.add(task)
        task.add_done_callback(self._stopped)

    def _stopped(self, task: asyncio.Task[None]) -> None:
        self._stopping.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # The broker is away: its consumer goes by itself after FOLLOW_CLEANUP seconds.
            log.warning(
                "could not unsubscribe an event stream's watch: %s", exc,
                extra={"event": "api.stream_stop_failed"},
            )  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Litestar) -> AsyncIterator[None]:
        """Enter after the broker link's, so the unsubscribes finish before it drains."""
        try:
            yield
        finally:
            self.close()
            if self._stopping:
                await asyncio.wait(set(self._stopping), timeout=STOP_GRACE)

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "orderflow_api_event_streams",
            "Server-Sent Events streams open now (GET /orders/{id}/events)",
            len(self._open),
        )


def live_streams(request: AnyRequest) -> LiveStreams:
    """The streams ``create_app`` put in the app's state."""
    streams: LiveStreams = request.app.state[STREAMS_KEY]
    return streams


def close_streams(app: Litestar) -> None:
    """End the app's open streams: called when the server is asked to stop."""
    streams: LiveStreams = app.state[STREAMS_KEY]
    streams.close()
