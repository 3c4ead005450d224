"""The api's link to the broker, opened in the background so the api starts without it.

A load balancer should see the process alive (``/healthz``) and not ready (``/readyz`` 503) while
NATS is away, rather than a crash loop; routes that need the broker answer 503 until the link is
up. The link's task owns the connection: it connects, opens the broker handles
(``nodeapp.orders.handles``, which creates the JetStream resources), retrying with backoff, then
holds the connection until the lifespan cancels it, and drains it on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

import nats.errors
from litestar import Litestar
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from api.responses import AnyRequest
from nodeapp.broker.connection import connection
from nodeapp.broker.resources import Buckets
from nodeapp.core.errors import BrokerUnavailable, OrderflowError
from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles, open_handles
from nodeapp.orders.intake import Intake
from nodeapp.orders.store import OrderStore

log = logging.getLogger("orderflow.api.broker")

STATE_KEY: Final = "broker_link"
CLIENT_NAME: Final = "orderflow-api"
MAX_BACKOFF: Final = 5.0


class BrokerLink:
    """Routes ask it for the store and intake; it raises ``BrokerUnavailable`` while down."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._handles: Handles | None = None

    def _up(self) -> Handles:
        handles = self._handles
        if handles is None:
            raise BrokerUnavailable("not connected to the broker yet")
        if not handles.nc.is_connected:  # nats-py is reconnecting: fail now, not at a timeout
            raise BrokerUnavailable("connection to the broker lost; reconnecting")
        return handles

    def connection(self) -> NATS:
        return self._up().nc

    def jetstream(self) -> JetStreamContext:
        return self._up().js

    def buckets(self) -> Buckets:
        return self._up().buckets

    def store(self) -> OrderStore:
        return self._up().store

    def intake(self) -> Intake:
        return self._up().intake

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Litestar) -> AsyncIterator[None]:
        """Run the link for the app's lifetime: start connecting, yield, cancel and drain."""
        task = asyncio.create_task(self._run(), name="orderflow-api-broker-link")
        task.add_done_callback(_report_crash)
        try:
            yield
        finally:
            task.cancel()
            # wait() rather than ``await task``: a crash was already logged, and our own
            # cancellation (if any) must not be swallowed.
            await asyncio.wait([task])

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._hold_connection()
            except (OrderflowError, nats.errors.Error) as exc:
                # Besides the broker being away, JetStream may refuse a resource (limits,
                # config); an operator can fix that while we answer 503, so retry, not give up.
                log.warning("broker link not ready, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)

    async def _hold_connection(self) -> None:
        """Connect (nats-py retries until a server answers), open the handles, then wait."""
        async with connection(self.settings, CLIENT_NAME) as nc:
            self._handles = await open_handles(nc, self.settings)
            log.info("broker link ready", extra={"event": "api.broker_ready"})
            try:
                await asyncio.Event().wait()  # hold the connection until cancelled
            finally:
                self._handles = None


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("broker link failed; the api stays unready", exc_info=exc)


def broker_link(request: AnyRequest) -> BrokerLink:
    """The link ``create_app`` put in the app's state."""
    link: BrokerLink = request.app.state[STATE_KEY]
    return link
