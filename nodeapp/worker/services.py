"""The shop's services a node process holds for its whole life, opened in one place: the
``orderflow node`` command and the tests' in-process node both enter ``shop_services``.

In order: the shop's resources (once per process), one ``Stock`` (its writes are combined per
product across the process's orders), the payment client, the payment waiter (one consumer on
bucket ``payments``), the notifier (delivers ``NOTIFICATIONS`` to the webhook). Closed in
reverse after the node has drained: the notifier stops fetching and hands back what it holds,
then the waiter's consumer and the client's connections go.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.shop.notifier import Notifier
from nodeapp.shop.payments import PaymentClient
from nodeapp.shop.resources import ensure_shop_resources
from nodeapp.shop.stock import Stock
from nodeapp.shop.verdicts import PaymentWaiter
from nodeapp.worker.charges import Charges
from nodeapp.worker.effects import ShopEffects


@contextlib.asynccontextmanager
async def shop_services(settings: Settings, handles: Handles) -> AsyncIterator[ShopEffects]:
    """``async with shop_services(settings, handles) as effects:`` run the node inside."""
    buckets = await ensure_shop_resources(handles.js, settings)
    replies = handles.store.replies  # cheaper compare-and-sets and publishes (ADR 0020)
    stock = Stock(buckets.stock, replies=replies)
    async with (
        PaymentClient(settings) as client,
        PaymentWaiter(handles.js, buckets.payments, settings) as waiter,
        Notifier(settings, handles.js, handles.store),
    ):
        charges = Charges(client, waiter, settings.payment_timeout)
        yield ShopEffects(handles.js, stock, charges, replies)
