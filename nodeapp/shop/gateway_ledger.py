"""The simulated card network's ledger entry and its transitions: pure, no I/O.

One entry per payment (payment id = order id) in KV bucket ``gateway``; ``nodeapp.shop.gateway``
reads it, applies one of these functions, and writes it back by compare-and-set. Each function
changes the entry in place and returns whether it changed anything, so a repeated request finds
its work done and writes nothing (idempotent). Every request carries the order owner's epoch;
a lower epoch than the highest recorded is refused (``PaymentFenced``) before anything else, a
higher one is recorded. The counters count effects, not requests: a test proves nothing was
charged twice by reading ``captures == 1`` after any number of retries.

::

    pending ──decide──> authorized ──capture──> captured ──refund──> refunded
       │                    │
       │                    └──void──> voided
       ├──decide──> declined   (void of a declined payment: nothing held, a no-op)
       └──void────> voided     (its verdict is then never sent)
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Final, Literal

import msgspec

from nodeapp.core.shop_errors import PaymentConflict, PaymentFenced
from nodeapp.shop.payment_messages import CallbackStatus, PaymentCallback

GatewayStatus = Literal["pending", "authorized", "declined", "captured", "voided", "refunded"]
Outcome = Literal["approve", "decline", "silent"]

DECLINE_PREFIX: Final = "tok_decline"
SILENT_PREFIX: Final = "tok_silent"


class LedgerEntry(msgspec.Struct, kw_only=True):
    """A payment as the network sees it. ``outcome`` is fixed at the first authorization from
    the token (which is not kept); ``decision`` is the verdict once made; ``callbacks`` counts
    verdicts delivered (2xx) to the callback URL."""

    payment_id: str
    amount: Decimal
    status: GatewayStatus
    outcome: Outcome
    epoch: int
    callback_url: str
    created_at: datetime
    decision: CallbackStatus | None = None
    decided_at: datetime | None = None
    captured_at: datetime | None = None
    voided_at: datetime | None = None
    refunded_at: datetime | None = None
    delivered_at: datetime | None = None
    authorizations: int = 0
    captures: int = 0
    voids: int = 0
    refunds: int = 0
    callbacks: int = 0

    @property
    def callback_due(self) -> bool:
        """Whether the verdict still has to reach the callback URL (made or not yet)."""
        return (
            self.outcome != "silent"
            and self.delivered_at is None
            and self.status in ("pending", "authorized", "declined")
        )


def outcome_of(token: str) -> Outcome:
    """DESIGN's simulated card network: ``tok_decline*`` declined, ``tok_silent*`` never answered,
    anything else approved."""
    if token.startswith(DECLINE_PREFIX):
        return "decline"
    if token.startswith(SILENT_PREFIX):
        return "silent"
    return "approve"


def new_entry(
    payment_id: str, amount: Decimal, token: str, epoch: int, callback_url: str, now: datetime
) -> LedgerEntry:
    """A first authorization: pending until the network decides."""
    return LedgerEntry(
        payment_id=payment_id,
        amount=amount,
        status="pending",
        outcome=outcome_of(token),
        epoch=epoch,
        callback_url=callback_url,
        created_at=now,
        authorizations=1,
    )


def fence(entry: LedgerEntry, epoch: int) -> bool:
    """Refuse an epoch lower than the highest seen; record a higher one (True: changed)."""
    if epoch < entry.epoch:
        raise PaymentFenced(entry.payment_id, epoch, entry.epoch)
    if epoch == entry.epoch:
        return False
    entry.epoch = epoch
    return True


def authorize_again(entry: LedgerEntry, amount: Decimal, epoch: int, callback_url: str) -> bool:
    """A repeated authorization: the same payment, unless it asks for another amount. The
    callback URL follows the latest request (the api may have moved); the token of the first
    request stands."""
    changed = fence(entry, epoch)
    if amount != entry.amount:
        raise PaymentConflict(
            entry.payment_id, f"already authorized for {entry.amount}, not {amount}"
        )
    if callback_url != entry.callback_url:
        entry.callback_url = callback_url
        changed = True
    return changed


def decide(entry: LedgerEntry, now: datetime) -> bool:
    """The network's verdict, once the delay is over; nothing once it is made or moot."""
    if entry.status != "pending" or entry.outcome == "silent":
        return False
    entry.decision = "approved" if entry.outcome == "approve" else "declined"
    entry.status = "authorized" if entry.outcome == "approve" else "declined"
    entry.decided_at = now
    return True


def delivered(entry: LedgerEntry, now: datetime) -> bool:
    """The callback URL answered 2xx to the verdict."""
    entry.delivered_at = entry.delivered_at or now
    entry.callbacks += 1
    return True


def capture(entry: LedgerEntry, epoch: int, now: datetime) -> bool:
    changed = fence(entry, epoch)
    if entry.status == "captured":
        return changed
    if entry.status != "authorized":
        raise PaymentConflict(entry.payment_id, f"cannot capture a {entry.status} payment")
    entry.status, entry.captured_at = "captured", now
    entry.captures += 1
    return True


def void(entry: LedgerEntry, epoch: int, now: datetime) -> bool:
    changed = fence(entry, epoch)
    if entry.status in ("voided", "declined"):  # declined: nothing is held, nothing to undo
        return changed
    if entry.status not in ("pending", "authorized"):
        raise PaymentConflict(
            entry.payment_id, f"cannot void a {entry.status} payment (refund a captured one)"
        )
    entry.status, entry.voided_at = "voided", now
    entry.voids += 1
    return True


def refund(entry: LedgerEntry, epoch: int, now: datetime) -> bool:
    changed = fence(entry, epoch)
    if entry.status == "refunded":
        return changed
    if entry.status != "captured":
        raise PaymentConflict(entry.payment_id, f"cannot refund a {entry.status} payment")
    entry.status, entry.refunded_at = "refunded", now
    entry.refunds += 1
    return True


def verdict(entry: LedgerEntry) -> PaymentCallback:
    """The callback body for a decided entry; the same bytes every time it is re-sent."""
    if entry.decision is None or entry.decided_at is None:
        raise ValueError(f"payment {entry.payment_id} has no verdict yet")
    return PaymentCallback(
        payment_id=entry.payment_id,
        order_id=entry.payment_id,
        status=entry.decision,
        amount=entry.amount,
        time=entry.decided_at,
    )


_decoder: Final = msgspec.json.Decoder(LedgerEntry)


def decode_entry(data: bytes) -> LedgerEntry:
    return _decoder.decode(data)
