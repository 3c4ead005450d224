"""The order document and the messages around it, as msgspec Structs.

The document is what ``nats kv get orders <id>`` shows, so its field names are public. New fields
get defaults and decoders ignore unknown fields, so old and new nodes can mix in a rolling deploy.
"""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final, Literal

import msgspec

STEP_NAMES: Final = ("Scheduling", "Pre-Processing", "Processing", "Post-Processing")
COMPLETED: Final = "Completed"
FAILED: Final = "Failed"
CANCELLED: Final = "Cancelled"

OrderStatus = Literal["accepted", "running", "rolling_back", "completed", "failed", "cancelled"]
StepStatus = Literal["pending", "running", "completed", "failed", "rolled_back"]
TERMINAL_STATUSES: Final = frozenset({"completed", "failed", "cancelled"})


PaymentStatus = Literal[
    "pending", "authorized", "declined", "timed_out", "captured", "voided", "refunded"
]  # fmt: skip


class Item(msgspec.Struct, frozen=True):
    """One line of the order; ``unit_price`` is the catalog's price when it was submitted."""

    product_id: str
    quantity: int
    unit_price: Decimal | None = None


class Contact(msgspec.Struct, frozen=True):
    """Where the customer's notifications go (the webhook stands in for e-mail and SMS)."""

    email: str | None = None
    phone: str | None = None


class Payment(msgspec.Struct):
    """The order's payment as the gateway's answers left it; times say when each happened."""

    payment_id: str
    status: PaymentStatus
    amount: Decimal | None
    authorized_at: datetime | None = None
    captured_at: datetime | None = None
    voided_at: datetime | None = None
    refunded_at: datetime | None = None


class StepRecord(msgspec.Struct):
    name: str
    status: StepStatus = "pending"
    start_time: datetime | None = None
    complete_time: datetime | None = None
    rollback_time: datetime | None = None
    node_id: str | None = None
    attempt: int = 0


class Failure(msgspec.Struct):
    step: str
    reason: str
    time: datetime


class Owner(msgspec.Struct):
    """Who works the order and until when; ``epoch`` rises on every change of owner (fencing)."""

    node_id: str
    lease_expires_at: datetime
    epoch: int


class DeadLetterMark(msgspec.Struct):
    """Why and when the order's work message was moved to ``ORDERS_DLQ``: while set, nodes and
    the reconciler leave the order parked until an operator replays it."""

    reason: str
    time: datetime
    deliveries: int | None = None


class Order(msgspec.Struct):
    """The order document. ``revision`` is filled from the KV entry on read; stored as null."""

    order_id: str
    status: OrderStatus
    current_step: str
    start_time: datetime
    complete_time: datetime | None
    customer_id: str
    items: list[Item]
    amount: Decimal | None
    steps: list[StepRecord]
    failure: Failure | None = None
    owner: Owner | None = None
    attempts: int = 0
    revision: int | None = None
    fail_at: str | None = None
    idempotency_key: str | None = None
    # A bare string is the reason alone, as documents written before the mark had fields.
    dead_letter: DeadLetterMark | str | None = None
    poison_at: str | None = None
    payment_token: str | None = None
    payment: Payment | None = None
    contact: Contact | None = None
    # When ``POST /orders/{id}/cancel`` was accepted (ADR 0013): no step starts after it.
    cancel_requested_at: datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def dead_letter_reason(self) -> str | None:
        mark = self.dead_letter
        return mark.reason if isinstance(mark, DeadLetterMark) else mark


class WorkMessage(msgspec.Struct):
    """Body of a message on ``orders.work``: the order to drive, nothing else."""

    order_id: str


def new_order(
    order_id: str,
    customer_id: str,
    items: list[Item],
    amount: Decimal | None,
    *,
    fail_at: str | None = None,
    poison_at: str | None = None,
    idempotency_key: str | None = None,
    now: datetime | None = None,
) -> Order:
    """A freshly accepted order with all four steps listed as pending."""
    return Order(
        order_id=order_id,
        status="accepted",
        current_step=STEP_NAMES[0],
        start_time=now or utcnow(),
        complete_time=None,
        customer_id=customer_id,
        items=items,
        amount=amount,
        steps=[StepRecord(name=name) for name in STEP_NAMES],
        fail_at=fail_at,
        poison_at=poison_at,
        idempotency_key=idempotency_key,
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


# One encoder and one decoder per type, reused: msgspec is fastest that way.
# Decimals are written as strings so no precision is lost on the way to JSON.
_encoder = msgspec.json.Encoder(decimal_format="string")
_order_decoder = msgspec.json.Decoder(Order)
_work_decoder = msgspec.json.Decoder(WorkMessage)


def encode(obj: object) -> bytes:
    return _encoder.encode(obj)


def decode_order(data: bytes) -> Order:
    return _order_decoder.decode(data)


def decode_work(data: bytes) -> WorkMessage:
    return _work_decoder.decode(data)


# Order ids are ULIDs: 26 characters of Crockford base32, sortable by creation time, safe as KV
# keys and in URLs.
_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ORDER_ID_PATTERN: Final = r"^[0-9A-HJKMNP-TV-Z]{26}$"
_ORDER_ID: Final = re.compile(ORDER_ID_PATTERN)


def is_order_id(text: str) -> bool:
    """Whether ``text`` could name an order (and so is safe as a KV key and a subject token)."""
    return _ORDER_ID.fullmatch(text) is not None


def new_order_id() -> str:
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))
