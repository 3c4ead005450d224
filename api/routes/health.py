"""``/healthz`` (the process is alive) and ``/readyz`` (it can take orders right now).

Readiness checks the broker link and that every resource the api relies on exists, each request
bounded by ``request_timeout`` so a load balancer gets its answer within seconds when NATS is away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

import nats.js.errors
from litestar import Response, get
from litestar.exceptions import ServiceUnavailableException
from nats.js import JetStreamContext

from api.broker_link import broker_link
from api.paths import HEALTHZ, READYZ
from api.responses import JSON, AnyRequest
from api.routes.openapi import json_spec, problem_spec
from api.schemas import HealthStatus
from nodeapp.broker.connection import broker_errors
from nodeapp.broker.resources import NODES_BUCKET, ORDERS_BUCKET, ORDERS_STREAM, WORKERS_CONSUMER
from nodeapp.orders.model import encode

# Probes arrive every few seconds: their answers are encoded once.
_OK: Final = encode(HealthStatus("ok"))
_READY: Final = encode(HealthStatus("ready"))


@get(
    HEALTHZ,
    summary="Liveness",
    responses={200: json_spec(HealthStatus, "Alive")},
)
async def healthz() -> Response[bytes]:
    return Response(_OK, media_type=JSON)


async def _check_resources(js: JetStreamContext) -> None:
    """Raise ``ServiceUnavailableException`` naming the first missing resource."""
    checks: tuple[tuple[str, Callable[[], Awaitable[object]]], ...] = (
        (f"stream {ORDERS_STREAM}", lambda: js.stream_info(ORDERS_STREAM)),
        (f"consumer {WORKERS_CONSUMER}", lambda: js.consumer_info(ORDERS_STREAM, WORKERS_CONSUMER)),
        (f"bucket {ORDERS_BUCKET}", lambda: js.key_value(ORDERS_BUCKET)),
        (f"bucket {NODES_BUCKET}", lambda: js.key_value(NODES_BUCKET)),
    )
    for what, check in checks:
        try:
            await check()
        except nats.js.errors.NotFoundError:
            raise ServiceUnavailableException(f"{what} is missing") from None


@get(
    READYZ,
    summary="Readiness",
    responses={
        200: json_spec(HealthStatus, "Ready to take orders"),
        503: problem_spec("Broker unreachable or a JetStream resource missing"),
    },
)
async def readyz(request: AnyRequest) -> Response[bytes]:
    link = broker_link(request)
    js = link.jetstream()
    with broker_errors("checking readiness"):
        async with asyncio.timeout(link.settings.request_timeout):
            await _check_resources(js)
    return Response(_READY, media_type=JSON)
