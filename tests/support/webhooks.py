"""A real HTTP receiver for webhook tests: an asyncio server on a free local port.

It records every request (headers, body, whether the ``Orderflow-Signature`` verifies) and
answers from a script first: ``script=[503, None]`` answers 503, then never answers (the client
times out), then 200 from there on; ``always`` answers that status to everything.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import msgspec

from nodeapp.core.signing import BadSignature, verify

REASONS = {200: "OK", 401: "Unauthorized", 500: "Internal Server Error", 503: "Unavailable"}


class Received(msgspec.Struct):
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    signed: bool  # the signature verified with the receiver's secret
    answered: int | None  # None: left without an answer


class WebhookReceiver:
    """``async with WebhookReceiver(secret) as hook``: POST to ``hook.url``; read ``requests``."""

    def __init__(
        self, secret: bytes = b"", script: list[int | None] | None = None, always: int | None = None
    ) -> None:
        self.secret = secret
        self.script = list(script or [])
        self.always = always
        self.requests: list[Received] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.url = ""

    async def __aenter__(self) -> WebhookReceiver:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hooks/orders"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    def _answer(self) -> int | None:
        if self.script:
            return self.script.pop(0)
        return 200 if self.always is None else self.always

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection, keep-alive: requests in turn until it closes."""
        self._writers.add(writer)
        try:
            while await self._exchange(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away, as clients do
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        signed = self._verified(body, headers.get("orderflow-signature"))
        status = self._answer() if signed else 401
        self.requests.append(Received(method, path, headers, body, signed, status))
        if status is None:
            await reader.read()  # hold the request until the client gives up and closes
            return False
        reason = REASONS.get(status, "Status")
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        return True

    def _verified(self, body: bytes, header: str | None) -> bool:
        if not self.secret:
            return True
        try:
            verify(self.secret, body, header)
        except BadSignature:
            return False
        return True
