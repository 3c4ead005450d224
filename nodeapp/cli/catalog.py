"""``orderflow catalog load FILE.json`` (straight to the broker, like ``init``) and
``orderflow catalog ls`` (via the api).

A catalog file is a JSON list of products, each ``{product_id, name, price, active?,
on_hand?}``. Every entry is checked before any is written, so a bad file changes nothing; the
error names each bad entry by position and product id.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from nodeapp.cli.apiclient import ApiClient
from nodeapp.cli.render import catalog_text, load_report_text
from nodeapp.core.errors import FieldError, OrderflowError
from nodeapp.core.settings import Settings
from nodeapp.core.shop_errors import InvalidProduct
from nodeapp.orders.model import encode
from nodeapp.shop.catalog import CatalogPage, LoadReport
from nodeapp.shop.products import decode_catalog_file
from nodeapp.shop.provisioning import provisioned_catalog


def load(args: argparse.Namespace, settings: Settings) -> int:
    """Load ``args.file`` into the catalog; print what was created, updated or kept."""
    path: Path = args.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OrderflowError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        items = decode_catalog_file(data)
    except InvalidProduct as exc:
        raise OrderflowError(f"{path}: nothing loaded: {_named(exc.errors, data)}") from None
    report = asyncio.run(_load(settings, items))
    print(encode(report).decode() if args.json else load_report_text(str(path), report))
    return 0


async def _load(settings: Settings, items: list[Any]) -> LoadReport:
    async with provisioned_catalog(settings, "orderflow-catalog-load") as catalog:
        return await catalog.load(items)


def _named(errors: list[FieldError], data: bytes) -> str:
    """``[3].price ...`` as ``entry 3 (sku-9): price ...``, when the file says which product."""
    try:
        entries = json.loads(data)
    except ValueError:
        entries = None
    named = []
    for error in errors:
        field = error.field
        index, _, rest = field.removeprefix("[").partition("].")
        if field.startswith("[") and index.isdigit() and isinstance(entries, list):
            entry = entries[int(index)] if int(index) < len(entries) else None
            pid = entry.get("product_id") if isinstance(entry, dict) else None
            field = f"entry {index}" + (f" ({pid})" if isinstance(pid, str) else "") + f": {rest}"
        named.append(f"{field} {error.message}")
    return "; ".join(named)


def ls(api: ApiClient, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.cursor:
        params["cursor"] = args.cursor
    page = api.decode(api.send("GET", "/products", params=params), CatalogPage)
    print(encode(page).decode() if args.json else catalog_text(page))
    return 0
