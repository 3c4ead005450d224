"""The orders bucket's stream ``KV_orders`` as the projector sees it: its names, and how far a
checkpoint is behind it (``follower`` reads it).

``kv.watch`` cannot resume from a revision, so the projector reads the stream itself; a KV
revision is its stream sequence, and ``$KV.orders.<order id>`` its subject.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from nodeapp.broker.connection import broker_errors
from nodeapp.broker.resources import ORDERS_BUCKET
from nodeapp.orders.model import utcnow

KV_STREAM: Final = f"KV_{ORDERS_BUCKET}"
KV_PREFIX: Final = f"$KV.{ORDERS_BUCKET}."
KV_SUBJECTS: Final = f"{KV_PREFIX}>"


class Lag(msgspec.Struct, frozen=True):
    """How far the read model is behind the bucket: ``messages`` is the stream's last sequence
    minus the checkpoint (0 when every later revision is gone), ``seconds`` the age of the
    oldest revision not applied yet (0 when caught up)."""

    messages: int
    seconds: float
    checkpoint: int
    stream_last_seq: int


async def stream_identity(js: JetStreamContext) -> tuple[int, str | None]:
    """The stream's last sequence and its creation time (a recreated stream starts at 1)."""
    with broker_errors("reading the orders bucket's stream"):
        info = await js.stream_info(KV_STREAM)
    last: int = info.state.last_seq
    return last, None if info.created is None else str(info.created)


class Behind(NamedTuple):
    """Where the stream stands against a checkpoint."""

    last_seq: int
    created: str | None  # the stream's creation time: a recreated stream starts again at 1
    first: RawStreamMsg | None  # the oldest message after the checkpoint, None if none


async def behind(js: JetStreamContext, checkpoint: int) -> Behind:
    last, created = await stream_identity(js)
    if last <= checkpoint:
        return Behind(last, created, None)
    with broker_errors("reading the orders bucket's stream"):
        try:
            first = await js.get_msg(KV_STREAM, seq=checkpoint + 1, subject=KV_SUBJECTS, next=True)
        except nats.js.errors.NotFoundError:
            first = None
    return Behind(last, created, first)


async def measure_lag(js: JetStreamContext, checkpoint: int) -> Lag:
    last, _, first = await behind(js, checkpoint)
    if first is None:
        return Lag(0, 0.0, checkpoint, last)
    age = (utcnow() - first.time).total_seconds() if first.time else 0.0
    return Lag(last - checkpoint, max(0.0, age), checkpoint, last)
