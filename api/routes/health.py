"""``/healthz`` (the process is alive) and ``/readyz`` (it can take orders right now).

Readiness checks the broker link, that every resource the api relies on exists and that the
read model is open and following the bucket, each request bounded by ``request_timeout`` so a
load balancer gets its answer within seconds when NATS is away. The read model's lag is in the
answer but never makes it 503 (ADR 0012): a replica catching up, after its file was deleted
say, still takes orders; one whose file cannot be opened or whose projection stopped with an
error would serve stale lists until someone acts, so it says 503 and why.
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
from api.read_side import ReadSide, read_side
from api.responses import JSON, AnyRequest, json_response
from api.routes.openapi import checked_query, json_spec, problem_spec
from api.schemas import HealthStatus, Readiness, ReadModelLag
from nodeapp.broker.connection import broker_errors
from nodeapp.broker.resources import NODES_BUCKET, ORDERS_BUCKET, ORDERS_STREAM, WORKERS_CONSUMER
from nodeapp.orders.model import encode
from nodeapp.readmodel.projector import ProjectionFailed
from nodeapp.shop.notify_resources import STREAM as NOTIFICATIONS_STREAM
from nodeapp.shop.payment_resources import PAYMENTS_BUCKET
from nodeapp.shop.resources import CATALOG_BUCKET, STOCK_BUCKET

# Probes arrive every few seconds: the liveness answer is encoded once.
_OK: Final = encode(HealthStatus("ok"))


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


async def _read_model_lag(side: ReadSide) -> ReadModelLag:
    """The read model's lag; ``ServiceUnavailableException`` when it is not open or its
    projection stopped with an error."""
    projector = side.projector()
    if projector is None:
        raise ServiceUnavailableException(f"read model not open: {side.problem or 'opening'}")
    try:
        projector.check()
    except ProjectionFailed as exc:
        raise ServiceUnavailableException(f"{exc}; restart the api (docs/OPERATIONS.md)") from exc
    applied = projector.applied
    lag = await projector.lag()
    return ReadModelLag(lag.checkpoint, lag.stream_last_seq, lag.messages, lag.seconds, applied)


@get(
    READYZ,
    summary="Readiness",
    responses=checked_query(
        {
            200: json_spec(Readiness, "Ready to take orders; the read model's lag"),
            503: problem_spec(
                "Broker unreachable, a JetStream resource missing, or the read model not open or "
                "no longer following the bucket"
            ),
        }
    ),
)
async def readyz(request: AnyRequest) -> Response[bytes]:
    link = broker_link(request)
    js = link.jetstream()
    with broker_errors("checking readiness"):
        async with asyncio.timeout(link.settings.request_timeout):
            await _check_resources(js)
            lag = await _read_model_lag(read_side(request))
    return json_response(Readiness("ready", lag))
