"""``ORDERS_DLQ`` from the operator's side: list the dead letters, replay one order's.

Listing reads messages by sequence, newest first, a page at a time (a replay deletes entries, so
sequences have gaps). One order's entry is found by subject (``orders.dlq.<id>``, last by subject).

A replay clears the document's ``dead_letter`` mark and nothing else, so the order resumes where
it stood; then it publishes a fresh work message and removes the order's entries up to the one
replayed. Each write is safe to repeat (the publish is deduplicated on the entry's sequence), so
a replay that failed half-way is simply asked for again; one that stopped after clearing the mark
is also re-driven by the reconciler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Final

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from nodeapp.broker.connection import broker_errors
from nodeapp.broker.resources import DLQ_PREFIX, DLQ_STREAM, WORK_SUBJECT
from nodeapp.cluster.dead_letters import (
    DELIVERIES_HEADER,
    NO_MESSAGE_FOUND,
    ORDER_HEADER,
    REASON_HEADER,
    SEQUENCE_HEADER,
)
from nodeapp.core.errors import DeadLetterNotFound, NotReplayable, OrderNotFound, ResourceMissing
from nodeapp.core.tracing import inject_headers, publish_span
from nodeapp.orders.model import Order, WorkMessage, encode, is_order_id
from nodeapp.orders.store import OrderStore

log = logging.getLogger("orderflow.dlq")

MAX_PAGE: Final = 500
BATCH: Final = 64  # sequences read concurrently while walking back over gaps
MAX_PROBES: Final = 5_000  # per page: past that, the page ends early with a cursor
STREAM_NOT_FOUND: Final = 10059


class DeadLetter(msgspec.Struct):
    """One entry of ``ORDERS_DLQ``: ``seq`` is its own sequence, ``stream_seq`` the original's
    in ``ORDERS``, ``time`` when it was dead-lettered."""

    seq: int
    order_id: str | None
    reason: str | None
    deliveries: int | None
    stream_seq: int | None
    time: datetime | None
    subject: str


class DeadLetterPage(msgspec.Struct):
    """Newest first. ``next_before`` is the ``?before=`` of the next (older) page, null at the
    end; ``total`` counts every entry in the stream."""

    dead_letters: list[DeadLetter]
    total: int
    next_before: int | None


class Replayed(msgspec.Struct):
    """Answer to a replay: the order as it resumes, and the dead letter that was removed."""

    order_id: str
    status: str
    current_step: str
    dead_letter_seq: int


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _entry(raw: RawStreamMsg) -> DeadLetter:
    headers: dict[str, str] = raw.headers or {}
    return DeadLetter(
        seq=int(raw.seq or 0),
        order_id=headers.get(ORDER_HEADER),
        reason=headers.get(REASON_HEADER),
        deliveries=_int(headers.get(DELIVERIES_HEADER)),
        stream_seq=_int(headers.get(SEQUENCE_HEADER)),
        time=raw.time,
        subject=str(raw.subject or ""),
    )


@contextlib.contextmanager
def _reading(what: str) -> Iterator[None]:
    """``broker_errors``, plus a missing ``ORDERS_DLQ`` told as such (503 until recreated)."""
    with broker_errors(what):
        try:
            yield
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == STREAM_NOT_FOUND:
                raise ResourceMissing(f"stream {DLQ_STREAM}") from None
            raise


async def _entry_at(js: JetStreamContext, seq: int) -> DeadLetter | None:
    try:
        return _entry(await js.get_msg(DLQ_STREAM, seq=seq))
    except nats.js.errors.NotFoundError as exc:
        if exc.err_code != NO_MESSAGE_FOUND:
            raise
        return None  # replayed (deleted): a gap


async def list_dead_letters(
    js: JetStreamContext, limit: int = 50, before: int | None = None
) -> DeadLetterPage:
    """Up to ``limit`` entries with a sequence below ``before``, newest first."""
    with _reading("reading ORDERS_DLQ"):
        state = (await js.stream_info(DLQ_STREAM)).state
        seq = state.last_seq if before is None else min(before - 1, state.last_seq)
        first = max(state.first_seq, 1)
        found: list[DeadLetter] = []
        probes = 0
        while seq >= first and len(found) < limit and probes < MAX_PROBES:
            low = max(first, seq - BATCH + 1)
            batch = await asyncio.gather(*(_entry_at(js, s) for s in range(seq, low - 1, -1)))
            probes += seq - low + 1
            for entry in batch:
                if entry is not None and len(found) < limit:
                    found.append(entry)
            seq = low - 1
    # Where the next page starts: after the last entry shown, or where the walk stopped.
    resume = found[-1].seq if len(found) == limit else seq + 1
    return DeadLetterPage(found, state.messages, resume if resume > first else None)


async def find_dead_letter(js: JetStreamContext, order_id: str) -> DeadLetter:
    """The order's newest entry; ``DeadLetterNotFound`` if it has none."""
    if not is_order_id(order_id):
        raise DeadLetterNotFound(order_id)  # could not have been stored under its own subject
    with _reading(f"reading the dead letter of {order_id}"):
        try:
            raw = await js.get_msg(DLQ_STREAM, subject=DLQ_PREFIX + order_id)
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code != NO_MESSAGE_FOUND:
                raise
            raise DeadLetterNotFound(order_id) from None
    return _entry(raw)


async def replay(js: JetStreamContext, store: OrderStore, order_id: str) -> Replayed:
    """Resume a dead-lettered order from where it stood; see the module's docstring."""
    entry = await find_dead_letter(js, order_id)
    try:
        order = await store.modify(order_id, _clear_mark)
    except OrderNotFound:
        raise NotReplayable(order_id, "it has no order document") from None
    if order.terminal:
        raise NotReplayable(order_id, f"it is already {order.status}")
    message_id = f"{order_id}:replay:{entry.seq}"
    with publish_span(WORK_SUBJECT, order_id):
        headers = inject_headers({"Nats-Msg-Id": message_id})
        with broker_errors(f"publishing the replay of {order_id}"):
            await js.publish(WORK_SUBJECT, encode(WorkMessage(order_id)), headers=headers)
    with _reading(f"removing the dead letter of {order_id}"):
        # Entries up to the replayed one: a newer one would be a new dead letter, kept.
        await js.purge_stream(DLQ_STREAM, subject=DLQ_PREFIX + order_id, seq=entry.seq + 1)
    log.warning(
        "dead letter replayed",
        extra={
            "event": "order.replayed",
            "order_id": order_id,
            "dead_letter_seq": entry.seq,
            "status": order.status,
        },
    )
    return Replayed(order_id, order.status, order.current_step, entry.seq)


def _clear_mark(order: Order) -> bool:
    if order.terminal or order.dead_letter is None:
        return False
    order.dead_letter = None
    return True
