"""The NATS connection: one per process, opened in an ``async with`` and drained on exit.

Publishes are never buffered while disconnected (``pending_size=0``): a request that gets a 503
must not be replayed by the client after the broker comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from nodeapp.core.errors import BrokerUnavailable
from nodeapp.core.settings import Settings

log = logging.getLogger("orderflow.broker")

# Everything nats-py raises when the broker is away or slow; translated to BrokerUnavailable.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    asyncio.TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    ConnectionError,  # refused, reset, broken pipe: the socket to the broker, not a file
)


# ... plus nats-py's own base error, for calls where any client failure means "try later".
ANY_NATS_ERROR: tuple[type[BaseException], ...] = (*BROKER_ERRORS, nats.errors.Error)


@contextlib.contextmanager
def broker_errors(what: str) -> Iterator[None]:
    """Translate nats-py's connectivity errors into ``BrokerUnavailable`` at the boundary."""
    try:
        yield
    except BROKER_ERRORS as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # nats-py can turn a cancellation into a timeout; keep the cancellation.
            raise asyncio.CancelledError from exc
        raise BrokerUnavailable(f"{what}: {type(exc).__name__}: {exc}".rstrip(": ")) from exc


async def connect(
    settings: Settings, name: str, within: float | None = None, **options: Any
) -> NATS:
    """Open a connection that keeps reconnecting forever and logs its state changes.

    ``within`` bounds the first connect (a one-shot command should fail, a service may wait).
    """

    client: list[NATS] = []

    async def on_disconnect() -> None:
        if client and (client[0].is_closed or client[0].is_draining):
            return  # our own close, not news
        log.warning("broker disconnected", extra={"event": "broker.disconnected"})

    async def on_reconnect() -> None:
        log.info("broker reconnected", extra={"event": "broker.reconnected"})

    async def on_error(exc: Exception) -> None:
        log.warning("broker error: %s", exc, extra={"event": "broker.error"})

    params: dict[str, Any] = {
        "servers": settings.nats_servers,
        "name": name,
        "pending_size": 0,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        "ping_interval": 5,
        "max_outstanding_pings": 2,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
        "error_cb": on_error,
    }
    params.update(options)
    with broker_errors(f"connecting to {settings.nats_url}"):
        nc: NATS = await asyncio.wait_for(nats.connect(**params), within)
    client.append(nc)
    return nc


@contextlib.asynccontextmanager
async def connection(
    settings: Settings, name: str, within: float | None = None, **options: Any
) -> AsyncIterator[NATS]:
    """``async with connection(...) as nc``: connect, then drain and close on the way out."""
    nc = await connect(settings, name, within, **options)
    try:
        yield nc
    finally:
        if not nc.is_closed:
            try:
                await asyncio.wait_for(nc.drain(), timeout=5)
            except ANY_NATS_ERROR as exc:
                log.warning("drain on close failed: %s", exc)
                await nc.close()


def jetstream(nc: NATS, settings: Settings) -> JetStreamContext:
    """A JetStream context whose requests give up after ``request_timeout`` seconds."""
    return nc.jetstream(timeout=settings.request_timeout)
