"""``GET /metrics``: the api's Prometheus text exposition."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

from api.metrics import api_metrics
from nodeapp.cluster.backlog import CONTENT_TYPE


@get(
    "/metrics",
    summary="Prometheus metrics",
    description="Orders submitted by outcome, request latency by route, consumer backlog.",
    media_type=CONTENT_TYPE,
)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(await api_metrics(request).render(), media_type=CONTENT_TYPE)
