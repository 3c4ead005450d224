"""Requests on the hot path, with less per request than ``nc.request``: a JetStream publish
(a KV compare-and-set) and a KV direct get, each one round trip. The order store uses them
(ADR 0019), and so do the node's stock writes and notifications (ADR 0020).

nats-py's request draws two random bytes from the OS (a system call) and waits through
``asyncio.wait_for`` (an extra future); its JetStream publish decodes the acknowledgement with
``json`` into a dataclass. Here one wildcard subscription of our own takes every reply, a
counter names the requests, a timer handle bounds each wait, and msgspec decodes the answers.
Errors are nats-py's own (``TimeoutError``, ``NoRespondersError``, ``APIError``...), so
``broker_errors`` translates them as it does everywhere else.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Final

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

NO_RESPONDERS: Final = "503"
NOT_FOUND: Final = "404"
EXPECTED_REVISION: Final = "Nats-Expected-Last-Subject-Sequence"
WRONG_REVISION: Final = frozenset({10071, 10164})  # JetStream: the key's last revision differs


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int | None = None
    description: str | None = None


class _PubAck(msgspec.Struct):
    seq: int = 0
    error: _ApiError | None = None


_puback: Final = msgspec.json.Decoder(_PubAck)
_ERRORS_BY_CODE: Final[dict[int, type[nats.js.errors.APIError]]] = {
    503: nats.js.errors.ServiceUnavailableError,
    500: nats.js.errors.ServerError,
    404: nats.js.errors.NotFoundError,
    400: nats.js.errors.BadRequestError,
}


class Replies:
    """Request/reply over one inbox subscription of ours; ``open`` before the first request."""

    def __init__(self, nc: NATS, timeout: float) -> None:
        self.nc = nc
        self.timeout = timeout
        self._prefix = nc.new_inbox() + "."
        self._numbers = itertools.count()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}

    async def open(self) -> Replies:
        await self.nc.subscribe(self._prefix + "*", cb=self._reply)
        return self

    async def _reply(self, msg: Msg) -> None:
        waiting = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if waiting is not None and not waiting.done():
            waiting.set_result(msg)

    async def request(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> Msg:
        """The reply, or nats-py's ``TimeoutError`` / ``NoRespondersError``."""
        loop = asyncio.get_running_loop()
        token = str(next(self._numbers))
        waiting: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = waiting
        timer = loop.call_later(self.timeout, _expire, waiting)
        try:
            await self.nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            reply = await waiting
        finally:
            timer.cancel()
            self._waiting.pop(token, None)
        if not reply.data and reply.headers and reply.headers.get("Status") == NO_RESPONDERS:
            raise nats.errors.NoRespondersError
        return reply

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> int:
        """A JetStream publish; the stored message's sequence, else nats-py's ``APIError``
        (``NoStreamResponseError`` when no stream takes the subject)."""
        try:
            reply = await self.request(subject, payload, headers)
        except nats.errors.NoRespondersError:
            raise nats.js.errors.NoStreamResponseError from None
        ack = _puback.decode(reply.data)
        if ack.error is not None:
            raise _api_error(ack.error)
        return ack.seq

    async def compare_and_set(
        self, subject: str, payload: bytes, last: int, headers: dict[str, str] | None = None
    ) -> int:
        """A KV write (``subject`` is ``$KV.<bucket>.<key>``) stored only if the key's last
        revision is ``last`` (0: the key has none); its revision, else nats-py's
        ``KeyWrongLastSequenceError``, as ``KeyValue.update`` raises it."""
        wanted = {EXPECTED_REVISION: str(last), **(headers or {})}
        try:
            return await self.publish(subject, payload, wanted)
        except nats.js.errors.APIError as exc:
            if exc.err_code in WRONG_REVISION:
                moved = nats.js.errors.KeyWrongLastSequenceError(description=exc.description)
                raise moved from None
            raise

    async def can_direct_get(self, stream: str, subject: str) -> bool:
        """Whether a direct get on ``stream`` is answered at all (the stream allows it and our
        user may ask): asked once, at start, with a subject that holds nothing."""
        try:
            await self.direct_get(stream, subject)
        except (nats.errors.Error, nats.js.errors.APIError, TimeoutError):
            return False
        return True

    async def direct_get(self, stream: str, subject: str) -> Msg | None:
        """The last message on ``subject`` by direct get (the stream must allow it), None when
        there is none."""
        reply = await self.request(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"")
        status = reply.headers.get("Status") if reply.headers else None
        if status == NOT_FOUND:
            return None
        if status is not None:
            raise nats.js.errors.APIError(code=int(status), description=f"direct get: {status}")
        return reply


def _api_error(error: _ApiError) -> nats.js.errors.APIError:
    """nats-py's class for the error, as its own publish picks it (``APIError.from_error``):
    a 503 (no leader yet) is a ``ServiceUnavailableError``, which ``broker_errors`` reports as
    the broker being unavailable."""
    kind = _ERRORS_BY_CODE.get(error.code, nats.js.errors.APIError)
    return kind(code=error.code, err_code=error.err_code, description=error.description)


def _expire(waiting: asyncio.Future[Msg]) -> None:
    if not waiting.done():
        waiting.set_exception(nats.errors.TimeoutError())
