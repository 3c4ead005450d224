"""Reading an order's Server-Sent Events stream (``GET /orders/{id}/events``) over real HTTP.

httpx's in-process ``ASGITransport`` hands a response over only once the app has finished it,
so a stream that is still open needs a served api (``serve_api``, ``ApiProcess``). Events are
parsed by the CLI's own parser (``nodeapp.cli.watch.sse_events``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from nodeapp.cli.watch import SseEvent, sse_events


def events_path(order_id: str) -> str:
    return f"/orders/{order_id}/events"


@contextlib.asynccontextmanager
async def order_stream(
    http: httpx.AsyncClient, order_id: str, last_event_id: int | str | None = None
) -> AsyncIterator[httpx.Response]:
    """The open stream of ``order_id`` (resuming after ``last_event_id``); closing it is the
    client going away."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    async with http.stream("GET", events_path(order_id), headers=headers) as response:
        yield response


async def events(response: httpx.Response) -> AsyncIterator[SseEvent]:
    """Each event as it arrives, until the stream ends (comments skipped)."""
    block: list[str] = []
    async for line in response.aiter_lines():
        block.append(line)
        if not line:
            for event in sse_events(block):
                yield event
            block = []


async def take(stream: AsyncIterator[SseEvent], count: int) -> list[SseEvent]:
    """The next ``count`` events (fewer only if the stream ends)."""
    out: list[SseEvent] = []
    async for event in stream:
        out.append(event)
        if len(out) == count:
            break
    return out


def revision_ids(received: list[SseEvent]) -> list[int]:
    return [int(e.id or 0) for e in received]


def documents(received: list[SseEvent]) -> list[Any]:
    return [json.loads(e.data) for e in received]
