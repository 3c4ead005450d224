"""The catalog's and the stock's KV buckets, created idempotently like the core's resources.

Two buckets so that catalog reads (every submit) never contend with reservations (ADR 0010).
Names are public: ``nats kv get catalog sku-1``, ``nats kv get stock sku-1``.
"""

from __future__ import annotations

from typing import Final

import msgspec
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from nodeapp.broker.connection import broker_errors
from nodeapp.broker.resources import _ensure_bucket
from nodeapp.core.settings import Settings

CATALOG_BUCKET: Final = "catalog"
STOCK_BUCKET: Final = "stock"
CATALOG_HISTORY: Final = 5  # a few past prices, for whoever asks "what did it cost yesterday"
STOCK_HISTORY: Final = 1  # a hot product writes its document per reservation: keep the last


class ShopBuckets(msgspec.Struct, frozen=True):
    catalog: KeyValue
    stock: KeyValue


async def ensure_shop_resources(js: JetStreamContext, settings: Settings) -> ShopBuckets:
    """Create the ``catalog`` and ``stock`` buckets if missing (replicas from ``settings``);
    return handles to them. ``BrokerUnavailable`` while the broker is away."""
    with broker_errors("creating the shop's buckets"):
        catalog = await _ensure_bucket(
            js,
            KeyValueConfig(
                bucket=CATALOG_BUCKET,
                description="orderflow products: {product_id, name, price, active} (JSON)",
                history=CATALOG_HISTORY,
                storage=StorageType.FILE,
                replicas=settings.replicas,
            ),
        )
        stock = await _ensure_bucket(
            js,
            KeyValueConfig(
                bucket=STOCK_BUCKET,
                description="orderflow stock per product: on_hand, reserved, holds (JSON)",
                history=STOCK_HISTORY,
                storage=StorageType.FILE,
                replicas=settings.replicas,
            ),
        )
    return ShopBuckets(catalog=catalog, stock=stock)
