"""What crosses the HTTP boundary besides the domain's own documents: the answers' Structs, and
the two submit checks that are about HTTP itself (Content-Type, the ``Idempotency-Key`` header).

The order body's checks live with the request model in ``nodeapp.orders.requests``, so every
submitter runs them; these raise the same ``InvalidOrder`` and ``api.problems`` shapes both.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import msgspec

from api.responses import JSON
from nodeapp.core.errors import FieldError, InvalidOrder
from nodeapp.orders.requests import IDEMPOTENCY_KEY, check_idempotency_key


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


def require_json(content_type: tuple[str, Mapping[str, str]]) -> None:
    """JSON is UTF-8 (RFC 8259): accept ``application/json`` with no charset or a UTF-8 one."""
    media_type, options = content_type
    charset = options.get("charset", "utf-8").lower()
    if media_type != JSON or charset not in ("utf-8", "utf8"):
        raise InvalidOrder(
            [FieldError("Content-Type", "must be application/json (UTF-8)")], status=415
        )


def idempotency_key(headers: Mapping[str, str]) -> str | None:
    """The ``Idempotency-Key`` header if present and well-formed (else ``InvalidOrder``, 400)."""
    value = headers.get(IDEMPOTENCY_KEY)
    return None if value is None else check_idempotency_key(value)
