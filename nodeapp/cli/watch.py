"""``orderflow order watch ID``: follow an order on the api's event stream until it ends.

``GET /orders/{id}/events`` pushes every revision as it is stored (Server-Sent Events), so
nothing polls and no step goes by unseen; each becomes one line (or the document, ``--json``).
When the connection drops or stalls (no keep-alive within ``STALL`` seconds) after the first
event, or the api answers 5xx, the command waits ``--interval`` seconds and reconnects with
``Last-Event-ID``: the revisions it missed come first, none twice. It exits 0 once the order
has ended, 4 when ``--timeout`` runs out first, and as every client command on other failures.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Iterator
from typing import Final
from urllib.parse import quote

import msgspec

from nodeapp.cli.apiclient import ApiClient, ApiProblem, ApiUnreachable
from nodeapp.cli.render import watch_line
from nodeapp.orders.model import Order, decode_order, encode
from nodeapp.orders.timeline import describe, newest_time

STALL: Final = 45.0  # seconds without a byte: the api sends a keep-alive comment every 15 s
EVENT: Final = "order"
NO_CONTENT: Final = 204


class TimedOut(Exception):
    """``--timeout`` ran out before the order ended; carries the last revision seen."""

    def __init__(self, seen: Order | None) -> None:
        super().__init__("watch timed out")
        self.seen = seen


class SseEvent(msgspec.Struct, frozen=True):
    """One dispatched Server-Sent Event."""

    event: str
    data: str
    id: str | None


def sse_events(lines: Iterable[str]) -> Iterator[SseEvent]:
    """The events in a ``text/event-stream``'s lines (WHATWG HTML, "event stream
    interpretation"): fields until a blank line; comments (``:``) and ``retry`` are skipped."""
    event, data, last_id = "", list[str](), None
    for line in lines:
        if not line:
            if data:
                yield SseEvent(event or "message", "\n".join(data), last_id)
            event, data = "", []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            last_id = value


def watch(api: ApiClient, args: argparse.Namespace) -> int:
    """Print each revision until the order ends; ``TimedOut`` when ``--timeout`` runs out."""
    deadline = time.monotonic() + args.timeout
    path = f"/orders/{quote(args.order_id, safe='')}/events"
    seen: Order | None = None
    while True:
        headers = {"Accept": "text/event-stream"}
        if seen is not None and seen.revision is not None:
            headers["Last-Event-ID"] = str(seen.revision)
        read_timeout = min(STALL, max(deadline - time.monotonic(), 0.05))
        try:
            with api.stream(path, headers, read_timeout) as response:
                if response.status_code == NO_CONTENT:  # ended at or before our last event
                    return 0
                for order in _orders(response.iter_lines()):
                    _show(order, seen, args.json)
                    seen = order
                    if order.terminal:
                        return 0
        except (ApiUnreachable, ApiProblem) as exc:
            if isinstance(exc, ApiProblem) and exc.status < 500:
                raise  # a refusal: fail as every command does
            if seen is None and time.monotonic() < deadline:
                raise  # nothing followed yet: the api is not there
        if time.monotonic() >= deadline:
            raise TimedOut(seen)
        time.sleep(args.interval)  # the stream ended early (an api stopping) or broke


def _orders(lines: Iterable[str]) -> Iterator[Order]:
    for event in sse_events(lines):
        if event.event != EVENT:
            continue
        try:
            yield decode_order(event.data.encode())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ApiProblem(200, f"unexpected event from the api: {exc}", []) from None


def _show(order: Order, before: Order | None, as_json: bool) -> None:
    if as_json:
        print(encode(order).decode(), flush=True)
        return
    transition = describe(before, order) if before else f"{order.status} ({order.current_step})"
    print(watch_line(order, newest_time(order), transition), flush=True)
