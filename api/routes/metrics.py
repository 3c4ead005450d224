"""``GET /metrics``: the api's Prometheus text exposition."""

from __future__ import annotations

from litestar import Response, get

from api.auth import requires
from api.metrics import api_metrics
from api.paths import METRICS
from api.responses import AnyRequest
from api.routes.openapi import BEARER, guarded
from nodeapp.cluster.backlog import CONTENT_TYPE
from nodeapp.security.scopes import OPS


@get(
    METRICS,
    guards=[requires(OPS)],
    security=BEARER,
    responses=guarded({}, OPS),
    summary="Prometheus metrics",
    description=(
        "Orders submitted by outcome, request latency by route, consumer backlog, the read "
        "model's progress and lag (`orderflow_readmodel_*`)."
    ),
    media_type=CONTENT_TYPE,
)
async def metrics(request: AnyRequest) -> Response[bytes]:
    return Response(await api_metrics(request).render(), media_type=CONTENT_TYPE)
