"""The catalog every test starts with: the products the engine tests' orders name, with stock
no test runs out of, so only the shop's own tests meet out-of-stock on purpose."""

from __future__ import annotations

from decimal import Decimal
from typing import Final

from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.shop.catalog import Catalog
from nodeapp.shop.products import CatalogItem
from nodeapp.shop.resources import ensure_shop_resources

PLENTY: Final = 1_000_000
# sku-1 at 6.25: the api tests' body (sku-1 x 2, amount "12.50") stays a correct total.
PRICES: Final = {
    "p": "1.00",
    "p-1": "3.50",
    "sku-1": "6.25",
    "sku-2": "10.00",
    "sku-3": "35.00",
    "a": "2.00",
    "a:1": "2.50",
    "b:1": "4.00",
    "hot": "1.00",
    "old": "5.00",
}
TEST_CATALOG: Final = tuple(
    CatalogItem(product_id=pid, name=f"test product {pid}", price=Decimal(price), on_hand=PLENTY)
    for pid, price in PRICES.items()
)


async def load_test_catalog(broker: Handles, settings: Settings) -> Catalog:
    """Create the shop's resources on the test's broker and load ``TEST_CATALOG``."""
    catalog = Catalog(broker.js, await ensure_shop_resources(broker.js, settings))
    await catalog.load(TEST_CATALOG)
    return catalog
