"""The console's operations pages (scope ``ops``): the cluster with a Drain button per node,
and the dead letters with a Replay button each.

The buttons do what ``POST /cluster/nodes/{id}/drain`` and ``POST /dlq/{id}/replay`` do,
through the same functions (``api.routes.cluster.drain``, ``nodeapp.cluster.dead_letter_admin``);
their refusals (no such node, nothing to replay) are pages with the API's status and words.
"""

from __future__ import annotations

from typing import Annotated, Final

from litestar import get, post
from litestar.params import Parameter
from litestar.response import Redirect, Template

from api.auth import requires
from api.broker_link import broker_link
from api.console.access import AnyRequest
from api.console.view import flash, render
from api.paths import CONSOLE_CLUSTER, CONSOLE_DEAD_LETTERS, CONSOLE_NODE_DRAIN, CONSOLE_REPLAY
from api.routes.cluster import drain
from api.routes.openapi import NodeId, OrderId
from nodeapp.cluster.dead_letter_admin import list_dead_letters, replay
from nodeapp.cluster.view import cluster_view
from nodeapp.security.scopes import OPS

DEAD_LETTERS_PER_PAGE: Final = 50


@get(CONSOLE_CLUSTER, guards=[requires(OPS)])
async def cluster(request: AnyRequest) -> Template:
    """The live nodes, the backlog and what is in flight (``GET /cluster``)."""
    link = broker_link(request)
    view = await cluster_view(link.jetstream(), link.buckets(), link.settings.request_timeout)
    nodes = sorted(view.nodes, key=lambda node: node.node_id)
    return render(request, "cluster.html", {"view": view, "nodes": nodes})


@post(CONSOLE_NODE_DRAIN, guards=[requires(OPS)], status_code=303)
async def drain_node(request: AnyRequest, node_id: NodeId) -> Redirect:
    """The Drain button: the node finishes its current steps, hands the rest back, exits."""
    reply = await drain(request, node_id)
    flash(request, f"Node {reply.node_id} is {reply.state}: it leaves the list when done.")
    return Redirect(CONSOLE_CLUSTER, status_code=303)


@get(CONSOLE_DEAD_LETTERS, guards=[requires(OPS)])
async def dead_letters(
    request: AnyRequest,
    before: Annotated[
        int | None, Parameter(ge=1, description="only entries with a lower sequence")
    ] = None,
) -> Template:
    """``ORDERS_DLQ``, newest first, a page at a time (``GET /dlq``)."""
    js = broker_link(request).jetstream()
    page = await list_dead_letters(js, DEAD_LETTERS_PER_PAGE, before)
    older = f"{CONSOLE_DEAD_LETTERS}?before={page.next_before}" if page.next_before else None
    return render(request, "dead_letters.html", {"page": page, "older": older})


@post(CONSOLE_REPLAY, guards=[requires(OPS)], status_code=303)
async def replay_dead_letter(request: AnyRequest, order_id: OrderId) -> Redirect:
    """The Replay button: the order resumes from where it stood (``POST /dlq/{id}/replay``)."""
    link = broker_link(request)
    replayed = await replay(link.jetstream(), link.store(), order_id)
    flash(
        request,
        f"Order {replayed.order_id} replayed: queued again at {replayed.current_step} "
        f"(dead letter {replayed.dead_letter_seq} removed).",
    )
    return Redirect(CONSOLE_DEAD_LETTERS, status_code=303)


OPERATIONS_PAGES: Final = [cluster, drain_node, dead_letters, replay_dead_letter]
