"""Token checks over NATS: a node asks the api who a bearer token is.

A node's ``POST /stop`` needs a token with ``ops``, but the broker does not let the ``node`` user
read the ``tokens`` bucket (ADR 0015). The api, which follows that bucket anyway, answers
requests on ``orderflow.tokens.check`` (one queue group: one api process answers each) with
the token's principal or the reason it is refused, exactly as it would judge the token itself.
The token travels to the api over the broker, as it travels to the api over HTTP; the answer
holds no secret and no hash.

No api answering (none running, or too slow) is ``BrokerUnavailable``: the node says 503.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from nodeapp.broker.connection import ANY_NATS_ERROR, broker_errors
from nodeapp.core.errors import BrokerUnavailable, Unauthenticated
from nodeapp.security.scopes import Principal

log = logging.getLogger("orderflow.security")

CHECK_SUBJECT: Final = "orderflow.tokens.check"
QUEUE_GROUP: Final = "orderflow-api"

# The api's own judgement of a presented token (``TokenCache.verify``).
Judge = Callable[[str | None], Awaitable[Principal]]


class CheckReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Either the principal, or why the token is refused (``reason`` as ``Unauthenticated``'s,
    or ``unavailable`` when the api could not read the token either)."""

    principal: Principal | None = None
    reason: str = ""
    token_id: str | None = None


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(CheckReply)


@contextlib.asynccontextmanager
async def answering_token_checks(nc: NATS, judge: Judge) -> AsyncIterator[None]:
    """The api: answer token checks for the body of the ``async with``."""

    async def answer(msg: Msg) -> None:
        presented = msg.data.decode("utf-8", errors="replace") or None
        try:
            reply = CheckReply(principal=await judge(presented))
        except Unauthenticated as exc:
            reply = CheckReply(reason=exc.reason, token_id=exc.token_id)
        except BrokerUnavailable:
            reply = CheckReply(reason="unavailable")
        try:
            await msg.respond(_encoder.encode(reply))
        except ANY_NATS_ERROR as exc:  # the node times out and answers 503
            log.warning("token check answer lost: %s", exc, extra={"event": "token.check_lost"})

    with broker_errors("subscribing to token checks"):
        sub = await nc.subscribe(CHECK_SUBJECT, queue=QUEUE_GROUP, cb=answer)
    try:
        yield
    finally:
        with contextlib.suppress(*ANY_NATS_ERROR):  # the connection may be closing already
            await sub.unsubscribe()


async def check_token(nc: NATS, presented: str, within: float) -> Principal:
    """The node: the principal of ``presented`` as the api judges it; ``Unauthenticated``
    saying why not; ``BrokerUnavailable`` when no api answers within ``within`` seconds."""
    with broker_errors("checking a token with the api"):
        try:
            msg = await nc.request(CHECK_SUBJECT, presented.encode(), timeout=within)
        except nats.errors.NoRespondersError:
            raise BrokerUnavailable("no api answers token checks") from None
    try:
        reply = _decoder.decode(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BrokerUnavailable(f"unreadable token check answer: {exc}") from None
    if reply.principal is not None:
        return reply.principal
    if reply.reason == "unavailable" or not reply.reason:
        raise BrokerUnavailable("the api cannot read the token now")
    raise Unauthenticated(reply.reason, reply.token_id)
