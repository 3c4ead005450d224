"""The api's link to the broker, opened in the background so the api starts without it.

A load balancer should see the process alive (``/healthz``) and not ready (``/readyz`` 503) while
NATS is away, rather than a crash loop; routes that need the broker answer 503 until the link is
up. The link's task owns the connection: it connects, opens the broker handles
(``nodeapp.orders.handles``, which creates the JetStream resources) and the shop's
(``nodeapp.shop.resources``), retrying with backoff, then holds the connection with the catalog
cache that prices every submit watching it, and answers the nodes' token checks
(``nodeapp.security.remote``: a node may not read the ``tokens`` bucket), until the lifespan
cancels it; the cache stops and the connection drains on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

import msgspec
import nats.errors
from litestar import Litestar
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from api.responses import AnyRequest
from nodeapp.broker.connection import connection
from nodeapp.broker.resources import Buckets
from nodeapp.core.errors import BrokerUnavailable, OrderflowError
from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles, open_handles
from nodeapp.orders.intake import Companion, Intake
from nodeapp.orders.model import Order
from nodeapp.orders.store import OrderStore
from nodeapp.security.remote import Judge, answering_token_checks
from nodeapp.shop.cache import CatalogCache
from nodeapp.shop.catalog import Catalog
from nodeapp.shop.notifications import schedule_delayed
from nodeapp.shop.resources import ShopBuckets, ensure_shop_resources
from nodeapp.shop.stock import Stock

log = logging.getLogger("orderflow.api.broker")

STATE_KEY: Final = "broker_link"
CLIENT_NAME: Final = "orderflow-api"
MAX_BACKOFF: Final = 5.0
CANCEL_RETRY: Final = 0.2  # seconds between cancellations of a link task that ignored one


class Linked(msgspec.Struct, frozen=True):
    """What the link holds while connected; valid while the connection is open."""

    handles: Handles
    shop: ShopBuckets
    catalog: Catalog
    prices: CatalogCache
    intake: Intake


class BrokerLink:
    """Routes ask it for the store, intake and catalog; it raises ``BrokerUnavailable`` while
    down."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._linked: Linked | None = None
        self._ready = asyncio.Event()  # set while linked
        self._judge: Judge | None = None

    async def linked(self) -> None:
        """Return once the link is up (at once if it is): for what must wait for the broker
        before it starts, such as the read model."""
        await self._ready.wait()

    def answer_token_checks(self, judge: Judge) -> None:
        """While linked, answer the nodes' token checks with ``judge`` (the token cache)."""
        self._judge = judge

    def _up(self) -> Linked:
        linked = self._linked
        if linked is None:
            raise BrokerUnavailable("not connected to the broker yet")
        if not linked.handles.nc.is_connected:  # reconnecting: fail now, not at a timeout
            raise BrokerUnavailable("connection to the broker lost; reconnecting")
        return linked

    def connection(self) -> NATS:
        return self._up().handles.nc

    def handles(self) -> Handles:
        """The connection and what is built on it (the read model's projector uses both)."""
        return self._up().handles

    def jetstream(self) -> JetStreamContext:
        return self._up().handles.js

    def buckets(self) -> Buckets:
        return self._up().handles.buckets

    def store(self) -> OrderStore:
        return self._up().handles.store

    def intake(self) -> Intake:
        """The api's intake: each order's ``order.delayed`` schedule goes out with it."""
        return self._up().intake

    def shop(self) -> ShopBuckets:
        return self._up().shop

    def catalog(self) -> Catalog:
        return self._up().catalog

    def prices(self) -> CatalogCache:
        """The watched catalog every submit is priced from."""
        return self._up().prices

    async def payments_bucket(self) -> KeyValue:
        """Bucket ``payments`` (a ``BucketSource`` for the callback inbox)."""
        return self._up().shop.payments

    async def gateway_bucket(self) -> KeyValue:
        """Bucket ``gateway`` (a ``BucketSource`` for the simulated gateway the api hosts)."""
        return self._up().shop.gateway

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Litestar) -> AsyncIterator[None]:
        """Run the link for the app's lifetime: start connecting, yield, cancel and drain."""
        task = asyncio.create_task(self._run(), name="orderflow-api-broker-link")
        task.add_done_callback(_report_crash)
        try:
            yield
        finally:
            # wait() rather than ``await task``: a crash was already logged, and our own
            # cancellation (if any) must not be swallowed. nats-py's connect may swallow a
            # cancellation that lands in its retry loop (seen when the broker was never
            # reachable): until the task ends, ask again.
            task.cancel()
            while not task.done():
                await asyncio.wait([task], timeout=CANCEL_RETRY)
                task.cancel()

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
        """Connect (nats-py retries until a server answers), open the handles and the shop's,
        start the catalog cache and the token checks, then wait."""
        async with connection(self.settings, CLIENT_NAME) as nc:
            handles = await open_handles(nc, self.settings)
            shop = await ensure_shop_resources(handles.js, self.settings)
            checks = (
                answering_token_checks(nc, self._judge)
                if self._judge is not None
                else contextlib.nullcontext()
            )
            async with CatalogCache(shop.catalog) as prices, checks:
                self._linked = _linked(handles, shop, prices, self.settings)
                self._ready.set()
                log.info("broker link ready", extra={"event": "api.broker_ready"})
                try:
                    await asyncio.Event().wait()  # hold the connection until cancelled
                finally:
                    self._ready.clear()
                    self._linked = None


def _linked(handles: Handles, shop: ShopBuckets, prices: CatalogCache, s: Settings) -> Linked:
    catalog = Catalog(handles.js, shop, Stock(shop.stock))  # the process's one Stock
    schedule = _delayed_notification(handles.js, s.order_sla)
    intake = Intake(handles.js, handles.store, handles.buckets.idempotency, schedule)
    return Linked(handles, shop, catalog, prices, intake)


def _delayed_notification(js: JetStreamContext, sla: float) -> Companion:
    """Each order's ``order.delayed``, scheduled ``sla`` seconds after its submit."""

    async def schedule(order: Order) -> None:
        await schedule_delayed(js, order.order_id, order.start_time, sla)

    return schedule


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("broker link failed; the api stays unready", exc_info=exc)


def broker_link(request: AnyRequest) -> BrokerLink:
    """The link ``create_app`` put in the app's state."""
    link: BrokerLink = request.app.state[STATE_KEY]
    return link
