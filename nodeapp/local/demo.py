"""The catalog ``orderflow up`` starts with, and the order its banner suggests.

An empty catalog gets ``DEMO_CATALOG`` (six products, 100 of each in stock) unless ``--no-demo``
says otherwise; a catalog with products is left as it is. The suggested order names an active
product with stock and says its price as the amount, so it is accepted and completes.
"""

from __future__ import annotations

import json

import msgspec

from nodeapp.core.settings import Settings
from nodeapp.shop.catalog import MAX_LIMIT, Catalog, LoadReport
from nodeapp.shop.products import DEMO_CATALOG, Product
from nodeapp.shop.provisioning import provisioned_catalog


class CatalogState(msgspec.Struct, frozen=True):
    """What the banner says of the catalog: the demo just loaded (or None), how many products
    there are (``more``: at least that many), and a product an order can buy (or None)."""

    demo: LoadReport | None
    products: int
    more: bool
    example: Product | None


async def prepare_catalog(settings: Settings, demo: bool) -> CatalogState:
    """Create every resource, load the demo into an empty catalog if ``demo``, and find a
    product to suggest."""
    async with provisioned_catalog(settings, "orderflow-up") as catalog:
        loaded = await catalog.load(DEMO_CATALOG) if demo and await catalog.is_empty() else None
        page = await catalog.list_products(MAX_LIMIT)
        example = await _buyable(catalog, page.products)
    return CatalogState(loaded, len(page.products), page.next_cursor is not None, example)


async def _buyable(catalog: Catalog, products: list[Product]) -> Product | None:
    for product in products:
        if product.active and (await catalog.stock_view(product.product_id)).available > 0:
            return product
    return None


def catalog_line(state: CatalogState) -> str:
    if state.demo is not None:
        return f"{state.demo.created} demo products loaded into the empty catalog (--no-demo skips)"
    if state.products == 0:
        return "empty: add products with orderflow catalog load FILE.json"
    return f"{state.products}{'+' if state.more else ''} products"


def try_line(api_url: str, state: CatalogState, auth: str = "") -> str:
    """A ``curl`` that submits an order the catalog can fill, or what to do first; ``auth`` is
    the curl arguments that send the token (``-H "Authorization: Bearer ..."``)."""
    product = state.example
    if product is None:
        return "try: load products (orderflow catalog load FILE.json), then POST /orders"
    body = {
        "customer_id": "c-1",
        "items": [{"product_id": product.product_id, "quantity": 1}],
        "amount": str(product.price),
    }
    text = json.dumps(body, separators=(",", ":"))  # ids and prices hold no quote
    auth = f" {auth}" if auth else ""
    return (
        f"try: curl -s -XPOST {api_url}/orders{auth} -H 'content-type: application/json' "
        f"-d '{text}'"
    )
