"""The shop around real nodes in tests: a payment desk, stocked products, priced orders, and the
reads the shop's invariants are checked with.

The desk is the payment half of the api, served by uvicorn on a free port in the test's event
loop: the simulated gateway under ``/sim/payments`` and ``POST /payments/callback`` recording
the gateway's signed verdicts into bucket ``payments``, with the api's exception handlers. Nodes
reach it through ``ORDERFLOW_API_URL`` (``desk.settings`` carries it, and a node process started
with those settings inherits it), as they will reach the real api.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterable
from decimal import Decimal
from typing import Any, Final

import msgspec
import nats.js.errors
from litestar import Litestar
from nats.js.kv import KeyValue

from api.problems import EXCEPTION_HANDLERS
from api.routes.payments import inbox_dependency, payment_callback
from nodeapp.core.settings import Settings
from nodeapp.local.natsserver import free_port
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import Order
from nodeapp.orders.requests import ItemRequest, OrderRequest
from nodeapp.shop.callbacks import PaymentInbox
from nodeapp.shop.catalog import Catalog
from nodeapp.shop.checkout import price_items
from nodeapp.shop.gateway import Gateway
from nodeapp.shop.gateway_app import gateway_router
from nodeapp.shop.gateway_ledger import LedgerEntry, decode_entry
from nodeapp.shop.payment_resources import (
    ensure_gateway_bucket,
    ensure_payments_bucket,
    fixed_bucket,
)
from nodeapp.shop.products import CatalogItem, StockLevel
from nodeapp.shop.resources import ensure_shop_resources
from tests.support.serving import serving
from tests.support.waiting import wait_for

PAYMENT_SECRET: Final = "shop-flow-payment-secret"
PRICE: Final = Decimal("2.50")


@dataclasses.dataclass(frozen=True)
class PaymentDesk:
    """The served gateway and callback inbox; ``settings`` point a node at them."""

    url: str
    settings: Settings
    gateway: Gateway
    ledger: KeyValue

    async def entry(self, order_id: str) -> LedgerEntry | None:
        """The gateway's ledger entry of the order's payment, None if it never saw one."""
        try:
            stored = await self.ledger.get(order_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        return decode_entry(stored.value) if stored.value else None


@contextlib.asynccontextmanager
async def payment_desk(
    settings: Settings, broker: Handles, **changes: Any
) -> AsyncIterator[PaymentDesk]:
    """Serve the desk on a free port; ``changes`` adjust the settings (verdicts take 0.05 s
    unless ``payment_delay`` says otherwise)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    desk_settings = msgspec.structs.replace(
        settings,
        **{"payment_delay": 0.05, **changes, "api_url": url, "payment_secret": PAYMENT_SECRET},
    )
    ledger = await ensure_gateway_bucket(broker.js, desk_settings)
    payments = await ensure_payments_bucket(broker.js, desk_settings)
    gateway = Gateway(desk_settings, fixed_bucket(ledger))
    inbox = PaymentInbox(fixed_bucket(payments), PAYMENT_SECRET)
    app = Litestar(
        route_handlers=[gateway_router(gateway), payment_callback],
        dependencies=inbox_dependency(inbox),
        lifespan=[gateway.lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        logging_config=None,
    )
    async with serving(app, port):
        yield PaymentDesk(url, desk_settings, gateway, ledger)


async def stocked(
    broker: Handles, settings: Settings, on_hand: dict[str, int], price: Decimal = PRICE
) -> Catalog:
    """Products ``on_hand`` names, each at ``price`` with that stock, in the test's catalog."""
    catalog = Catalog(broker.js, await ensure_shop_resources(broker.js, settings))
    items = [CatalogItem(p, f"product {p}", price, on_hand=n) for p, n in on_hand.items()]
    report = await catalog.load(items)
    assert report.stocked == len(items), report  # fresh products: the test's counts hold
    return catalog


async def submit_priced(
    broker: Handles,
    catalog: Catalog,
    lines: Iterable[tuple[str, int]],
    token: str = "tok_ok",
    fail_at: str | None = None,
) -> str:
    """Submit an order as the api does: priced at the catalog (each item's ``unit_price``, the
    total as ``amount``), with ``token`` to pay."""
    items = [ItemRequest(product_id, quantity) for product_id, quantity in lines]
    request = OrderRequest(customer_id="c-shop", items=items, payment_token=token, fail_at=fail_at)
    priced = await price_items(request.items, None, catalog.find)
    result = await broker.intake.submit(request, priced=priced)
    return result.order.order_id


def sold(orders: Iterable[Order]) -> dict[str, int]:
    """Quantities per product over the completed orders: what left the shelves."""
    out: dict[str, int] = {}
    for order in orders:
        if order.status == "completed":
            for item in order.items:
                out[item.product_id] = out.get(item.product_id, 0) + item.quantity
    return out


async def settled_stock(
    catalog: Catalog, product_ids: Iterable[str], within: float = 30.0
) -> dict[str, StockLevel]:
    """Each product's stock once no order holds any of it any more: the orders are terminal and
    every hold, sold or given back, has been forgotten (which follows the terminal write)."""
    ids = list(product_ids)
    seen: dict[str, StockLevel] = {}

    async def probe() -> dict[str, StockLevel] | None:
        seen.update({p: await catalog.stock.level(p) for p in ids})
        return dict(seen) if not any(level.holds for level in seen.values()) else None

    try:
        return await wait_for(probe, within, interval=0.1)
    except AssertionError:
        raise AssertionError(f"holds left after {within}s: {seen}") from None
