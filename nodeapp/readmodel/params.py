"""``GET /orders``'s parameters, checked once, and its opaque keyset cursor.

Parameters arrive as the query string has them (strings) or already typed (the CLI, tests);
every bad one is reported at once as an ``InvalidOrder`` whose ``FieldError`` names it (422).

The cursor is the (start_time, order_id) of the last order on the page, base64url-encoded: the
next page starts strictly after it in newest-first order, and since neither value of an order
ever changes, paging never repeats or skips an order, whatever is written meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Final, get_args

import msgspec

from nodeapp.core.errors import FieldError, InvalidOrder
from nodeapp.orders.model import OrderStatus
from nodeapp.orders.requests import NAME_PATTERN
from nodeapp.readmodel.schema import db_time

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500
STATUSES: Final = frozenset(get_args(OrderStatus))
# A UTC time as RFC 3339 writes it, to the second or the microsecond, Z; it must also be a day
# of the calendar (2025-02-30 has the shape). The OpenAPI document states the same.
UTC_TIME_PATTERN: Final = (
    r"^[1-9][0-9]{3}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?Z$"
)
TIME_RULE: Final = "must be a UTC time YYYY-MM-DDTHH:MM:SS[.ffffff]Z, e.g. 2025-01-31T12:00:00Z"
_NAME: Final = re.compile(NAME_PATTERN)
_UTC_TIME: Final = re.compile(UTC_TIME_PATTERN)
_STORED_TIME: Final = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
_CURSOR_SEPARATOR: Final = " "


class Position(msgspec.Struct, frozen=True):
    """Where a page ended: its last order's stored start time and id."""

    start_time: str
    order_id: str


class ListQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A checked ``GET /orders`` request; times in the stored format. ``created_after`` and
    ``created_before`` are both strict bounds on ``start_time``."""

    status: str | None = None
    customer_id: str | None = None
    product_id: str | None = None
    created_after: str | None = None
    created_before: str | None = None
    limit: int = DEFAULT_LIMIT
    after: Position | None = None


def list_query(
    *,
    status: str | None = None,
    customer_id: str | None = None,
    product_id: str | None = None,
    created_after: str | datetime | None = None,
    created_before: str | datetime | None = None,
    limit: str | int | None = None,
    cursor: str | None = None,
) -> ListQuery:
    """Check every parameter; ``InvalidOrder`` naming each bad one. ``None`` means absent."""
    errors: list[FieldError] = []
    if status is not None and status not in STATUSES:
        errors.append(FieldError("status", f"must be one of {', '.join(sorted(STATUSES))}"))
    for field, name in (("customer_id", customer_id), ("product_id", product_id)):
        if name is not None and not (len(name) <= 64 and _NAME.fullmatch(name)):
            errors.append(FieldError(field, "must be 1-64 of A-Z a-z 0-9 . _ : -"))
    after, before = _time(created_after), _time(created_before)
    for field, raw, parsed in (
        ("created_after", created_after, after),
        ("created_before", created_before, before),
    ):
        if raw is not None and parsed is None:
            errors.append(FieldError(field, TIME_RULE))
    count = _limit(limit)
    if count is None:
        errors.append(FieldError("limit", f"must be an integer from 1 to {MAX_LIMIT}"))
    position = decode_cursor(cursor) if cursor is not None else None
    if cursor is not None and position is None:
        errors.append(FieldError("cursor", "is not a cursor this api returned"))
    if errors:
        raise InvalidOrder(errors)
    return ListQuery(
        status=status,
        customer_id=customer_id,
        product_id=product_id,
        created_after=after,
        created_before=before,
        limit=count or DEFAULT_LIMIT,
        after=position,
    )


def _time(raw: str | datetime | None) -> str | None:
    """The stored form of a UTC time, or None if ``raw`` is absent or not one. Text must have
    ``UTC_TIME_PATTERN``'s shape, not just any ISO 8601 ``fromisoformat`` reads (week dates,
    no seconds): one documented form."""
    if isinstance(raw, datetime):
        return db_time(raw) if raw.tzinfo is not None else None
    if raw is None or not _UTC_TIME.fullmatch(raw):
        return None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:  # not a day of the calendar
        return None
    return db_time(parsed)


def _limit(raw: str | int | None) -> int | None:
    if raw is None:
        return DEFAULT_LIMIT
    if isinstance(raw, bool):
        return None
    if isinstance(raw, str):
        if not raw.isascii() or not raw.isdigit():
            return None
        raw = int(raw)
    return raw if 1 <= raw <= MAX_LIMIT else None


def encode_cursor(position: Position) -> str:
    text = f"{position.start_time}{_CURSOR_SEPARATOR}{position.order_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position | None:
    """The position ``cursor`` names, or None if it is not one ``encode_cursor`` made."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    start_time, _, order_id = text.partition(_CURSOR_SEPARATOR)
    if not (_STORED_TIME.fullmatch(start_time) and _NAME.fullmatch(order_id)):
        return None
    try:
        datetime.fromisoformat(start_time)
    except ValueError:  # 2025-02-30 has the right shape
        return None
    return Position(start_time, order_id)
