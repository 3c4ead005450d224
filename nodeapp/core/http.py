"""A small keep-alive HTTP/1.1 client for orderflow's calls to its own HTTP services.

Why not httpx: on the two shared cores httpx costs ~0.6 ms of CPU a request and was a quarter
of a node's samples in the shop's benchmark; asyncio streams over a pool of idle connections
cost ~0.07 ms (aiohttp ~0.25 ms, and another dependency; benchmarks/RESULTS.md, ADR 0018).
The node's payment client and the gateway's HTTP callback use it; the operator's CLI keeps
httpx, where a request's CPU does not matter.

It does what those calls need and no more: http or https, ``user:password@`` in the URL sent as
Basic auth, a bytes body, answers framed by Content-Length, chunked or the connection's end,
one deadline per request (connecting and waiting for a free connection included), at most
``max_connections`` per origin. Idle connections are reused until the server closes them or
they have been idle ``KEEP_IDLE`` seconds (below uvicorn's 5 s). A request sent on a reused
connection that the server closed before answering is sent once more on a new one: callers
send only requests that are safe to repeat (every gateway call is idempotent). No redirects,
cookies, proxies or HTTP/2. ``HttpFailed`` says what went wrong, never the URL (it may carry
credentials).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Final, NamedTuple
from urllib.parse import SplitResult, unquote, urlsplit

KEEP_IDLE: Final = 4.0  # seconds an idle connection is kept for reuse
MAX_HEADERS: Final = 100  # header lines read before an answer is refused as malformed
MAX_BODY: Final = 1 << 20  # bytes of an answer's body read at most
DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class HttpFailed(Exception):
    """No usable answer: refused, reset, closed, malformed, too large or past the deadline."""


class _ClosedEarly(Exception):
    """The server closed (or reset) the connection before the first byte of an answer."""


class HttpAnswer(NamedTuple):
    status: int
    body: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def reusable(self, now: float) -> bool:
        return (
            now - self.idle_since < KEEP_IDLE
            and not self.writer.is_closing()
            and not self.reader.at_eof()
        )

    async def exchange(self, request: bytes, method: str, max_body: int) -> tuple[int, bytes, bool]:
        """Send ``request``; the answer's status, body and whether the connection stays open."""
        reader = self.reader
        try:
            self.writer.write(request)
            status_line = await reader.readline()
        except ConnectionError:  # reset before a byte of the answer: as if closed
            raise _ClosedEarly from None
        if not status_line:
            raise _ClosedEarly
        head = await _head(reader, status_line)
        while 100 <= head.status < 200:  # an interim answer (100 Continue): the real one follows
            head = await _head(reader, await reader.readline())
        if method == "HEAD" or head.status in (204, 304):
            return head.status, b"", head.keep
        if head.chunked:
            return head.status, await _chunks(reader, max_body), head.keep
        if head.length is not None:
            if head.length > max_body:
                raise HttpFailed(f"answer body of {head.length} bytes is too large")
            return head.status, await reader.readexactly(head.length), head.keep
        return head.status, await _to_end(reader, max_body), False  # no framing: until closed

    def close(self) -> None:
        self.writer.close()


class _Head(NamedTuple):
    status: int
    keep: bool  # whether the connection stays open after this answer
    length: int | None
    chunked: bool


async def _head(reader: asyncio.StreamReader, status_line: bytes) -> _Head:
    """An answer's status line (read already) and the framing its headers announce."""
    version, _, rest = status_line.partition(b" ")
    if not version.startswith(b"HTTP/1."):
        raise HttpFailed("not an HTTP/1.x answer")
    keep, length, chunked = version != b"HTTP/1.0", None, False
    for _ in range(MAX_HEADERS):
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return _Head(int(rest[:3]), keep, length, chunked)
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value.strip().lower().endswith(b"chunked")
        elif name == b"connection":
            keep = value.strip().lower() != b"close"
    raise HttpFailed("too many header lines")


async def _to_end(reader: asyncio.StreamReader, max_body: int) -> bytes:
    body = bytearray()
    while chunk := await reader.read(65536):
        body += chunk
        if len(body) > max_body:
            raise HttpFailed("answer body is too large")
    return bytes(body)


