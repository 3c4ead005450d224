"""JSON answers, made one way: a body encoded once by the shared msgspec encoder (decimals as
strings), sent as ``application/json``. Errors leave through ``api.problems`` instead."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from litestar import Request, Response

from nodeapp.orders.model import encode

JSON: Final = "application/json"
# Handlers read only headers, body and app state: the request's generic parameters do not matter.
AnyRequest = Request[Any, Any, Any]


def json_response(
    value: object, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response[bytes]:
    return Response(
        encode(value),
        status_code=status_code,
        media_type=JSON,
        headers=dict(headers) if headers else None,
    )
