"""JetStream's pull protocol, spoken directly over an inbox of ours.

It is public: a request ``{"batch": n, "expires": ns}`` goes to
``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`` with a reply subject of ours; the server
delivers up to ``n`` messages there (each with a ``$JS.ACK.…`` reply subject carrying its
metadata) and, unless the batch filled, ends the request with a status message: 404 or 408 when
nothing more came before it expired, 409 on a leadership change or a deleted consumer, 503 when
nobody serves the consumer. Status 100 is an idle heartbeat and ends nothing.

Two readers speak it, each for what nats-py's ``fetch`` does not give: the node's
``worker.pulls.WorkPulls`` (each delivery handed on as it arrives; knowing when no request is
open, for a safe drain, ADR 0004) and the read model's ``readmodel.follower.Follower`` (one
batch asked at a time, so the broker, not the api, holds the backlog, ADR 0021).
"""

from __future__ import annotations

from typing import Final

import msgspec
from nats.aio.msg import Msg
from nats.js.api import DEFAULT_PREFIX, Header

ACK_PREFIX: Final = "$JS.ACK."  # a delivery's reply subject: where its ack goes
HEARTBEAT_STATUS: Final = "100"
EXPECTED_ENDS: Final = frozenset({"404", "408"})  # nothing (more) to deliver; the request expired
# Past its expiry, a request whose end never reached us (the connection dropped) counts as
# ended: the server has let it go by then.
END_GRACE: Final = 1.0


def pull_subject(stream: str, consumer: str) -> str:
    """Where a pull request for ``consumer`` of ``stream`` goes."""
    return f"{DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{consumer}"


def pull_request(batch: int, expires: float) -> bytes:
    """The body asking for up to ``batch`` messages over the next ``expires`` seconds."""
    return msgspec.json.encode({"batch": batch, "expires": int(expires * 1e9)})


def status_of(msg: Msg) -> str | None:
    """The status of a message from the server about a request (None for a delivery)."""
    return msg.headers.get(Header.STATUS) if msg.headers else None


def is_delivery(msg: Msg) -> bool:
    """A stream message delivered by a consumer (not a status, not a stray message)."""
    return (msg.reply or "").startswith(ACK_PREFIX)


def description_of(msg: Msg) -> str:
    """A status message's description, on one line."""
    return " ".join((msg.headers or {}).get(Header.DESCRIPTION, "").split())
