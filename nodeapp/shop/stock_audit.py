"""Giving back reservations nobody else will: ADR 0010's known gap, closed by repair.

An order's run releases what it reserved, and ``forget`` drops its tombstones once the order is
stored terminal. A stale owner (one that stalled mid-Scheduling past its lease while another
node finished the order) can still reserve after that, finding no tombstone to fence it; its
next write to the order then loses, so nothing else happens, but the hold stays ``reserved``
and that stock is never sold. A per-product fence outliving ``forget`` would grow each product's
document with every order that ever bought it, so the leak is repaired instead: the audit reads
every product's stock and releases each hold still ``reserved`` for an order stored terminal, at
the hold's own epoch. A terminal order never needs stock reserved, so that release is always
right; the compare-and-set keeps it safe beside any other writer, and the tombstone it leaves
fences the stale owner from reserving again. The reconciler's leader runs it every
``interval`` seconds (``ORDERFLOW_RECONCILE_AFTER``): a leak is rare, its cost one read of the
``stock`` bucket plus one order read per reservation held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import msgspec

from nodeapp.broker.kv import latest_values
from nodeapp.core.errors import BrokerUnavailable, OrderNotFound
from nodeapp.orders.store import OrderStore
from nodeapp.shop.products import StockLevel
from nodeapp.shop.stock import Stock

log = logging.getLogger("orderflow.stock")

_level = msgspec.json.Decoder(StockLevel)


async def release_leaked_holds(stock: Stock, orders: OrderStore) -> list[tuple[str, str]]:
    """Release every hold still reserved for a terminal order; the (product, order) pairs."""
    released: list[tuple[str, str]] = []
    levels = await latest_values(stock.kv, _level)
    for level in sorted(levels.values(), key=lambda lv: lv.product_id):
        for order_id, hold in sorted(level.holds.items()):
            if hold.state != "reserved":
                continue
            try:
                order = await orders.get(order_id)
            except OrderNotFound:  # not ours to judge: holds are made after the claim
                continue
            if not order.terminal:
                continue  # its owner still needs it (or will release it)
            await stock.release(level.product_id, order_id, hold.epoch)
            released.append((level.product_id, order_id))
            log.warning(
                f"released {hold.quantity} of {level.product_id} still reserved for "
                f"{order.status} order {order_id} (a stale owner's late reservation)",
                extra={
                    "event": "stock.leak_released",
                    "order_id": order_id,
                    "product_id": level.product_id,
                },
            )
    return released


async def audit_while_leading(
    stock: Stock,
    orders: OrderStore,
    leading: Callable[[], bool],
    stop: asyncio.Event,
    interval: float,
) -> None:
    """Run ``release_leaked_holds`` every ``interval`` seconds while ``leading()``, until
    ``stop``; a broker outage skips a round."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
            return
        if not leading():
            continue
        try:
            await release_leaked_holds(stock, orders)
        except BrokerUnavailable as exc:
            log.warning(f"stock audit skipped: {exc}", extra={"event": "stock.audit_skipped"})
