"""``orderflow node``: one worker process, wired from the engine and its operations surfaces.

The engine (``worker.node.Node``) knows nothing of HTTP, Prometheus or the micro service; this
module assembles them around it for the life of the process and turns SIGTERM into a drain.
"""

from __future__ import annotations

import asyncio
import os
import signal

from nodeapp.broker.connection import connection
from nodeapp.core.settings import Settings
from nodeapp.ops.endpoints import ops_listener
from nodeapp.ops.metrics import NodeMetrics
from nodeapp.ops.service import node_service
from nodeapp.worker.node import Node, start_node


async def serve_node(settings: Settings, node_id: str | None = None) -> None:
    """Run one node until SIGTERM/SIGINT (or a drain request), then drain and exit."""
    async with connection(settings, f"orderflow-node-{os.getpid()}") as nc:
        metrics = NodeMetrics()
        node = await start_node(settings, nc, node_id, observer=metrics.observer)
        metrics.attach(node)
        # The ops listener first: it sets node.ops_url, which the micro service advertises.
        async with ops_listener(settings, node, nc, metrics), node_service(nc, node):
            await _run_until_signalled(node)


async def _run_until_signalled(node: Node) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.drain)
    try:
        await node.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
