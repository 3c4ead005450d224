"""The ops listener's HTTP/1.1, on asyncio streams: enough for probes, curl and Prometheus.

Not a web framework in the node: one request per connection (``Connection: close``), the request
head bounded in size and read with a timeout, bodies never read, so a slow or hostile client
cannot hold the node. Handlers take the ``Request`` (method, path, headers) and return a
``Response``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Final

import msgspec

from nodeapp.core.errors import OrderflowError

log = logging.getLogger("orderflow.ops")

MAX_HEAD: Final = 8 * 1024  # request line + headers
READ_TIMEOUT: Final = 5.0
WRITE_TIMEOUT: Final = 5.0
LINGER_TIMEOUT: Final = 1.0
LINGER_BYTES: Final = 64 * 1024
JSON: Final = "application/json"
WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::"})

_encoder: Final = msgspec.json.Encoder()


class Response(msgspec.Struct, frozen=True):
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


class Request(msgspec.Struct, frozen=True):
    method: str
    target: str
    headers: dict[str, str]  # names in lower case; a repeated header keeps its last value

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


Handler = Callable[[Request], Awaitable[Response]]
Routes = Mapping[str, Mapping[str, Handler]]  # path -> method -> handler


def json_response(status: int, payload: object) -> Response:
    return Response(status, _encoder.encode(payload))


def error_response(status: int, detail: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, _encoder.encode({"error": detail, "status": status}), JSON, headers)


async def route(routes: Routes, request: Request) -> Response:
    """The handler's answer, or 404/405 as JSON (405 with ``Allow``)."""
    path = request.target.split("?", 1)[0]
    methods = routes.get(path)
    if methods is None:
        return error_response(404, f"no such path: {path}")
    handler = methods.get(request.method)
    if handler is None:
        allow = (("Allow", ", ".join(methods)),)
        return error_response(405, f"{request.method} not allowed", allow)
    return await handler(request)


def _headers(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep and name.strip():
            found[name.strip().lower()] = value.strip()
    return found


async def _answer(routes: Routes, reader: asyncio.StreamReader) -> Response:
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        return error_response(431, f"request head over {MAX_HEAD} bytes")
    except asyncio.IncompleteReadError:
        return error_response(400, "incomplete request")
    except TimeoutError:
        return error_response(408, f"no complete request within {READ_TIMEOUT:g}s")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return error_response(400, "malformed request line")
    try:
        return await route(routes, Request(parts[0], parts[1], _headers(lines[1:])))
    except Exception:
        log.exception("ops request failed", extra={"event": "ops.error", "path": parts[1]})
        return error_response(500, "internal error; see the node's log")


def encode_response(response: Response) -> bytes:
    lines = [
        f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close gently: send FIN, then discard what the client still sends (an unread body, an
    oversized head) until it closes. Closing with unread input would send a TCP reset, which
    can destroy the answer before the client reads it."""
    if not writer.can_write_eof():
        return
    writer.write_eof()
    discarded = 0
    async with asyncio.timeout(LINGER_TIMEOUT):
        while discarded <= LINGER_BYTES and (chunk := await reader.read(4096)):
            discarded += len(chunk)


async def _serve_connection(
    routes: Routes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One connection, one request, one answer."""
    try:
        writer.write(encode_response(await _answer(routes, reader)))
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()
        await _linger(reader, writer)
    except (ConnectionError, TimeoutError) as exc:
        log.debug("ops client went away: %r", exc, extra={"event": "ops.client_error"})
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def advertised_url(host: str, server: asyncio.Server) -> str:
    """The URL others use: this host's name for a wildcard bind, else the address bound."""
    address = server.sockets[0].getsockname()
    name = socket.gethostname() if host in WILDCARD_HOSTS else str(address[0])
    if ":" in name:
        name = f"[{name}]"
    return f"http://{name}:{address[1]}"


@contextlib.asynccontextmanager
async def listening(host: str, port: int, routes: Routes, what: str) -> AsyncIterator[str]:
    """Serve ``routes`` on ``host:port`` (0: a free port) and yield the advertised URL.

    ``what`` names the settings in the error when the address cannot be bound.
    """
    # Connection tasks are ours, not asyncio's: closing cancels and awaits them, and a crash in
    # one is logged (Python 3.11 reports a cancelled client_connected_cb task as an error).
    connections: set[asyncio.Task[None]] = set()

    def finished(task: asyncio.Task[None]) -> None:
        connections.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("ops connection failed", exc_info=exc, extra={"event": "ops.error"})

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(_serve_connection(routes, reader, writer))
        connections.add(task)
        task.add_done_callback(finished)

    try:
        server = await asyncio.start_server(accept, host, port, limit=MAX_HEAD)
    except OSError as exc:
        raise OrderflowError(
            f"cannot listen on {what} {host}:{port}: {exc.strerror or exc}"
        ) from None
    try:
        yield advertised_url(host, server)
    finally:
        server.close()
        for task in connections:
            task.cancel()
        if connections:
            await asyncio.wait(set(connections))
        await server.wait_closed()
