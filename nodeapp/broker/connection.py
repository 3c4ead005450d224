"""The NATS connection: one per process, opened in an ``async with`` and drained on exit.

Publishes are never buffered while disconnected (``pending_size=0``): a request that gets a 503
must not be replayed by the client after the broker comes back.

The user and password in ``NATS_URL`` (one broker user per role, ADR 0015) go to nats-py as
options, the servers without them, so no URL it reports carries the password. The user's inbox
prefix is ``_INBOX_<user>``: the broker lets each user subscribe to its own inboxes only, so one
role cannot read the replies meant for another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any, NamedTuple, Protocol

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from nodeapp.core.brokerurl import credentials
from nodeapp.core.errors import BrokerUnavailable, SettingsError
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

    refusals: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        if not _refused(exc):
            log.warning("broker error: %s", exc, extra={"event": "broker.error"})
            return
        if not refusals:  # nats-py tries again every half second: say it once
            log.error("%s", refusal, extra={"event": "broker.refused"})
        refusals.append(exc)

    params: dict[str, Any] = {
        **auth_options(settings.nats_url),
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
    refusal = _refusal_text(params.get("user"))
    nc = NATS()
    try:
        with broker_errors(f"connecting to {settings.nats_url_shown}"):
            await asyncio.wait_for(nc.connect(**params), within)
    except BaseException as exc:
        await _abandon(nc)  # nats-py leaves a refused socket open otherwise
        if isinstance(exc, BrokerUnavailable | nats.errors.Error) and (refusals or _refused(exc)):
            raise SettingsError("NATS_URL", refusal) from None
        raise
    client.append(nc)
    return nc


async def _abandon(nc: NATS) -> None:
    if not nc.is_closed:
        with contextlib.suppress(*ANY_NATS_ERROR):
            await nc.close()


def _refused(exc: BaseException) -> bool:
    """The server said no to our credentials (nats-py reports it as a plain error)."""
    return isinstance(exc, nats.errors.Error) and "authorization violation" in str(exc).lower()


def _refusal_text(user: str | None) -> str:
    if user is None:
        return "the broker refused a connection without a user: use nats://user:password@host:port"
    return f"the broker refused user {user!r}: wrong user or password"


def inbox_prefix(user: str) -> str:
    """Where a user's replies arrive: ``_INBOX_<user>`` (nats.conf lets it read only those)."""
    return f"_INBOX_{user}"


def auth_options(nats_url: str) -> dict[str, Any]:
    """``nats.connect`` options for ``NATS_URL``: servers, and the user's credentials."""
    try:
        creds = credentials(nats_url)
    except ValueError as exc:
        raise SettingsError("NATS_URL", str(exc)) from None
    options: dict[str, Any] = {"servers": creds.servers}
    if creds.user and creds.password is not None:
        options.update(
            user=creds.user, password=creds.password, inbox_prefix=inbox_prefix(creds.user)
        )
    elif creds.user:  # nats://<token>@host: a token, as nats-py and the nats CLI read it
        options["token"] = creds.user
    return options


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


class Connected(Protocol):
    """A connection and its JetStream context, for what speaks to both (the read model's
    projector: JetStream calls, and pull requests over an inbox). ``Handles`` is one."""

    @property
    def nc(self) -> NATS: ...

    @property
    def js(self) -> JetStreamContext: ...


class Link(NamedTuple):
    """``Connected`` for a caller that holds only the two (``orderflow readmodel rebuild``)."""

    nc: NATS
    js: JetStreamContext
