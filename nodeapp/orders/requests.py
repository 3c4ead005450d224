"""What a customer submits, and every check it passes before it is accepted.

The api, the benchmarks and anything else that submits decode bytes here, so no path skips a
rule. One pre-built msgspec decoder does the structural checks (strict: ``"2"`` is not a
quantity) and its one-line errors become ``FieldError`` with a dotted path such as
``items[0].quantity``; the rules msgspec constraints cannot express follow. Every check raises
``InvalidOrder`` carrying the HTTP status it deserves, so ``api.problems`` stays the one place
that shapes the answer.

What needs the catalog (every product active, ``amount`` equal to the priced total) is checked
by ``nodeapp.shop.checkout`` after these, before anything is stored.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Final

import msgspec

from nodeapp.core.errors import FieldError, InvalidOrder
from nodeapp.orders.model import STEP_NAMES

MAX_BODY_BYTES: Final = 64 * 1024
MAX_AMOUNT: Final = Decimal(1_000_000_000)
NAME_PATTERN: Final = r"^[A-Za-z0-9._:\-]+$"
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NAME_PATTERN)]
Quantity = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
DEFAULT_PAYMENT_TOKEN: Final = "tok_ok"
# The WHATWG form of an e-mail address (what browsers accept), ASCII only.
EMAIL_PATTERN: Final = (
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
# An optional +, then 4-20 digits, single spaces allowed between them: "+49 30 1234567".
PHONE_PATTERN: Final = r"\+?[0-9](?: ?[0-9]){3,19}"
_EMAIL: Final = re.compile(EMAIL_PATTERN)
_PHONE: Final = re.compile(PHONE_PATTERN)
# 0-1000000000 with at most 2 fractional digits, as a decimal string (``amount_problem``'s rule).
MONEY_PATTERN: Final = r"^(?:[0-9]{1,9}(?:\.[0-9]{1,2})?|1000000000(?:\.00?)?)$"
# Lengths are bounded by the decoder; the shapes are rules below, with messages a person reads.
# ``extra_json_schema`` only documents a rule (the OpenAPI document and schemathesis read it);
# the checks below enforce it.
Email = Annotated[
    str,
    msgspec.Meta(min_length=3, max_length=254, extra_json_schema={"pattern": f"^{EMAIL_PATTERN}$"}),
]
Phone = Annotated[
    str,
    msgspec.Meta(min_length=4, max_length=32, extra_json_schema={"pattern": f"^{PHONE_PATTERN}$"}),
]
Money = Annotated[
    Decimal,
    msgspec.Meta(
        description="A JSON number or a decimal string, 0-1000000000, at most 2 fractional digits",
        extra_json_schema={
            "pattern": MONEY_PATTERN,  # the string form
            "minimum": 0,  # the number form
            "maximum": int(MAX_AMOUNT),
            "multipleOf": 0.01,
        },
    ),
]
StepName = Annotated[str, msgspec.Meta(extra_json_schema={"enum": list(STEP_NAMES)})]


class ItemRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    product_id: Name
    quantity: Quantity


class ContactRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where the customer's notifications go: an e-mail address, a phone number, or both."""

    email: Email | None = None
    phone: Phone | None = None


class OrderRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An order as submitted. ``amount`` (a JSON number or string) has at most 2 fractional
    digits and lies in 0..1000000000; when given it must equal the catalog's total.
    ``payment_token`` names the card (``tok_decline*`` and ``tok_silent*`` exercise the
    simulated gateway's failures); ``fail_at`` and ``poison_at`` name a step and are accepted
    only while fault injection is on."""

    customer_id: Name
    items: Annotated[list[ItemRequest], msgspec.Meta(min_length=1, max_length=100)]
    amount: Money | None = None
    fail_at: StepName | None = None
    poison_at: StepName | None = None
    payment_token: Name = DEFAULT_PAYMENT_TOKEN
    contact: ContactRequest | None = None


_decoder: Final = msgspec.json.Decoder(OrderRequest)
# msgspec reports one error per decode as "<message> - at `$.<path>`" (no suffix at the root).
_AT_PATH: Final = re.compile(r"^(?P<message>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?$", re.DOTALL)
_FIELD_ERRORS: Final = (
    (re.compile(r"^Object missing required field `(?P<name>.*)`$", re.DOTALL), "is required"),
    (re.compile(r"^Object contains unknown field `(?P<name>.*)`$", re.DOTALL), "is not allowed"),
)
IDEMPOTENCY_KEY_PATTERN: Final = r"^[\x21-\x7e]{1,255}$"
_VISIBLE_ASCII: Final = re.compile(IDEMPOTENCY_KEY_PATTERN)
IDEMPOTENCY_KEY: Final = "Idempotency-Key"


def decode_order_request(body: bytes, *, fault_injection: bool) -> OrderRequest:
    """The submitted order in ``body``, checked, or ``InvalidOrder`` (400, 413 or 422)."""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidOrder([FieldError("body", "must be at most 64 KiB")], status=413)
    try:
        request = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        error = field_error(str(exc))
        if error.field == "body":  # valid JSON, but not an object at all
            raise InvalidOrder([FieldError("body", "must be a JSON object")], status=400) from None
        raise InvalidOrder([error]) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidOrder([FieldError("body", f"is not valid JSON: {exc}")], status=400) from None
    if errors := _rule_errors(request, fault_injection):
        raise InvalidOrder(errors)
    return request


def field_error(message: str) -> FieldError:
    """msgspec's validation message as a ``FieldError`` naming the field by its dotted path."""
    match = _AT_PATH.match(message)
    text, path = (match["message"], match["path"] or "") if match else (message, "")
    for pattern, reason in _FIELD_ERRORS:
        if named := pattern.match(text):
            return FieldError(f"{path}.{named['name']}" if path else named["name"], reason)
    return FieldError(path or "body", text)


def _rule_errors(request: OrderRequest, fault_injection: bool) -> list[FieldError]:
    """Rules msgspec constraints cannot express: decimal precision, the contact's shapes, and
    the fault injections."""
    errors = []
    if (problem := amount_problem(request.amount)) is not None:
        errors.append(FieldError("amount", problem))
    if request.contact is not None:
        errors += contact_errors(request.contact)
    for name, step in (("fail_at", request.fail_at), ("poison_at", request.poison_at)):
        if step is None:
            continue
        if not fault_injection:
            errors.append(FieldError(name, "fault injection is disabled"))
        elif step not in STEP_NAMES:
            errors.append(FieldError(name, f"must be one of {', '.join(STEP_NAMES)}"))
    return errors


def contact_errors(contact: ContactRequest) -> list[FieldError]:
    """The contact's fields that are not an e-mail address or a phone number."""
    errors = []
    if contact.email is not None and not _EMAIL.fullmatch(contact.email):
        errors.append(FieldError("contact.email", "must be an e-mail address (name@example.com)"))
    if contact.phone is not None and not _PHONE.fullmatch(contact.phone):
        why = "must be a phone number: an optional +, then 4-20 digits (single spaces allowed)"
        errors.append(FieldError("contact.phone", why))
    return errors


def amount_problem(amount: Decimal | None) -> str | None:
    """Why ``amount`` is unacceptable, or None."""
    if amount is None:
        return None
    if not amount.is_finite():
        return "must be a finite number"
    if amount < 0 or amount > MAX_AMOUNT:
        return "must be between 0 and 1000000000"
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2 and amount != amount.quantize(Decimal("0.01")):
        return "must have at most 2 fractional digits"
    return None


def check_idempotency_key(value: str) -> str:
    """An ``Idempotency-Key`` is 1-255 visible ASCII characters, else ``InvalidOrder`` (400)."""
    if not _VISIBLE_ASCII.fullmatch(value):
        raise InvalidOrder(
            [FieldError(IDEMPOTENCY_KEY, "must be 1-255 visible ASCII characters")], status=400
        )
    return value
