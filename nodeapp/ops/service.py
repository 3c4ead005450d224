"""The node as a NATS micro service ``orderflow-node``: found by ``nats micro ls`` without knowing
any address, with ``stats`` and ``drain`` endpoints.

``orderflow.node.stats`` reaches every node (each node is its own queue group), so one request
with several replies lists the cluster; ``orderflow.node.<id>.stats`` and
``orderflow.node.<id>.drain`` reach one node.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, ServiceConfig

from nodeapp import __version__
from nodeapp.cluster.control import CONTROL_PREFIX, DrainReply, drain_subject
from nodeapp.orders.model import encode

if TYPE_CHECKING:
    from nodeapp.worker.node import Node

log = logging.getLogger("orderflow.service")

SERVICE_NAME: Final = "orderflow-node"
STATS_SUBJECT: Final = f"{CONTROL_PREFIX}.stats"


def node_stats_subject(node_id: str) -> str:
    return f"{CONTROL_PREFIX}.{node_id}.stats"


@contextlib.asynccontextmanager
async def node_service(nc: NATS, node: Node) -> AsyncIterator[None]:
    """Register the node's micro service for the body of the ``async with``."""

    async def stats(request: Request) -> None:
        await request.respond(encode(node.heartbeat()))

    async def drain(request: Request) -> None:
        log.info("drain requested over NATS", extra={"event": "node.drain_requested"})
        node.drain()
        await request.respond(encode(DrainReply(node_id=node.node_id, state="draining")))

    service = await add_service(
        nc,
        ServiceConfig(
            name=SERVICE_NAME,
            version=__version__,
            description="orderflow worker node",
            metadata={"node_id": node.node_id, "ops_url": node.ops_url or ""},
            queue_group=node.node_id,
        ),
    )
    try:
        await service.add_endpoint(
            EndpointConfig(name="stats", subject=STATS_SUBJECT, handler=stats)
        )
        await service.add_endpoint(
            EndpointConfig(
                name="node-stats", subject=node_stats_subject(node.node_id), handler=stats
            )
        )
        await service.add_endpoint(
            EndpointConfig(name="drain", subject=drain_subject(node.node_id), handler=drain)
        )
        yield
    finally:
        await service.stop()
