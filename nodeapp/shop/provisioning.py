"""Every resource orderflow uses, created in one place: ``orderflow init``, ``orderflow up`` and
``orderflow catalog load`` start here.

The order resources (``nodeapp.orders.handles``) and the shop's (``nodeapp.shop.resources``)
live in two layers; the shop is the lowest one that knows both, so the one ``init`` lives here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Final

from nodeapp.core.settings import Settings
from nodeapp.orders.handles import broker_handles
from nodeapp.shop.catalog import Catalog
from nodeapp.shop.resources import ensure_shop_resources

CONNECT_WITHIN: Final = 10.0  # seconds a command waits for the broker before it gives up


@contextlib.asynccontextmanager
async def provisioned_catalog(
    settings: Settings, name: str, within: float = CONNECT_WITHIN
) -> AsyncIterator[Catalog]:
    """Connect as ``name``, create every stream, consumer and bucket that is missing, and yield
    the catalog on them; the connection drains on exit. ``BrokerUnavailable`` if the broker
    does not answer within ``within`` seconds."""
    async with broker_handles(settings, name, within=within) as handles:
        yield Catalog(handles.js, await ensure_shop_resources(handles.js, settings))


async def init_resources(settings: Settings) -> None:
    """``orderflow init`` (and ``up`` before it starts anything): create every resource once."""
    async with provisioned_catalog(settings, "orderflow-init"):
        pass
