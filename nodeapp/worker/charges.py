"""The order's payment through its steps: authorize and wait for the verdict (Pre-Processing),
capture (Post-Processing), give back (their compensations).

Each call is idempotent at the gateway (payment id = order id) and fenced by the owner's epoch
there. What happened is written into the order document's ``payment`` section in memory; the
pipeline stores it with the step's next compare-and-set, so the document says what the owner
saw. The compensations decide from that section, never from a guess: a payment the document
does not know of was never authorized by a step that finished (a step cut short by a crash is
re-run, not compensated), and the gateway's own idempotence covers a re-run of a compensation
whose outcome was not stored yet. The one step compensated without finishing is one a cancel
cut short (ADR 0013): its compensation reads the payment from the gateway first.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import Final

from nodeapp.core.shop_errors import PaymentNotFound
from nodeapp.orders.model import Order, Payment, PaymentStatus, utcnow
from nodeapp.orders.requests import DEFAULT_PAYMENT_TOKEN
from nodeapp.shop.gateway_ledger import LedgerEntry
from nodeapp.shop.payments import PaymentClient
from nodeapp.shop.verdicts import PaymentWaiter

log = logging.getLogger("orderflow.charges")

DECLINED: Final = "payment_declined"
TIMED_OUT: Final = "payment_timeout"
NOTHING_HELD: Final = frozenset({"declined", "voided", "refunded"})  # nothing to give back


def chargeable(order: Order) -> Decimal | None:
    """The amount to authorize, or None when there is nothing to pay (no amount, or 0)."""
    return order.amount if order.amount else None


class Charges:
    """The payment steps of one node process, on its ``PaymentClient`` and ``PaymentWaiter``.

    Raise what the client raises: ``GatewayUnavailable`` (retry later), ``PaymentFenced`` (the
    order is someone else's now), ``PaymentConflict`` (a bug); the waiter's
    ``BrokerUnavailable``.
    """

    def __init__(self, client: PaymentClient, waiter: PaymentWaiter, timeout: float) -> None:
        self.client = client
        self.waiter = waiter
        self.timeout = timeout

    async def authorize(
        self, order: Order, epoch: int, interrupt: asyncio.Event | None = None
    ) -> str | None:
        """Pre-Processing: authorize the amount and wait for the gateway's verdict. None when
        approved (or there is nothing to pay), else the step's failure reason;
        ``WaitInterrupted`` when ``interrupt`` is set first (the payment stays pending)."""
        amount = chargeable(order)
        if amount is None:
            return None
        token = order.payment_token or DEFAULT_PAYMENT_TOKEN  # a document from before tokens
        with self.waiter.expecting(order.order_id) as expected:  # listening before asking
            entry = await self.client.authorize(order.order_id, amount, token, epoch)
            _record(order, "pending")
            # "pending": decided after we began listening, so the record is yet to come.
            maybe_recorded = entry.status != "pending"
            verdict = await expected.verdict(self.timeout, interrupt, maybe_recorded=maybe_recorded)
        if verdict is None:
            _record(order, "timed_out")
            return TIMED_OUT
        if verdict.status == "declined":
            _record(order, "declined")
            return DECLINED
        _record(order, "authorized").authorized_at = verdict.time
        return None

    async def capture(self, order: Order, epoch: int) -> None:
        """Post-Processing: take the authorized amount (a re-run finds it captured)."""
        if order.payment is None:  # nothing was authorized: nothing to pay
            return
        entry = await self.client.capture(order.order_id, epoch)
        _record(order, "captured").captured_at = entry.captured_at or utcnow()

    async def give_back(self, order: Order, epoch: int, *, unsure: bool = False) -> None:
        """The compensations of Pre- and Post-Processing: refund a captured payment, void an
        authorization (pending, authorized or timed out); nothing when nothing is held.
        ``unsure``: the step was interrupted, so what it did is read from the gateway first."""
        if unsure:
            await self._learn(order)
        payment = order.payment
        if payment is None or payment.status in NOTHING_HELD:
            return
        if payment.status == "captured":
            entry = await self.client.refund(order.order_id, epoch)
            _record(order, "refunded").refunded_at = entry.refunded_at or utcnow()
            return
        try:
            entry = await self.client.void(order.order_id, epoch)
        except PaymentNotFound:  # the gateway never recorded it: nothing is held
            log.warning(
                "payment of order %s unknown to the gateway: nothing to void", order.order_id,
                extra={"event": "payment.void_unknown", "order_id": order.order_id},
            )  # fmt: skip
            return
        _after_void(order, entry)

    async def _learn(self, order: Order) -> None:
        """The payment as the gateway has it: a step cut short may have authorized or
        captured without the document saying so."""
        try:
            entry = await self.client.get(order.order_id)
        except PaymentNotFound:  # never authorized: nothing is held
            return
        payment = _record(order, entry.status)
        payment.authorized_at = payment.authorized_at or entry.decided_at
        payment.captured_at = payment.captured_at or entry.captured_at


def _after_void(order: Order, entry: LedgerEntry) -> None:
    """A timed-out payment may have been declined meanwhile: then nothing was held."""
    if entry.status == "declined":
        _record(order, "declined")
        return
    _record(order, "voided").voided_at = entry.voided_at or utcnow()


def _record(order: Order, status: PaymentStatus) -> Payment:
    """The order's payment section in ``status`` (made on the first call)."""
    if order.payment is None:
        order.payment = Payment(payment_id=order.order_id, status=status, amount=order.amount)
    order.payment.status = status
    return order.payment
