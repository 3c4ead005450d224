"""``GET /stats?window=SECONDS``: what the orders are doing and how fast, from the read model
(``nodeapp.readmodel.stats``): counts by status and by step over every order, throughput and
latency percentiles over the orders completed within the window."""

from __future__ import annotations

from typing import Annotated

from litestar import Response, get
from litestar.openapi.spec import OpenAPIType
from litestar.params import Parameter

from api.auth import requires
from api.paths import STATS
from api.read_side import read_side
from api.responses import AnyRequest, json_response
from api.routes.listing import READ_MODEL_DOWN, given_once
from api.routes.openapi import BEARER, MALFORMED, BlankIsAbsent, guarded, json_spec, problem_spec
from nodeapp.readmodel.stats import DEFAULT_WINDOW, MAX_WINDOW, Stats
from nodeapp.security.scopes import OPS


@get(
    STATS,
    guards=[requires(OPS)],
    security=BEARER,
    operation_class=BlankIsAbsent,
    summary="Order statistics",
    description=(
        "Orders by status and by current step (every order in the read model); completed "
        "orders per second and latency p50/p95/p99 (submit to completion, seconds) over the "
        "orders completed in the last `window` seconds (`latency_seconds` null when none "
        "did). Needs scope `ops`."
    ),
    responses=guarded(
        {
            200: json_spec(Stats, "The statistics"),
            400: MALFORMED,
            422: problem_spec("window is not a number of seconds in range"),
            503: READ_MODEL_DOWN,
        },
        OPS,
    ),
)
async def order_stats(
    request: AnyRequest,
    window: Annotated[
        str | None,
        Parameter(
            description=f"seconds, in (0, {MAX_WINDOW:g}] (default {DEFAULT_WINDOW:g})",
            # A number as JSON writes it (``stats_window``); empty is absent (``BlankIsAbsent``).
            schema_extra={
                "type": OpenAPIType.NUMBER,
                "oneOf": None,
                "exclusiveMinimum": 0,
                "maximum": MAX_WINDOW,
                "default": DEFAULT_WINDOW,
            },
        ),
    ] = None,
) -> Response[bytes]:
    given_once(request, ("window",))
    return json_response(await read_side(request).model().stats(window or None))
