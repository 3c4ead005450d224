"""``nodeapp.core.http``: the keep-alive client the node's payment calls and the gateway's HTTP
callbacks use, against a real TCP server on loopback whose every answer the test scripts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Final

import pytest

from nodeapp.core.http import HttpClient, HttpFailed
from nodeapp.local.natsserver import free_port

OK: Final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
Answer = Callable[[bytes], bytes | None]  # the request's head -> the raw answer (None: close)


class Server:
    """A loopback HTTP/1.1 server: ``answer`` gives the raw bytes for each request (None closes
    the connection without answering; ``close_after`` closes it after each answer); it records
    every request head and counts connections."""

    def __init__(self, answer: Answer = lambda _head: OK, *, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.connections = 0
        self.open: set[asyncio.StreamWriter] = set()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open.add(writer)
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")),
                    0,
                )  # fmt: skip
                self.heads.append(head)
                self.bodies.append(await reader.readexactly(length))
                answer = self.answer(head)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed its end
        finally:
            self.open.discard(writer)
            writer.close()

    def close_idle(self) -> None:
        """Close every connection from the server's side, as a keep-alive timeout does."""
        for writer in list(self.open):
            writer.close()


@contextlib.asynccontextmanager
async def serving(server: Server) -> AsyncIterator[Server]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", server.port)
    try:
        yield server
    finally:
        server.close_idle()
        listener.close()
        await listener.wait_closed()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with serving(Server()) as running:
        yield running


async def test_requests_share_one_kept_connection(server: Server) -> None:
    async with HttpClient(timeout=5) as client:
        for n in range(3):
            answer = await client.request(
                "POST", f"{server.url}/sim/payments/authorize?n={n}", b'{"a":1}',
                {"Content-Type": "application/json"},
            )  # fmt: skip
            assert (answer.status, answer.body, answer.is_success) == (200, b"ok", True)
    assert server.connections == 1
    first = server.heads[0].decode()
    assert first.startswith("POST /sim/payments/authorize?n=0 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n" in first
    assert "Content-Length: 7\r\n" in first
    assert "Content-Type: application/json\r\n" in first
    assert server.bodies == [b'{"a":1}'] * 3


async def test_credentials_in_the_url_go_as_basic_auth(server: Server) -> None:
    async with HttpClient(timeout=5) as client:
        await client.request("GET", f"http://gw%40x:s3cret@127.0.0.1:{server.port}/p")
    expected = base64.b64encode(b"gw@x:s3cret").decode()
    assert f"Authorization: Basic {expected}\r\n" in server.heads[0].decode()


@pytest.mark.parametrize(
    ("raw", "body", "kept"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
         b"abcde", True),
        (b"HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx", b"x", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\ny", b"y", False),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", b"", True),
    ],
)  # fmt: skip
async def test_answers_framed_every_way(raw: bytes, body: bytes, kept: bool) -> None:
    async with serving(Server(lambda _head: raw)) as server, HttpClient(timeout=5) as client:
        for _ in range(2):
            answer = await client.request("POST", f"{server.url}/x", b"{}")
            assert answer.body == body
        assert server.connections == (1 if kept else 2)


async def test_an_answer_ending_with_its_connection() -> None:
    raw = b"HTTP/1.1 500 Oops\r\n\r\npartial body"  # no length: the body ends with the connection
    async with (
        serving(Server(lambda _head: raw, close_after=True)) as server,
        HttpClient(timeout=5) as client,
    ):
        answer = await client.request("GET", f"{server.url}/x")
    assert (answer.status, answer.body, answer.is_success) == (500, b"partial body", False)


async def test_a_connection_the_server_closed_while_idle_is_replaced(server: Server) -> None:
    async with HttpClient(timeout=5) as client:
        await client.request("GET", f"{server.url}/a")
        server.close_idle()  # seen by the client before its next request, or during it
        assert (await client.request("GET", f"{server.url}/b")).status == 200
    assert server.connections == 2


async def test_a_kept_connection_closed_unnoticed_is_retried_once() -> None:
    """The server drops the request on a reused connection: sent again on a new one."""
    served: list[int] = []

    def drop_second(_head: bytes) -> bytes | None:
        served.append(1)
        return None if len(served) == 2 else OK

    async with serving(Server(drop_second)) as server, HttpClient(timeout=5) as client:
        await client.request("GET", f"{server.url}/a")
        assert (await client.request("GET", f"{server.url}/b")).status == 200
        assert (server.connections, len(server.heads)) == (2, 3)


async def test_a_new_connection_closed_without_an_answer_fails() -> None:
    async with serving(Server(lambda _head: None)) as server, HttpClient(timeout=5) as client:
        with pytest.raises(HttpFailed, match="without answering"):
            await client.request("GET", f"{server.url}/a")
        assert len(server.heads) == 1  # not sent twice


async def test_no_answer_in_time_fails_and_never_names_the_url() -> None:
    async with serving(Server(lambda _head: b"")) as server:  # reads, never answers
        url = f"http://user:pw@127.0.0.1:{server.port}/x"
        async with HttpClient(timeout=0.2) as client:
            with pytest.raises(HttpFailed, match=r"no answer within 0\.2s") as slow:
                await client.request("GET", url)
    nowhere = f"http://user:pw@127.0.0.1:{free_port()}/x"
    async with HttpClient(timeout=5) as client:
        with pytest.raises(HttpFailed) as refused:
            await client.request("GET", nowhere)
    for caught in (slow, refused):
        assert "127.0.0.1" not in str(caught.value)
        assert "pw" not in str(caught.value)


async def test_bad_requests_and_oversized_answers_are_refused(server: Server) -> None:
    async with HttpClient(timeout=5, max_body=1) as client:
        with pytest.raises(ValueError, match="line break"):
            await client.request("GET", f"{server.url}/x", headers={"X": "a\r\nInjected: 1"})
        with pytest.raises(HttpFailed, match="too large"):
            await client.request("GET", f"{server.url}/x")
        with pytest.raises(HttpFailed, match="only http"):
            await client.request("GET", "ftp://127.0.0.1/x")
    assert len(server.heads) == 1  # only the oversized one was sent


async def test_at_most_max_connections_per_origin(server: Server) -> None:
    async with HttpClient(timeout=5, max_connections=2) as client:
        answers = await asyncio.gather(
            *(client.request("GET", f"{server.url}/{n}") for n in range(8))
        )
    assert [a.status for a in answers] == [200] * 8
    assert server.connections <= 2
