"""The console's orders: the list with its filters and paging, an order's page with its live
timeline, and its Cancel button.

Each reads through the same functions as the JSON routes (``api.routes.listing.orders_page``,
``readable_order``, ``order_revisions``, ``order_event_stream``, ``cancel``), so a customer's
token sees only its orders here too, and another customer's order is a 404.

The order page's script (``static/console/console.js``) follows the order's event stream here
(``CONSOLE_ORDER_EVENTS``: ``GET /orders/{id}/events``'s stream, authenticated by the session,
since an EventSource cannot send a bearer header) and, at each event, swaps in the timeline
rendered again by the server (``CONSOLE_ORDER_TIMELINE``): one template draws it, on the page
and live.
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any, Final
from urllib.parse import urlencode

from litestar import Response, get, post
from litestar.params import HeaderParameter, Parameter
from litestar.response import Redirect, Template

from api.auth import customer_of, requires
from api.broker_link import broker_link
from api.console.access import AnyRequest
from api.console.view import can, flash, render
from api.paths import (
    CONSOLE_ORDER,
    CONSOLE_ORDER_CANCEL,
    CONSOLE_ORDER_EVENTS,
    CONSOLE_ORDER_TIMELINE,
    CONSOLE_ORDERS,
)
from api.routes.cancel import cancel
from api.routes.events import LAST_EVENT_ID, order_event_stream
from api.routes.history import order_revisions
from api.routes.listing import PARAMETERS, given_once, orders_page
from api.routes.openapi import OrderId
from api.routes.orders import readable_order
from nodeapp.core.errors import InvalidOrder
from nodeapp.orders.model import STEP_NAMES, Order
from nodeapp.readmodel.params import STATUSES
from nodeapp.readmodel.queries import OrderPage
from nodeapp.security.scopes import ORDERS_READ, ORDERS_WRITE
from nodeapp.shop.notifications import DeliveryState, notifications_for

TIMES: Final = ("created_after", "created_before")
SETTLED: Final = frozenset({"delivered", "dead", "skipped"})  # a notification's last states
# What a browser's datetime-local field sends: a time without a zone (the form says UTC).
_FORM_TIME: Final = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d{1,6})?)?$")
Text = str | None
Query = Annotated[Text, Parameter()]  # a query parameter, as the query string has it


def order_path(order_id: str) -> str:
    return f"{CONSOLE_ORDERS}/{order_id}"


def as_utc(value: str) -> str:
    """A form's zone-less time read as UTC (``2026-12-01T10:30`` -> ``2026-12-01T10:30:00Z``);
    anything else as given, for the read model's checks to name."""
    if not _FORM_TIME.fullmatch(value):
        return value
    return value + (":00Z" if len(value) == len("2026-12-01T10:30") else "Z")


def as_form_time(value: str) -> str:
    """What a datetime-local field can show of a time given in the URL (``...Z``)."""
    return value.removesuffix("Z") if _FORM_TIME.fullmatch(value.removesuffix("Z")) else value


@get(CONSOLE_ORDERS, guards=[requires(ORDERS_READ)])
async def orders(
    request: AnyRequest,
    status: Query = None,
    customer_id: Query = None,
    product_id: Query = None,
    created_after: Query = None,
    created_before: Query = None,
    limit: Query = None,
    cursor: Query = None,
) -> Template:
    """The orders, newest first, filtered; a bad filter is shown next to its field (422)."""
    given = {
        "status": status, "customer_id": customer_id, "product_id": product_id,
        "created_after": created_after, "created_before": created_before, "limit": limit,
    }  # fmt: skip
    form = {name: (value or "").strip() for name, value in given.items()}
    asked = {**form, **{t: as_utc(form[t]) for t in TIMES}, "cursor": cursor}
    errors: dict[str, str] = {}
    try:
        given_once(request, PARAMETERS)
        page = await orders_page(request, asked)
    except InvalidOrder as exc:
        errors = {e.field: e.message for e in exc.errors}
        page = OrderPage([], None)
    form.update({t: as_form_time(form[t]) for t in TIMES})
    context = {
        "form": form,
        "errors": errors,
        "statuses": sorted(STATUSES),
        "bound_customer": customer_of(request),
        "page": page,
        "next_url": _next_url(form, page.next_cursor),
        "filtered": any(form.values()) or bool(cursor),
    }
    return render(request, "orders.html", context, status=422 if errors else 200)


def _next_url(form: dict[str, str], cursor: str | None) -> str | None:
    if cursor is None:
        return None
    query = {name: value for name, value in form.items() if value}
    return f"{CONSOLE_ORDERS}?{urlencode({**query, 'cursor': cursor})}"


async def _order_view(request: AnyRequest, order_id: str) -> dict[str, Any]:
    """What the order page and its live timeline show."""
    order = await readable_order(request, order_id)
    kept = broker_link(request).shop().notifications
    revisions, notifications = await asyncio.gather(
        order_revisions(request, order_id), notifications_for(kept, order_id)
    )
    return {
        "order": order,
        "steps": _steps_in_order(order),
        "revisions": revisions,
        "notifications": notifications,
        "settled": order.terminal and _settled(notifications),
        "may_cancel": not order.terminal and can(request, ORDERS_WRITE),
        "path": order_path(order.order_id),
    }


def _steps_in_order(order: Order) -> list[Any]:
    """The order's steps in pipeline order (as stored, but a document may list them as it
    pleases)."""
    rank = {name: i for i, name in enumerate(STEP_NAMES)}
    return sorted(order.steps, key=lambda step: rank.get(step.name, len(rank)))


def _settled(notifications: list[DeliveryState]) -> bool:
    """Whether the page's script may stop asking: every notification delivered or given up."""
    return bool(notifications) and all(n.state in SETTLED for n in notifications)


@get(CONSOLE_ORDER, guards=[requires(ORDERS_READ)])
async def order_page(request: AnyRequest, order_id: OrderId) -> Template:
    return render(request, "order.html", await _order_view(request, order_id))


@get(CONSOLE_ORDER_TIMELINE, guards=[requires(ORDERS_READ)])
async def order_timeline(request: AnyRequest, order_id: OrderId) -> Template:
    """The order page's live part alone, for its script to swap in."""
    view = await _order_view(request, order_id)
    return render(request, "timeline.html", view, fragment=True)


@get(CONSOLE_ORDER_EVENTS, guards=[requires(ORDERS_READ)])
async def order_events(
    request: AnyRequest,
    order_id: OrderId,
    last_event: Annotated[str | None, HeaderParameter(name=LAST_EVENT_ID, required=False)] = None,
) -> Response[Any]:
    """``GET /orders/{id}/events``, for the session: the same stream, the same rules."""
    return await order_event_stream(request, order_id, last_event)


@post(CONSOLE_ORDER_CANCEL, guards=[requires(ORDERS_WRITE)], status_code=303)
async def cancel_order(request: AnyRequest, order_id: OrderId) -> Redirect:
    """The Cancel button: ``POST /orders/{id}/cancel``'s work, then back to the order."""
    cancellation = await cancel(request, order_id)
    if cancellation.finished:
        flash(request, "Cancelled: no step had started.")
    else:
        flash(request, "Cancel requested: the order stops at its next step boundary.")
    return Redirect(order_path(order_id), status_code=303)


ORDER_PAGES: Final = [orders, order_page, order_timeline, order_events, cancel_order]
