"""The shop's resources, created idempotently like the core's: catalog, stock, payments,
notifications.

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
from nodeapp.broker.resources import ensure_bucket
from nodeapp.core.settings import Settings
from nodeapp.shop.notify_resources import ensure_notifications
from nodeapp.shop.payment_resources import gateway_bucket_config, payments_bucket_config

CATALOG_BUCKET: Final = "catalog"
STOCK_BUCKET: Final = "stock"
CATALOG_HISTORY: Final = 5  # a few past prices, for whoever asks "what did it cost yesterday"
STOCK_HISTORY: Final = 1  # a hot product writes its document per reservation: keep the last


class ShopBuckets(msgspec.Struct, frozen=True):
    """Handles to every bucket of the shop; the ``NOTIFICATIONS`` stream exists with them."""

    catalog: KeyValue
    stock: KeyValue
    gateway: KeyValue
    payments: KeyValue
    notifications: KeyValue


async def ensure_shop_resources(js: JetStreamContext, settings: Settings) -> ShopBuckets:
    """Create everything the shop uses if missing (replicas from ``settings``): the ``catalog``,
    ``stock``, ``gateway``, ``payments`` and ``notifications`` buckets and the
    ``NOTIFICATIONS`` stream with its consumer. The api, every node and ``orderflow init`` call
    this once after ``orders.handles.open_handles``. ``BrokerUnavailable`` while the broker is
    away."""
    with broker_errors("creating the shop's buckets"):
        catalog = await ensure_bucket(
            js,
            KeyValueConfig(
                bucket=CATALOG_BUCKET,
                description="orderflow products: {product_id, name, price, active} (JSON)",
                history=CATALOG_HISTORY,
                storage=StorageType.FILE,
                replicas=settings.replicas,
            ),
        )
        stock = await ensure_bucket(
            js,
            KeyValueConfig(
                bucket=STOCK_BUCKET,
                description="orderflow stock per product: on_hand, reserved, holds (JSON)",
                history=STOCK_HISTORY,
                storage=StorageType.FILE,
                replicas=settings.replicas,
            ),
        )
        gateway = await ensure_bucket(js, gateway_bucket_config(settings))
        payments = await ensure_bucket(js, payments_bucket_config(settings))
    notifications = await ensure_notifications(js, settings)
    return ShopBuckets(catalog, stock, gateway, payments, notifications)
