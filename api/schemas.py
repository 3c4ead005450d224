"""What crosses the HTTP boundary: response Structs, and the checks a submit goes through.

Order bodies are decoded from raw bytes by one pre-built msgspec decoder (strict: ``"2"`` is not
a quantity); its one-line errors are turned into ``FieldError`` with a dotted path such as
``items[0].quantity``. Every check raises ``InvalidOrder`` carrying the HTTP status it deserves,
so ``api.problems`` stays the one place that shapes the answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Final

import msgspec

from nodeapp.core.errors import FieldError, InvalidOrder
from nodeapp.orders.intake import OrderRequest, amount_problem
from nodeapp.orders.model import STEP_NAMES

MAX_BODY_BYTES: Final = 64 * 1024
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"


class SubmitResponse(msgspec.Struct, frozen=True):
    """Answer to ``POST /orders``: enough to poll ``Location`` for the rest."""

    order_id: str
    status: str
    start_time: datetime


class HealthStatus(msgspec.Struct, frozen=True):
    status: str


class ProblemFieldError(msgspec.Struct, frozen=True):
    field: str
    message: str


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    """An RFC 9457 problem document; ``errors`` names each invalid field when there are any."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[ProblemFieldError] | None = None


_order_decoder: Final = msgspec.json.Decoder(OrderRequest)
# msgspec reports one error per decode as "<message> - at `$.<path>`" (no suffix at the root).
_AT_PATH: Final = re.compile(r"^(?P<message>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?$", re.DOTALL)
_FIELD_ERRORS: Final = (
    (re.compile(r"^Object missing required field `(?P<name>.*)`$", re.DOTALL), "is required"),
    (re.compile(r"^Object contains unknown field `(?P<name>.*)`$", re.DOTALL), "is not allowed"),
)
_VISIBLE_ASCII: Final = re.compile(r"[\x21-\x7e]{1,255}")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def field_error(message: str) -> FieldError:
    """msgspec's validation message as a ``FieldError`` naming the field by its dotted path."""
    match = _AT_PATH.match(message)
    text, path = (match["message"], match["path"] or "") if match else (message, "")
    for pattern, reason in _FIELD_ERRORS:
        if named := pattern.match(text):
            return FieldError(_join(path, named["name"]), reason)
    return FieldError(path or "body", text)


def _semantic_errors(request: OrderRequest, fault_injection: bool) -> list[FieldError]:
    """Rules msgspec constraints cannot express: decimal precision, and the fault injections."""
    errors = []
    if (problem := amount_problem(request.amount)) is not None:
        errors.append(FieldError("amount", problem))
    for name, step in (("fail_at", request.fail_at), ("poison_at", request.poison_at)):
        if step is None:
            continue
        if not fault_injection:
            errors.append(FieldError(name, "fault injection is disabled"))
        elif step not in STEP_NAMES:
            errors.append(FieldError(name, f"must be one of {', '.join(STEP_NAMES)}"))
    return errors


def decode_order_request(body: bytes, *, fault_injection: bool) -> OrderRequest:
    """Decode and check a submitted order, or raise ``InvalidOrder`` (400 or 422)."""
    try:
        request = _order_decoder.decode(body)
    except msgspec.ValidationError as exc:
        error = field_error(str(exc))
        if error.field == "body":  # valid JSON, but not an object at all
            raise InvalidOrder([FieldError("body", "must be a JSON object")], status=400) from None
        raise InvalidOrder([error]) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidOrder([FieldError("body", f"is not valid JSON: {exc}")], status=400) from None
    if errors := _semantic_errors(request, fault_injection):
        raise InvalidOrder(errors)
    return request


def require_json(content_type: tuple[str, Mapping[str, str]]) -> None:
    """JSON is UTF-8 (RFC 8259): accept ``application/json`` with no charset or a UTF-8 one."""
    media_type, options = content_type
    charset = options.get("charset", "utf-8").lower()
    if media_type != "application/json" or charset not in ("utf-8", "utf8"):
        raise InvalidOrder(
            [FieldError("Content-Type", "must be application/json (UTF-8)")], status=415
        )


def idempotency_key(headers: Mapping[str, str]) -> str | None:
    """The ``Idempotency-Key`` header if present; 1-255 visible ASCII characters, else 400."""
    value = headers.get(IDEMPOTENCY_HEADER)
    if value is None:
        return None
    if not _VISIBLE_ASCII.fullmatch(value):
        raise InvalidOrder(
            [FieldError(IDEMPOTENCY_HEADER, "must be 1-255 visible ASCII characters")], status=400
        )
    return value
