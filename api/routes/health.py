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
from api.routes.openapi import checked_query, json_spec, problem_spec
from api.schemas import HealthStatus
from nodeapp.broker.connection import broker_errors
from nodeapp.broker.resources import NODES_BUCKET, ORDERS_BUCKET, ORDERS_STREAM, WORKERS_CONSUMER
from nodeapp.orders.model import encode
from nodeapp.shop.notify_resources import STREAM as NOTIFICATIONS_STREAM
from nodeapp.shop.payment_resources import PAYMENTS_BUCKET
from nodeapp.shop.resources import CATALOG_BUCKET, STOCK_BUCKET

# Probes arrive every few seconds: their answers are encoded once.
_OK: Final = encode(HealthStatus("ok"))
_READY: Final = encode(HealthStatus("ready"))


@get(
    HEALTHZ,
    summary="Liveness",
    responses=checked_query({200: json_spec(HealthStatus, "Alive")}),
)
async def healthz() -> Response[bytes]:
    return Response(_OK, media_type=JSON)


async def _check_resources(js: JetStreamContext) -> None:
    """Raise ``ServiceUnavailableException`` naming every missing resource (asked at once)."""
    checks: tuple[tuple[str, Callable[[], Awaitable[object]]], ...] = (
        (f"stream {ORDERS_STREAM}", lambda: js.stream_info(ORDERS_STREAM)),
        (f"consumer {WORKERS_CONSUMER}", lambda: js.consumer_info(ORDERS_STREAM, WORKERS_CONSUMER)),
        (f"bucket {ORDERS_BUCKET}", lambda: js.key_value(ORDERS_BUCKET)),
        (f"bucket {NODES_BUCKET}", lambda: js.key_value(NODES_BUCKET)),
        (f"bucket {CATALOG_BUCKET}", lambda: js.key_value(CATALOG_BUCKET)),
        (f"bucket {STOCK_BUCKET}", lambda: js.key_value(STOCK_BUCKET)),
        (f"bucket {PAYMENTS_BUCKET}", lambda: js.key_value(PAYMENTS_BUCKET)),
        (f"stream {NOTIFICATIONS_STREAM}", lambda: js.stream_info(NOTIFICATIONS_STREAM)),
    )
    found = await asyncio.gather(*(_missing(what, check) for what, check in checks))
    if missing := [what for what in found if what is not None]:
        verb = "is" if len(missing) == 1 else "are"
        raise ServiceUnavailableException(f"{', '.join(missing)} {verb} missing")


async def _missing(what: str, check: Callable[[], Awaitable[object]]) -> str | None:
    """``what`` if ``check`` finds it missing, else None (other errors propagate)."""
    try:
        await check()
    except nats.js.errors.NotFoundError:
        return what
    return None


@get(
    READYZ,
    summary="Readiness",
    responses=checked_query(
        {
            200: json_spec(HealthStatus, "Ready to take orders"),
            503: problem_spec("Broker unreachable or a JetStream resource missing"),
        }
    ),
)
async def readyz(request: AnyRequest) -> Response[bytes]:
    link = broker_link(request)
    js = link.jetstream()
    with broker_errors("checking readiness"):
        async with asyncio.timeout(link.settings.request_timeout):
            await _check_resources(js)
    return Response(_READY, media_type=JSON)
