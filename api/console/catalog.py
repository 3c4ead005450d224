"""The console's products page: the catalog with each product's stock (any valid token, as
``GET /products`` and ``GET /products/{id}``), a page at a time."""

from __future__ import annotations

import asyncio
from typing import Annotated, Final

from litestar import get
from litestar.params import Parameter
from litestar.response import Template

from api.auth import requires
from api.broker_link import broker_link
from api.console.access import AnyRequest
from api.console.view import render
from api.paths import CONSOLE_PRODUCTS
from nodeapp.shop.catalog import DEFAULT_LIMIT
from nodeapp.shop.products import ProductView

Query = Annotated[str | None, Parameter()]  # a query parameter, as the query string has it


@get(CONSOLE_PRODUCTS, guards=[requires()])  # any valid token
async def products(request: AnyRequest, cursor: Query = None) -> Template:
    """Products by id with ``on_hand``, ``reserved`` and ``available``."""
    catalog = broker_link(request).catalog()
    page = await catalog.list_products(DEFAULT_LIMIT, cursor or None)
    stocks = await asyncio.gather(*(catalog.stock_view(p.product_id) for p in page.products))
    rows = [
        ProductView(p.product_id, p.name, p.price, p.active, stock)
        for p, stock in zip(page.products, stocks, strict=True)
    ]
    more = f"{CONSOLE_PRODUCTS}?cursor={page.next_cursor}" if page.next_cursor else None
    return render(request, "products.html", {"products": rows, "more": more})


CATALOG_PAGES: Final = [products]
