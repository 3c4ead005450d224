"""A node process without the shop's effects: the engine alone, for ``throughput --engine-only``.

Wired like ``orderflow node`` (``nodeapp.cli.node``: logging and tracing from the settings, the
metrics observer, the ops listener, the micro service, SIGTERM drains) except that every step's
effect, compensation and settlement is nothing: no stock, no payment, no notification. What is
left is what the issue's targets were written for: pulls, the order's reads and
compare-and-set writes, its logs, metrics and spans, the reconciler, the acks.

Run as a script (``python benchmarks/bare_node.py --node-id ID``), with ``PYTHONPATH`` naming
the checkout whose ``nodeapp`` to run: ``throughput --tree DIR`` runs another tree's engine under
the same harness.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

import uvloop
from nats.js import JetStreamContext

import nodeapp.cli.node as wiring
from nodeapp.broker.connection import connection
from nodeapp.core.logs import configure_logging
from nodeapp.core.settings import Settings, load_settings
from nodeapp.core.tracing import configure_tracing, shutdown_tracing
from nodeapp.ops.endpoints import ops_listener
from nodeapp.ops.metrics import NodeMetrics
from nodeapp.ops.service import node_service
from nodeapp.orders.handles import open_handles
from nodeapp.orders.model import Order
from nodeapp.shop.resources import ensure_shop_resources
from nodeapp.shop.stock import Stock
from nodeapp.worker.effects import ShopEffects
from nodeapp.worker.node import Node


class NoEffects(ShopEffects):
    """Every step's effect is nothing, and so are its compensation and the settlement. The
    ``Stock`` is there for a tree whose reconciler leader audits stock holds (none are made)."""

    def __init__(self, js: JetStreamContext, stock: Stock) -> None:
        self.js = js
        self.stock = stock

    def may_wait(self, step: str, order: Order) -> bool:
        return False

    def acts(self, step: str, order: Order) -> bool:
        return False

    async def apply(
        self, step: str, order: Order, epoch: int, interrupt: asyncio.Event | None = None
    ) -> str | None:
        return None

    async def undo(self, step: str, order: Order, epoch: int, *, interrupted: bool = False) -> None:
        return None

    async def settle(self, order: Order) -> None:
        return None


async def serve(settings: Settings, node_id: str) -> None:
    async with connection(settings, f"orderflow-bare-node-{os.getpid()}") as nc:
        handles = await open_handles(nc, settings)
        stock = Stock((await ensure_shop_resources(handles.js, settings)).stock)
        metrics = NodeMetrics()
        node = Node(settings, handles, NoEffects(handles.js, stock), node_id, metrics.observer)
        metrics.attach(node)
        async with ops_listener(settings, node, nc, metrics), node_service(nc, node):
            # As ``orderflow node`` does, in a tree whose wiring has it (ADR 0019).
            settle_heap = getattr(wiring, "settle_heap", None)
            if settle_heap is not None:
                settle_heap()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, node.drain)
            await node.run()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bare_node.py")
    parser.add_argument("--node-id", required=True)
    node_id = parser.parse_args().node_id
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    configure_tracing("orderflow-node")
    try:
        uvloop.run(serve(settings, node_id))
    finally:
        shutdown_tracing()
    return 0


if __name__ == "__main__":
    sys.exit(main())