async def _chunks(reader: asyncio.StreamReader, max_body: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size = int((await reader.readline()).split(b";", 1)[0], 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers: not used
            return b"".join(parts)
        total += size
        if total > max_body:
            raise HttpFailed("answer body is too large")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)  # the CRLF after each chunk


class _Origin:
    """The idle connections to one scheme://host:port and what every request to it starts with."""

    def __init__(self, url: SplitResult, max_connections: int) -> None:
        if url.scheme not in DEFAULT_PORTS or not url.hostname:
            raise HttpFailed("only http:// and https:// URLs with a host are supported")
        self.host = url.hostname
        self.port = url.port or DEFAULT_PORTS[url.scheme]
        self.tls = ssl.create_default_context() if url.scheme == "https" else None
        host = f"[{self.host}]" if ":" in self.host else self.host
        authority = host if url.port is None else f"{host}:{url.port}"
        self.fixed = f"Host: {authority}\r\n"
        if url.username is not None:
            secret = f"{unquote(url.username)}:{unquote(url.password or '')}".encode()
            self.fixed += f"Authorization: Basic {base64.b64encode(secret).decode()}\r\n"
        self.idle: list[_Connection] = []
        self.slots = asyncio.Semaphore(max_connections)

    def take(self) -> _Connection | None:
        """The most recently used idle connection still fit for a request, if any."""
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if conn.reusable(now):
                return conn
            conn.close()
        return None

    async def connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.tls)
        return _Connection(reader, writer)

    def give_back(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self.idle.append(conn)


class HttpClient:
    """Pooled keep-alive connections per origin; ``async with`` it (one per component).

    ``timeout`` bounds each request from its call to its answer's last byte.
    """

    def __init__(
        self, timeout: float, *, max_connections: int = 100, max_body: int = MAX_BODY
    ) -> None:
        self.timeout = timeout
        self.max_connections = max_connections
        self.max_body = max_body
        self._origins: dict[tuple[str, str], _Origin] = {}
        self._closed = False

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the idle connections; one in use is closed when its request ends."""
        self._closed = True
        conns = [conn for origin in self._origins.values() for conn in origin.idle]
        for origin in self._origins.values():
            origin.idle.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(OSError):  # reset by the server: closed all the same
                await conn.writer.wait_closed()

    async def request(
        self,
        method: str,
        url: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> HttpAnswer:
        """Send one request and read its answer; ``HttpFailed`` when there is none."""
        if self._closed:
            raise RuntimeError("HttpClient used after it was closed")
        parts = urlsplit(url)
        origin = self._origin(parts)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = f"{method} {target} HTTP/1.1\r\n{origin.fixed}Content-Length: {len(body)}\r\n"
        given = method + target
        if headers:
            given += "".join(headers) + "".join(headers.values())
            head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        if "\r" in given or "\n" in given:
            raise ValueError("a line break in an HTTP request line or header")
        request = (head + "\r\n").encode() + body
        try:
            async with asyncio.timeout(self.timeout), origin.slots:
                return await self._send(origin, request, method)
        except TimeoutError:
            raise HttpFailed(f"no answer within {self.timeout:g}s") from None
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            raise HttpFailed(type(exc).__name__) from None

    async def _send(self, origin: _Origin, request: bytes, method: str) -> HttpAnswer:
        """On a reused connection, then (if it was closed under us) on a new one."""
        conn = origin.take()
        reused = conn is not None
        while True:
            if conn is None:
                conn = await origin.connect()
            try:
                status, body, keep = await conn.exchange(request, method, self.max_body)
            except _ClosedEarly:
                conn.close()
                if not reused:
                    raise HttpFailed("the server closed the connection without answering") from None
                conn, reused = None, False
                continue
            except BaseException:  # a cancellation included: the connection's state is unknown
                conn.close()
                raise
            if keep and not self._closed:
                origin.give_back(conn)
            else:
                conn.close()
            return HttpAnswer(status, body)

    def _origin(self, parts: SplitResult) -> _Origin:
        key = (parts.scheme, parts.netloc)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(parts, self.max_connections)
        return origin
