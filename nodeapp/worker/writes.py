"""An order run's writes of its document, and what a lost compare-and-set means (ADR 0013).

Every write is a compare-and-set on the revision the run last read or wrote. When one loses,
the run reads the document again and compares it with what it last knew of it:

- the only change is a cancel request (``cancel_requested_at``, stored by the api): the order is
  still the run's; the request is adopted and the run stops at this step boundary;
- the order is finished (the api cancelled it before any node claimed it, or another owner
  finished it): ``FinishedElsewhere``, the run only settles it;
- anything else (a takeover, a dead-letter mark): the conflict stands and the run has lost.
"""

from __future__ import annotations

import copy

import msgspec

from nodeapp.core.errors import OrderNotFound, RevisionConflict
from nodeapp.orders.model import Order, encode
from nodeapp.orders.store import OrderStore


class CancelNoticed(Exception):
    """A write found a cancel request and did not happen; the request is adopted (the order
    carries it and the stored revision), so the caller undoes its transition and cancels."""


class FinishedElsewhere(Exception):
    """The order is terminal in the store: nothing is left to do but settle it."""

    def __init__(self, order: Order) -> None:
        super().__init__(f"order {order.order_id} is already {order.status}")
        self.order = order


def snapshot(order: Order) -> Order:
    """A copy deep enough to undo a transition whose write did not happen: the parts a
    transition or an effect changes in place (the steps, the owner, the payment) are copied,
    the rest is shared (replaced whole, never changed in place)."""
    return msgspec.structs.replace(
        order,
        steps=[copy.copy(step) for step in order.steps],
        owner=copy.copy(order.owner),
        payment=copy.copy(order.payment),
    )


def restore(order: Order, before: Order) -> None:
    """Put ``before`` back into ``order``, keeping what the store told since: its revision and
    the cancel request."""
    for field in order.__struct_fields__:
        if field not in ("revision", "cancel_requested_at"):
            setattr(order, field, getattr(before, field))


def _image(order: Order) -> bytes:
    """The document as compared after a conflict: without its revision and cancel request."""
    return encode(msgspec.structs.replace(order, revision=None, cancel_requested_at=None))


class OrderWrites:
    """The compare-and-set writes of one run; ``seen`` the document as read before the first."""

    def __init__(self, store: OrderStore) -> None:
        self.store = store
        self._known = b""  # the document as last read or written, as ``_image`` shows it
        self.saved = False  # a write of this run was stored (the first one is the claim)

    def seen(self, order: Order) -> None:
        self._known = _image(order)

    async def save(self, order: Order, *, adopt: bool = True) -> None:
        """Write ``order``. After a conflict that only brought a cancel request, write again
        with the request adopted (``adopt``: a lease renewal, a compensation) or raise
        ``CancelNoticed`` without writing (a step's start, the order's end)."""
        while True:
            document = self.store.encode(order)
            try:
                await self.store.update(order, document)
            except RevisionConflict:
                self._judge(order, await self._read(order))
                if not adopt:
                    raise CancelNoticed from None
                continue
            # What was stored is the image unless it carries a cancel request.
            self._known = document if order.cancel_requested_at is None else _image(order)
            self.saved = True
            return

    async def refresh(self, order: Order) -> None:
        """Read the order again on a cancel hint, adopting a request stored since the last
        write; raises as a conflicting ``save`` would when something else changed."""
        fresh = await self._read(order)
        if fresh.revision != order.revision:
            self._judge(order, fresh)

    async def _read(self, order: Order) -> Order:
        try:
            return await self.store.get(order.order_id)
        except OrderNotFound:
            raise RevisionConflict(order.order_id, order.revision or 0) from None

    def _judge(self, order: Order, fresh: Order) -> None:
        if fresh.terminal:
            raise FinishedElsewhere(fresh)
        news = order.cancel_requested_at is None and fresh.cancel_requested_at is not None
        if not news or _image(fresh) != self._known:
            raise RevisionConflict(order.order_id, order.revision or 0)
        order.cancel_requested_at = fresh.cancel_requested_at
        order.revision = fresh.revision
