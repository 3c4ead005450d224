"""Asking for an order's cancellation (ADR 0013): the request the api stores, and its hint.

The request is stored in the order document (``cancel_requested_at``) by compare-and-set before
the api answers 202, so it is durable and the owner cannot miss it: every write of the owner is
a compare-and-set on the revision it last saw, so its next one conflicts, and the owner re-reads
and compensates instead of starting another step (``nodeapp.worker.writes``). An order no node
has claimed yet has no effects to undo: the api ends it ``cancelled`` itself, in the same write,
and the node that later takes its work message finds it finished.

After storing a request the api publishes a hint on ``orderflow.cancel.<order_id>`` (core NATS,
no delivery guarantee; every node listens, ``listen_for_hints``): the owner wakes a payment wait
with it rather than waiting for the gateway's verdict. Losing a hint costs only that wait; the
document is what counts.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Final

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from nodeapp.broker.connection import ANY_NATS_ERROR, broker_errors
from nodeapp.core.errors import OrderFinished
from nodeapp.orders import lifecycle
from nodeapp.orders.model import Order, is_order_id, utcnow
from nodeapp.orders.store import OrderStore

log = logging.getLogger("orderflow.cancel")

HINT_PREFIX: Final = "orderflow.cancel."
HINT_SUBJECTS: Final = HINT_PREFIX + "*"
ATTEMPTS: Final = 10  # compare-and-set rounds against an owner writing meanwhile


class Cancellation(msgspec.Struct, frozen=True):
    """The order as stored after the request; ``finished``: it had never been claimed and is
    ``cancelled`` now; ``recorded``: this call stored the request (False for a repeat)."""

    order: Order
    finished: bool
    recorded: bool


def request(order: Order, now: datetime) -> bool:
    """Record the cancel request on ``order`` (False: it was recorded before, nothing to write);
    an order nobody claimed is cancelled outright. ``OrderFinished`` for a terminal order."""
    if order.terminal:
        raise OrderFinished(order.order_id, order.status)
    if order.owner is None:
        lifecycle.cancel_unstarted(order, now)
        return True
    if order.cancel_requested_at is not None:
        return False
    order.cancel_requested_at = now
    return True


async def request_cancel(store: OrderStore, order_id: str) -> Cancellation:
    """Store the request by compare-and-set (read again after a conflict): ``OrderNotFound``,
    ``OrderFinished``, ``RevisionConflict`` if the owner kept winning every round."""
    now = utcnow()
    recorded = False

    def change(order: Order) -> bool:
        nonlocal recorded
        recorded = request(order, now)
        return recorded

    order = await store.modify(order_id, change, attempts=ATTEMPTS)
    return Cancellation(order, finished=order.status == "cancelled", recorded=recorded)


def hint_subject(order_id: str) -> str:
    if not is_order_id(order_id):
        raise ValueError(f"not an order id: {order_id!r}")
    return HINT_PREFIX + order_id


def hinted_order(subject: str) -> str | None:
    """The order id a hint's subject names, None for anything else."""
    order_id = subject.removeprefix(HINT_PREFIX)
    return order_id if subject.startswith(HINT_PREFIX) and is_order_id(order_id) else None


async def announce(nc: NATS, order_id: str) -> None:
    """Publish the hint (after the request is stored); ``BrokerUnavailable`` if it cannot go."""
    with broker_errors(f"announcing the cancel of order {order_id}"):
        await nc.publish(hint_subject(order_id), b"")


@contextlib.asynccontextmanager
async def listen_for_hints(nc: NATS, on_hint: Callable[[str], None]) -> AsyncIterator[None]:
    """Call ``on_hint(order_id)`` for each cancel hint while the ``async with`` lasts."""

    async def received(msg: Msg) -> None:
        order_id = hinted_order(msg.subject)
        if order_id is not None:
            on_hint(order_id)

    with broker_errors("subscribing to cancel hints"):
        sub = await nc.subscribe(HINT_SUBJECTS, cb=received)
    try:
        yield
    finally:
        try:
            await sub.unsubscribe()
        except ANY_NATS_ERROR as exc:  # the connection is closing: nothing left to undo
            log.debug("cancel hints: unsubscribe failed: %s", exc)
