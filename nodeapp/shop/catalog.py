"""The catalog: products in KV bucket ``catalog``, their stock through ``Stock`` (ADR 0010).

What the api's product routes, ``orderflow catalog load`` and ``orderflow up``'s demo catalog
call. Lists are read from the bucket's stream (one request for every key), sorted by product id
and paged with an opaque cursor naming the last id shown, so paging never repeats or skips a
product that exists throughout.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
from collections.abc import Iterable
from typing import Final

import msgspec
import nats.js.errors
from nats.js import JetStreamContext

from nodeapp.broker.connection import broker_errors
from nodeapp.core.errors import FieldError
from nodeapp.core.shop_errors import InvalidProduct, ProductNotFound
from nodeapp.shop.keys import is_product_id, product_id_of, product_key
from nodeapp.shop.products import (
    CatalogItem,
    Product,
    ProductView,
    StockView,
    checked,
    decode_product,
    encode,
)
from nodeapp.shop.resources import CATALOG_BUCKET, ShopBuckets
from nodeapp.shop.stock import Stock

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500


class CatalogPage(msgspec.Struct, frozen=True):
    """``GET /products``: a page of products and the cursor of the next (None after the last)."""

    products: list[Product]
    next_cursor: str | None


class LoadReport(msgspec.Struct, frozen=True):
    """What a ``load`` did: products created, updated, left as they were; stock documents
    created from ``on_hand`` and stock documents kept because they existed already."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    stocked: int = 0
    stock_kept: int = 0


class Catalog:
    """Products and their stock as the api and the command line see them; pass the process's
    ``Stock`` when it has one, so all its stock writes are combined in one place."""

    def __init__(
        self, js: JetStreamContext, buckets: ShopBuckets, stock: Stock | None = None
    ) -> None:
        self.js = js
        self.kv = buckets.catalog
        self.stock = stock or Stock(buckets.stock)

    async def find(self, product_id: str) -> Product | None:
        """The product, or None if there is none (also the lookup ``checkout`` takes)."""
        with broker_errors(f"reading product {product_id}"):
            try:
                entry = await self.kv.get(product_key(product_id))
            except nats.js.errors.KeyNotFoundError:  # never stored, or deleted by hand
                return None
        return decode_product(entry.value) if entry.value else None

    async def get(self, product_id: str) -> Product:
        if (product := await self.find(product_id)) is None:
            raise ProductNotFound(product_id)
        return product

    async def put(self, product: Product) -> bool:
        """Store ``product`` (checked, price written with 2 decimals); True if it is new (the
        api answers 201), False if it replaced one (200). ``InvalidProduct`` for a bad field."""
        product = checked(product)
        key, value = product_key(product.product_id), encode(product)
        with broker_errors(f"writing product {product.product_id}"):
            try:
                await self.kv.create(key, value)
            except nats.js.errors.KeyWrongLastSequenceError:
                await self.kv.put(key, value)
                return False
        return True

    async def view(self, product_id: str) -> ProductView:
        """``GET /products/{id}``: the product with its stock; ``ProductNotFound`` if none."""
        product, stock = await asyncio.gather(self.get(product_id), self.stock.view(product_id))
        return ProductView(
            product.product_id, product.name, product.price, product.active, stock=stock
        )

    async def stock_view(self, product_id: str) -> StockView:
        """``{on_hand, reserved, available}``: zeros for a product never stocked."""
        return await self.stock.view(product_id)

    async def adjust(self, product_id: str, delta: int) -> StockView:
        """``POST /products/{id}/stock``: ``on_hand += delta`` by compare-and-set.
        ``ProductNotFound``; ``StockConflict`` (409) if ``on_hand`` would drop below
        ``reserved`` or below 0."""
        await self.get(product_id)
        return await self.stock.adjust(product_id, delta)

    async def list_products(
        self, limit: int = DEFAULT_LIMIT, cursor: str | None = None
    ) -> CatalogPage:
        """``GET /products?limit=&cursor=``: up to ``limit`` products (1-500) after the cursor,
        by product id. ``InvalidProduct`` naming ``limit`` or ``cursor`` if either is bad."""
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidProduct([FieldError("limit", f"must be 1-{MAX_LIMIT}")])
        ids = await self._product_ids()
        next_index = bisect.bisect_right(ids, _after(cursor)) if cursor is not None else 0
        page: list[Product] = []
        while len(page) < limit and next_index < len(ids):
            batch = ids[next_index : next_index + limit - len(page)]
            next_index += len(batch)
            found = await asyncio.gather(*(self.find(p) for p in batch))
            page += [p for p in found if p is not None]  # deleted by hand meanwhile
        more = bool(page) and next_index < len(ids)
        return CatalogPage(page, _cursor(page[-1].product_id) if more else None)

    async def load(self, items: Iterable[CatalogItem]) -> LoadReport:
        """``orderflow catalog load``: create or update each product; an item with ``on_hand``
        sets the product's stock only if it has no stock document yet.

        A reload of the same file changes nothing: products equal to the stored ones are not
        rewritten, and stock that exists is kept whatever the file says, because it has moved
        with reservations and sales since (``adjust`` changes it). Items are checked first,
        so a bad item writes nothing (``InvalidProduct``)."""
        products = [(checked(item.product()), item.on_hand) for item in items]
        counts = dict.fromkeys(LoadReport.__struct_fields__, 0)
        for product, on_hand in products:
            stored = await self.find(product.product_id)
            if stored == product:
                counts["unchanged"] += 1
            else:
                counts["created" if await self.put(product) else "updated"] += 1
            if on_hand is not None:
                fresh = await self.stock.initialize(product.product_id, on_hand)
                counts["stocked" if fresh else "stock_kept"] += 1
        return LoadReport(**counts)

    async def is_empty(self) -> bool:
        """Whether no product was ever stored (``up`` loads the demo catalog into an empty one)."""
        with broker_errors("reading the catalog's status"):
            status = await self.kv.status()
        return status.values == 0

    async def _product_ids(self) -> list[str]:
        """Every product id with a key in the bucket, sorted; one stream-info request, the
        per-subject counts (a key deleted by hand still has its marker: ``find`` skips it)."""
        prefix = f"$KV.{CATALOG_BUCKET}."  # the KV layout every NATS client shares
        with broker_errors("listing the catalog"):
            info = await self.js.stream_info(f"KV_{CATALOG_BUCKET}", subjects_filter=f"{prefix}>")
        ids = []
        for subject in info.state.subjects or {}:
            try:
                ids.append(product_id_of(subject[len(prefix) :]))
            except ValueError:  # a key written by hand, not by orderflow: not a product
                continue
        return sorted(ids)


def _cursor(product_id: str) -> str:
    return base64.urlsafe_b64encode(product_id.encode()).decode().rstrip("=")


def _after(cursor: str) -> str:
    """The last product id the page before showed; ``InvalidProduct`` naming ``cursor``."""
    try:
        product_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        product_id = ""
    if not is_product_id(product_id):
        raise InvalidProduct([FieldError("cursor", "is not a cursor this api gave out")])
    return product_id
