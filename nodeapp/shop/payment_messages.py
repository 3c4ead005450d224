"""What the payment gateway and orderflow say to each other over HTTP, in one place.

The gateway (``gateway_app``), the node's client (``payments``) and the api's callback inbox
(``callbacks``) encode and decode these Structs only, so the wire format cannot drift between
them. Payment id = order id (ADR 0010): one payment per order, so authorize is idempotent per
order and every record is keyed by an id that is safe as a KV key and in a URL path.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Final, Literal, TypeVar

import msgspec

from nodeapp.core.errors import FieldError
from nodeapp.core.shop_errors import InvalidPaymentMessage
from nodeapp.orders.model import is_order_id
from nodeapp.orders.requests import Name, amount_problem, field_error

CallbackStatus = Literal["approved", "declined"]
Epoch = Annotated[int, msgspec.Meta(ge=0)]
Url = Annotated[str, msgspec.Meta(min_length=1, max_length=2048, pattern=r"^https?://")]

# Paths, relative to the gateway's base URL (the api mounts it under SIM_PREFIX).
SIM_PREFIX: Final = "/sim/payments"
AUTHORIZE: Final = "/authorize"
PAYMENT: Final = "/{payment_id:str}"
CALLBACK_PATH: Final = "/payments/callback"  # on the api
MAX_BODY_BYTES: Final = 8 * 1024

# problem+json ``type`` names the client switches on (both are HTTP 409).
PROBLEM_BASE: Final = "https://orderflow.dev/problems/"
FENCED_PROBLEM: Final = PROBLEM_BASE + "payment-fenced"
CONFLICT_PROBLEM: Final = PROBLEM_BASE + "payment-conflict"


class PaymentCallback(msgspec.Struct, frozen=True, kw_only=True):
    """The gateway's verdict, POSTed signed to the api and kept in bucket ``payments``."""

    payment_id: Name
    order_id: str
    status: CallbackStatus
    amount: Decimal
    time: datetime

    def same_result(self, other: PaymentCallback) -> bool:
        """Whether ``other`` says the same thing (a re-sent callback may carry a later time)."""
        return (self.payment_id, self.order_id, self.status, self.amount) == (
            other.payment_id, other.order_id, other.status, other.amount,
        )  # fmt: skip


class AuthorizeRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /authorize``: hold ``amount`` on the card ``token`` for ``order_id``; the verdict
    goes to ``callback_url``. ``epoch`` is the order owner's (fencing)."""

    order_id: str
    amount: Decimal
    token: Name
    epoch: Epoch
    callback_url: Url


class EpochRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Body of capture, void and refund: the epoch of the owner asking."""

    epoch: Epoch


T = TypeVar("T")

_encoder: Final = msgspec.json.Encoder(decimal_format="string")
_callback_decoder: Final = msgspec.json.Decoder(PaymentCallback)
_authorize_decoder: Final = msgspec.json.Decoder(AuthorizeRequest)
_epoch_decoder: Final = msgspec.json.Decoder(EpochRequest)


def encode(message: object) -> bytes:
    """JSON with decimals as strings, so no amount loses precision on the way."""
    return _encoder.encode(message)


def _decode(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    if len(body) > MAX_BODY_BYTES:
        raise InvalidPaymentMessage([FieldError("body", "must be at most 8 KiB")], status=413)
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidPaymentMessage([field_error(str(exc))]) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidPaymentMessage([FieldError("body", f"is not valid JSON: {exc}")]) from None


def _check(order_id: str, amount: Decimal) -> None:
    errors = []
    if not is_order_id(order_id):
        errors.append(FieldError("order_id", "must be an order id (26 characters of a ULID)"))
    if (problem := amount_problem(amount)) is not None:
        errors.append(FieldError("amount", problem))
    if errors:
        raise InvalidPaymentMessage(errors)


def decode_callback(body: bytes) -> PaymentCallback:
    """A callback body, checked; ``InvalidPaymentMessage`` (422) otherwise."""
    callback = _decode(_callback_decoder, body)
    _check(callback.order_id, callback.amount)
    return callback


def decode_authorize(body: bytes) -> AuthorizeRequest:
    request = _decode(_authorize_decoder, body)
    _check(request.order_id, request.amount)
    return request


def decode_epoch(body: bytes) -> EpochRequest:
    return _decode(_epoch_decoder, body)
