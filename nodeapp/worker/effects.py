"""Each step's real effect and compensation (ADR 0010, DESIGN's step table), and what follows
an order's terminal write.

  step             effect                                      compensation
  Scheduling       reserve every item (all or nothing)         release (tombstones stay)
  Pre-Processing   authorize the amount, wait for the verdict  void the authorization
  Processing       fulfilment: the simulated work only         cancel fulfilment: nothing to undo
  Post-Processing  capture, reservation -> sale (at once)      refund, put the stock back

Every effect is keyed by the order (its stock holds, its payment id) and fenced by the owner's
epoch where it lands, so a re-run after a crash or a takeover does nothing twice and a stale
owner does nothing at all (``Fenced``: the pipeline stops the run). An expected failure is a
reason returned to the step (``out_of_stock: <id>``, ``payment_declined``, ``payment_timeout``);
everything else is raised for the pipeline to decide.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from nats.js import JetStreamContext

from nodeapp.broker.requests import Replies
from nodeapp.core.errors import OrderflowError
from nodeapp.core.shop_errors import HoldConflict, OutOfStock
from nodeapp.core.together import together
from nodeapp.orders.model import STEP_NAMES, Order
from nodeapp.shop.notifications import Kind, cancel_delayed, publish
from nodeapp.shop.stock import Stock
from nodeapp.worker.charges import Charges, chargeable

log = logging.getLogger("orderflow.effects")

SCHEDULING, PRE_PROCESSING, PROCESSING, POST_PROCESSING = STEP_NAMES
NOTIFIED: Final[dict[str, Kind]] = {
    "completed": "order.completed",
    "failed": "order.failed",
    "cancelled": "order.cancelled",
}


class ShopEffects:
    """The shop's side of every order run in one node process (one ``Stock``, one payment
    client and waiter, shared by all its orders)."""

    def __init__(
        self, js: JetStreamContext, stock: Stock, charges: Charges, replies: Replies
    ) -> None:
        self.js = js
        self.stock = stock
        self.charges = charges
        self.replies = replies  # the notification's publish through the node's requests

    def may_wait(self, step: str, order: Order) -> bool:
        """Whether the step's effect can outlast a keepalive interval (the payment verdict)."""
        return step == PRE_PROCESSING and chargeable(order) is not None

    def acts(self, step: str, order: Order) -> bool:
        """Whether the step has an effect for this order: all but Processing, and
        Pre-Processing only when there is something to pay."""
        return step != PROCESSING and (step != PRE_PROCESSING or chargeable(order) is not None)

    async def apply(
        self, step: str, order: Order, epoch: int, interrupt: asyncio.Event | None = None
    ) -> str | None:
        """Do the step's effect; None when done, else the reason the step fails. ``interrupt``
        cuts the payment wait short (``WaitInterrupted``)."""
        if step == SCHEDULING:
            try:
                await self.stock.reserve_items(order.order_id, epoch, order.items)
            except OutOfStock as exc:  # what this order holds is released by the compensation
                return exc.reason
        elif step == PRE_PROCESSING:
            return await self.charges.authorize(order, epoch, interrupt)
        elif step == POST_PROCESSING:  # two independent effects: one round trip, not two
            await together(
                self.charges.capture(order, epoch),
                self.stock.commit_items(order.order_id, epoch, order.items),
            )
        return None

    async def undo(self, step: str, order: Order, epoch: int, *, interrupted: bool = False) -> None:
        """Undo the step's effect; safe to repeat, and for a step whose effect never happened.
        ``interrupted``: the step did not finish, so the payment is read from the gateway
        (the stock holds say for themselves what they are)."""
        if step == SCHEDULING:
            await self.stock.release_items(order.order_id, epoch, order.items)
        elif step == PRE_PROCESSING:
            await self.charges.give_back(order, epoch, unsure=interrupted)
        elif step == POST_PROCESSING:
            await self.charges.give_back(order, epoch, unsure=interrupted)
            await self.stock.restock_items(order.order_id, epoch, order.items)

    async def settle(self, order: Order) -> None:
        """Once the terminal document is stored: queue the customer's notification, drop the
        ``order.delayed`` schedule, forget the order's stock holds, all three at once. Each is
        idempotent and best-effort: a failure is logged with the order id and the others still
        run (a redelivered work message for the finished order settles it again)."""
        kind = NOTIFIED[order.status]
        epoch = order.owner.epoch if order.owner is not None else 0
        order_id = order.order_id
        await together(  # the order's slot is held until all three are done
            self._best_effort(
                order, f"queueing {kind}",
                lambda: publish(self.replies, order, kind),
            ),
            self._best_effort(
                order, "cancelling order.delayed", lambda: cancel_delayed(self.js, order_id)
            ),
            self._best_effort(
                order, "forgetting stock holds",
                lambda: self.stock.forget_items(order_id, epoch, order.items),
            ),
        )  # fmt: skip

    async def _best_effort(
        self, order: Order, what: str, effect: Callable[[], Awaitable[object]]
    ) -> None:
        try:
            await effect()
        except HoldConflict as exc:  # stock reserved for a finished order: nobody gives it back
            _log(logging.ERROR, f"{what} refused: {exc}", "order.settle_conflict", order)
        except OrderflowError as exc:
            _log(logging.WARNING, f"{what} failed: {exc}", "order.settle_failed", order)


def _log(level: int, message: str, event: str, order: Order) -> None:
    log.log(level, message, extra={"event": event, "order_id": order.order_id})
