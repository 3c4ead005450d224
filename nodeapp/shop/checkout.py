"""Pricing an order request against the catalog (DESIGN "Submit validation").

Every item must name an active product; the order keeps each item's ``unit_price`` and its
``amount`` is the catalog's total, so a client that submits an amount must agree with it. Pure
over a ``lookup`` callable: the api passes its ``CatalogCache.find``, a tool ``Catalog.find``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal

import msgspec

from nodeapp.core.errors import FieldError, InvalidOrder
from nodeapp.orders.model import Item
from nodeapp.shop.products import CENT, Line, Product

Lookup = Callable[[str], Awaitable[Product | None]]


class Priced(msgspec.Struct, frozen=True):
    """The items as the order stores them (with ``unit_price``) and their total."""

    items: list[Item]
    amount: Decimal


async def price_items(items: Sequence[Line], amount: Decimal | None, lookup: Lookup) -> Priced:
    """Price ``items`` at the catalog's prices, or ``InvalidOrder`` (422) naming
    ``items[i].product_id`` for each unknown or inactive product, else ``amount`` (saying the
    expected total) when a submitted amount differs from it."""
    ids = list(dict.fromkeys(item.product_id for item in items))
    found = dict(zip(ids, await asyncio.gather(*(lookup(i) for i in ids)), strict=True))
    errors = []
    for i, item in enumerate(items):
        product = found[item.product_id]
        if product is None or not product.active:
            why = "is not a product" if product is None else "is not for sale (inactive)"
            errors.append(FieldError(f"items[{i}].product_id", f"{item.product_id} {why}"))
    if errors:
        raise InvalidOrder(errors)
    price = {pid: product.price for pid, product in found.items() if product is not None}
    priced = [Item(i.product_id, i.quantity, unit_price=price[i.product_id]) for i in items]
    total = sum((i.quantity * price[i.product_id] for i in items), Decimal(0)).quantize(CENT)
    if amount is not None and amount != total:
        raise InvalidOrder([FieldError("amount", f"expected {total}")])
    return Priced(priced, total)
