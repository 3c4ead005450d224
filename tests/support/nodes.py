"""An in-process node for tests that need no separate process (the broker is still real),
wired as ``orderflow node`` wires one: the shop's services around the node, on a connection
of its own as the broker's ``node`` user."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from nodeapp.core.settings import Settings
from nodeapp.orders.handles import broker_handles
from nodeapp.worker.node import Node
from nodeapp.worker.services import shop_services
from tests.support.broker_users import as_role


@contextlib.asynccontextmanager
async def running_node(settings: Settings, node_id: str = "test-node") -> AsyncIterator[Node]:
    """Run a node for the body of the ``async with``; drain it on the way out."""
    settings = as_role(settings, "node")
    async with (
        broker_handles(settings, node_id) as handles,
        shop_services(settings, handles) as effects,
    ):
        node = Node(settings, handles, effects, node_id)
        task = asyncio.create_task(node.run())
        try:
            yield node
        finally:
            node.drain()
            await task
