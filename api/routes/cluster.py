"""``/cluster``: the live nodes and the backlog, one node, and draining a node remotely.

Nodes are found in the ``nodes`` registry, never by address; a drain travels to the node over
NATS request/reply (``nodeapp.cluster.control``), so the api needs no route to the node's host.
"""

from __future__ import annotations

import asyncio
from typing import Final

from litestar import Response, get, post

from api.auth import requires
from api.broker_link import broker_link
from api.paths import CLUSTER, NODE, NODE_DRAIN
from api.responses import AnyRequest, json_response
from api.routes.openapi import (
    BEARER,
    BROKER_DOWN,
    MALFORMED,
    NodeId,
    guarded,
    json_spec,
    lookup_responses,
    problem_spec,
)
from nodeapp.broker.connection import broker_errors
from nodeapp.cluster.control import DrainReply, is_node_id, request_drain
from nodeapp.cluster.membership import Heartbeat
from nodeapp.cluster.view import ClusterView, cluster_view, heartbeat
from nodeapp.core.errors import NodeNotFound, NodeUnresponsive
from nodeapp.security.scopes import OPS

NO_NODE: Final = "No live node with that id"


@get(
    CLUSTER,
    guards=[requires(OPS)],
    security=BEARER,
    summary="Cluster state",
    description=(
        "Live nodes (their heartbeats from the KV bucket `nodes`), the work stream `ORDERS`, its "
        "consumer `workers` (pending = backlog, ack pending = orders in flight), dead letters "
        "and buckets; capacity and in_flight sum the listed nodes."
    ),
    responses=guarded({200: json_spec(ClusterView, "The cluster"), 503: BROKER_DOWN}, OPS),
)
async def get_cluster(request: AnyRequest) -> Response[bytes]:
    link = broker_link(request)
    view = await cluster_view(link.jetstream(), link.buckets(), link.settings.request_timeout)
    return json_response(view)


async def _registered(request: AnyRequest, node_id: str) -> Heartbeat:
    """The node's heartbeat, or ``NodeNotFound`` (also for ids no node could have)."""
    if not is_node_id(node_id):
        raise NodeNotFound(node_id)
    link = broker_link(request)
    with broker_errors(f"reading node {node_id}"):
        async with asyncio.timeout(link.settings.request_timeout):
            beat = await heartbeat(link.buckets().nodes, node_id)
    if beat is None:
        raise NodeNotFound(node_id)
    return beat


@get(
    NODE,
    guards=[requires(OPS)],
    security=BEARER,
    summary="One node",
    description="The node's latest heartbeat: state, concurrency, in-flight orders, counters.",
    responses=guarded(lookup_responses(Heartbeat, "The node's heartbeat", NO_NODE), OPS),
)
async def get_node(request: AnyRequest, node_id: NodeId) -> Response[bytes]:
    return json_response(await _registered(request, node_id))


@post(
    NODE_DRAIN,
    guards=[requires(OPS)],
    security=BEARER,
    status_code=202,
    summary="Drain a node",
    description=(
        "Asks the node (over NATS, subject `orderflow.node.<id>.drain`) to stop taking work, "
        "finish each order's current step, hand the rest back and exit. Answers once the node "
        "has accepted; the node leaves `GET /cluster` when it is done."
    ),
    responses=guarded(
        {
            202: json_spec(DrainReply, "The node is draining"),
            400: MALFORMED,
            404: problem_spec(NO_NODE),
            502: problem_spec("The node refused or answered something unreadable"),
            503: problem_spec(
                "The node is registered but nothing answers its drain subject, or the broker "
                "is unavailable"
            ),
            504: problem_spec("The node is registered but did not answer in time"),
        },
        OPS,
    ),
)
async def drain_node(request: AnyRequest, node_id: NodeId) -> Response[bytes]:
    return json_response(await drain(request, node_id), status_code=202)


async def drain(request: AnyRequest, node_id: str) -> DrainReply:
    """Ask the node to drain (this route and the console's Drain button): its reply, or
    ``NodeNotFound`` when no such node is registered, ``NodeUnresponsive`` when it is but does
    not answer."""
    if not is_node_id(node_id):
        raise NodeNotFound(node_id)
    link = broker_link(request)
    try:
        return await request_drain(link.connection(), node_id, link.settings.request_timeout)
    except NodeUnresponsive:
        await _registered(request, node_id)  # NodeNotFound when it is simply not there
        raise
