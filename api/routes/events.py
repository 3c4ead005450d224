"""``GET /orders/{order_id}/events``: an order's revisions as Server-Sent Events, live.

First the current document (``event: order``, ``id: <revision>``, ``data:`` the JSON that
``GET /orders/{id}`` answers), then one event for every revision stored after it, none skipped,
and the stream ends after the terminal one. ``Last-Event-ID: <revision>`` resumes: every kept
revision newer than it comes first (the bucket keeps an order's whole life), and when the order
ended at or before it the answer is 204 (an EventSource stops reconnecting on 204). A comment
goes out after ``KEEPALIVE_SECONDS`` without an event, so proxies keep the connection.

The order is looked up before the stream starts: an unknown id, or another customer's order,
is a 404 problem, and a broker that is away is a 503, never a broken stream. The watch is a
``KeyFollower`` (an ordered push consumer, no polling) owned by the response's generator and
unsubscribed when it ends, however it ends (``api.streams``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from typing import Annotated, Any, Final

from litestar import Response, get
from litestar.background_tasks import BackgroundTask
from litestar.exceptions import ServiceUnavailableException
from litestar.openapi import ResponseSpec
from litestar.params import HeaderParameter
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage

from api.auth import requires
from api.broker_link import broker_link
from api.paths import ORDER_EVENTS
from api.responses import AnyRequest
from api.routes.openapi import BEARER, BROKER_DOWN, OPTIONAL_STRING, OrderId, guarded, problem_spec
from api.routes.orders import readable_order
from api.streams import LiveStreams, live_streams
from nodeapp.broker.kv import KeyFollower
from nodeapp.core.errors import FieldError, InvalidOrder, OrderNotFound
from nodeapp.orders.model import encode, is_order_id
from nodeapp.orders.store import order_at
from nodeapp.security.scopes import ORDERS_READ

LAST_EVENT_ID: Final = "Last-Event-ID"
EVENT: Final = "order"
EVENT_STREAM: Final = "text/event-stream"
KEEPALIVE: Final = ServerSentEventMessage(data=None, comment="keep-alive")
_REVISION: Final = re.compile(r"[0-9]{1,19}")


def last_event_id(value: str | None) -> int | None:
    """The revision a reconnecting client has (``Last-Event-ID``), or None for a new stream;
    ``InvalidOrder`` (400) for anything but a revision number."""
    if value is None or value == "":  # EventSource sends an empty one before any event
        return None
    if not _REVISION.fullmatch(value.strip()):
        raise InvalidOrder(
            [FieldError(LAST_EVENT_ID, "must be an event id this stream sent (a revision)")],
            status=400,
        )
    return int(value)


@get(
    ORDER_EVENTS,
    guards=[requires(ORDERS_READ)],
    security=BEARER,
    summary="Follow an order live (Server-Sent Events)",
    description=(
        "A `text/event-stream`: first the current document (`event: order`, `id: <revision>`, "
        "`data:` the order as `GET /orders/{order_id}` answers it), then one event per new "
        "revision, every one in order; the stream ends after the terminal revision. A comment "
        "line keeps an idle stream open every 15 s. Send `Last-Event-ID` to resume: the kept "
        "revisions newer than it come first; 204 when the order had already ended by then. "
        "Needs scope `orders:read`; a customer token sees only its customer's orders."
    ),
    responses=guarded(
        {
            200: ResponseSpec(
                data_container=str,
                description="The event stream (each event's data is the order document's JSON)",
                media_type=EVENT_STREAM,
                generate_examples=False,
            ),
            204: ResponseSpec(
                data_container=None,
                description="Last-Event-ID is the terminal revision or later: nothing more to send",
            ),
            400: problem_spec("Last-Event-ID is not a revision"),
            404: problem_spec("No such order"),
            503: BROKER_DOWN,
        },
        ORDERS_READ,
    ),
)
async def order_events(
    request: AnyRequest,
    order_id: OrderId,
    last_event: Annotated[
        str | None,
        HeaderParameter(
            name=LAST_EVENT_ID,
            required=False,
            description="The last event id received (a revision): resume after it; empty is "
            "the same as absent",
            schema_extra={**OPTIONAL_STRING, "pattern": r"^[0-9]{0,19}$"},
        ),
    ] = None,
) -> Response[Any]:
    return await order_event_stream(request, order_id, last_event)


async def order_event_stream(
    request: AnyRequest, order_id: str, last_event: str | None
) -> Response[Any]:
    """The order's event stream as the request's token may see it (this route, and the
    console's, which goes by a session: an EventSource cannot send a bearer header)."""
    if not is_order_id(order_id):
        raise OrderNotFound(order_id)
    after = last_event_id(last_event)
    streams = live_streams(request)
    if streams.closing:
        raise ServiceUnavailableException(
            "the api is shutting down; reconnect", headers={"Retry-After": "1"}
        )
    order = await readable_order(request, order_id)
    link = broker_link(request)
    current = order.revision or 0
    if after is not None and after > current:
        after = None  # not an id of this order's stream: start again from the current one
    if after is not None and after >= current and order.terminal:
        return Response(b"", status_code=204)
    follower = await KeyFollower.start(
        link.buckets().orders, order_id, after=after, cleanup=streams.cleanup
    )
    streams.opened(follower)
    events = _events(follower, streams)
    return ServerSentEvent(events, background=BackgroundTask(_finish, events, follower, streams))


async def _events(
    follower: KeyFollower, streams: LiveStreams
) -> AsyncGenerator[ServerSentEventMessage, None]:
    """Each revision as an event until the terminal one; a keep-alive comment while idle. Ends
    early, without a further event, on a delete marker or when the api shuts down."""
    try:
        while True:
            try:
                async with asyncio.timeout(streams.keepalive):
                    entry = await follower.next()
            except TimeoutError:
                if follower.stopped:  # stopped, but no wake-up reached next(): end anyway
                    return
                yield KEEPALIVE
                continue
            order = order_at(entry) if entry is not None else None
            if order is None:  # stopped (shutdown), or the document was deleted
                return
            yield ServerSentEventMessage(
                data=encode(order).decode(), event=EVENT, id=order.revision
            )
            if order.terminal:
                return
    finally:
        streams.release(follower)


async def _finish(
    events: AsyncGenerator[ServerSentEventMessage, None],
    follower: KeyFollower,
    streams: LiveStreams,
) -> None:
    """After the response, however it went: Litestar cancels the generator when the client
    leaves, and if that lands while the generator waits at a ``yield`` (or before it ever
    ran) its ``finally`` has not run; close it, and release the follower in any case."""
    await events.aclose()
    streams.release(follower)
