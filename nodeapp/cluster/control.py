"""Control requests to one node over NATS request/reply, so nobody needs to know its address.

The api (``POST /cluster/nodes/{id}/drain``) sends an empty request to ``drain_subject(id)``;
the node answers with a ``DrainReply``. Node ids appear as one subject token and as a KV key in
``nodes``, so only characters valid in both are allowed.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from nodeapp.broker.connection import broker_errors
from nodeapp.core.errors import NodeUnresponsive

CONTROL_PREFIX: Final = "orderflow.node"
NODE_ID_PATTERN: Final = r"^[A-Za-z0-9_-]{1,128}$"
_NODE_ID: Final = re.compile(NODE_ID_PATTERN)


def is_node_id(node_id: str) -> bool:
    """True when ``node_id`` can be a KV key and a single subject token (no ``.``, ``*``, ``>``)."""
    return _NODE_ID.fullmatch(node_id) is not None


def drain_subject(node_id: str) -> str:
    """The subject a node answers drain requests on: ``orderflow.node.<node_id>.drain``."""
    if not is_node_id(node_id):
        raise ValueError(f"not a node id: {node_id!r} (allowed: {NODE_ID_PATTERN})")
    return f"{CONTROL_PREFIX}.{node_id}.drain"


class DrainReply(msgspec.Struct):
    """The node's answer to a drain request; unknown fields are ignored (rolling deploys)."""

    node_id: str
    state: str


_reply_decoder: Final = msgspec.json.Decoder(DrainReply)


def decode_drain_reply(data: bytes) -> DrainReply:
    return _reply_decoder.decode(data)


SERVICE_ERROR_HEADER: Final = "Nats-Service-Error"  # set by nats.micro when a handler fails


async def request_drain(nc: NATS, node_id: str, within: float) -> DrainReply:
    """Ask the node to drain and return its answer.

    ``NodeUnresponsive`` says why there is none: 503 nobody listens on the subject, 504 no
    answer within ``within`` seconds, 502 an error or an unreadable answer. A broker outage is
    ``BrokerUnavailable``. Whether the node exists at all is the caller's question (the registry).
    """
    subject = drain_subject(node_id)
    with broker_errors(f"asking node {node_id} to drain"):
        try:
            msg = await nc.request(subject, b"", timeout=within)
        except nats.errors.NoRespondersError:
            raise NodeUnresponsive(node_id, "does not answer drain requests", 503) from None
        except nats.errors.TimeoutError:
            raise NodeUnresponsive(node_id, f"did not answer within {within:g}s", 504) from None
    error = (msg.headers or {}).get(SERVICE_ERROR_HEADER)
    if error:
        raise NodeUnresponsive(node_id, f"refused to drain: {error}", 502)
    try:
        return decode_drain_reply(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise NodeUnresponsive(node_id, f"sent an unreadable drain reply: {exc}", 502) from None
