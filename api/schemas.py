"""What crosses the HTTP boundary besides the domain's own documents: the answers' Structs, the
stock change's body, and the two submit checks that are about HTTP itself (Content-Type, the
``Idempotency-Key`` header).

The order body's checks live with the request model in ``nodeapp.orders.requests``, so every
submitter runs them; these raise the same ``InvalidOrder`` and ``api.problems`` shapes both.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Final

import msgspec

from api.responses import JSON
from nodeapp.core.errors import FieldError, InvalidOrder
from nodeapp.orders.requests import check_idempotency_key
from nodeapp.shop.products import decode_strict

MAX_DELTA: Final = 1_000_000_000


class SubmitResponse(msgspec.Struct, frozen=True):
    """Answer to ``POST /orders``: enough to poll ``Location`` for the rest."""

    order_id: str
    status: str
    start_time: datetime


class HealthStatus(msgspec.Struct, frozen=True):
    status: str


class ReadModelLag(msgspec.Struct, frozen=True):
    """How far this api's read model is behind the ``orders`` bucket (informative: a large lag
    does not make the api unready, lists are just older)."""

    checkpoint: int  # the last KV_orders sequence applied
    stream_last_seq: int  # the bucket stream's last sequence
    lag_messages: int  # revisions not applied yet
    lag_seconds: float  # age of the oldest revision not applied yet (0 when caught up)
    applied: int  # revisions applied since this api started (0 after a restart with no news)


class Readiness(msgspec.Struct, frozen=True):
    """``/readyz``'s answer when ready."""

    status: str
    read_model: ReadModelLag


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


class StockChange(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``POST /products/{id}/stock``: add ``delta`` to ``on_hand`` (negative removes)."""

    delta: Annotated[int, msgspec.Meta(ge=-MAX_DELTA, le=MAX_DELTA)]


_stock_change: Final = msgspec.json.Decoder(StockChange)


def decode_stock_change(body: bytes) -> StockChange:
    """The body as a ``StockChange``, or ``InvalidProduct``: 400 for broken JSON or a body that
    is not an object, 422 naming the field otherwise (``"5"``, ``1.5`` and ``true`` are not
    whole numbers)."""
    return decode_strict(_stock_change, body)


def require_json(content_type: tuple[str, Mapping[str, str]]) -> None:
    """JSON is UTF-8 (RFC 8259): accept ``application/json`` with no charset or a UTF-8 one."""
    media_type, options = content_type
    charset = options.get("charset", "utf-8").lower()
    if media_type != JSON or charset not in ("utf-8", "utf8"):
        raise InvalidOrder(
            [FieldError("Content-Type", "must be application/json (UTF-8)")], status=415
        )


def checked_idempotency_key(value: str | None) -> str | None:
    """The ``Idempotency-Key`` header's value if present and well-formed (else
    ``InvalidOrder``, 400)."""
    return None if value is None else check_idempotency_key(value)
