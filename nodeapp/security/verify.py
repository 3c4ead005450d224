"""Presented token -> ``Principal``, or ``Unauthenticated`` saying why (never echoing it).

The order of checks leaks nothing: ``revoked`` and ``expired`` are told only to a caller who
holds the right secret, so knowing a token id (it is public) reveals nothing about its state.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from datetime import datetime

from nodeapp.core.errors import Unauthenticated
from nodeapp.security.scopes import ADMIN_PRINCIPAL, ADMIN_TOKEN_ID, Principal
from nodeapp.security.tokens import StoredToken, hash_secret, parse_token

# Finds the stored token for an id; None when there is none.
Lookup = Callable[[str], Awaitable[StoredToken | None]]


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


class AdminToken:
    """``ORDERFLOW_ADMIN_TOKEN``: compared in constant time, by digest so that not even its
    length shows in the timing; only the digest is kept in memory."""

    __slots__ = ("_digest",)

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("an empty admin token would admit anyone")
        self._digest = _digest(token)

    def matches(self, presented: str) -> bool:
        return hmac.compare_digest(_digest(presented), self._digest)

    def __repr__(self) -> str:
        return "AdminToken(***)"


def admin_token(configured: str) -> AdminToken | None:
    """The settings' admin token, or None when unset (no bootstrap admin)."""
    return AdminToken(configured) if configured else None


def check_stored(
    stored: StoredToken | None, token_id: str, secret: str, now: datetime
) -> Principal:
    """The principal of a stored token the secret matches, if neither revoked nor expired."""
    if stored is None or not hmac.compare_digest(hash_secret(secret), stored.secret_hash):
        raise Unauthenticated("unknown", token_id)
    return in_force(stored, token_id, now)


def in_force(stored: StoredToken | None, token_id: str, now: datetime) -> Principal:
    """The principal of a token already verified once (a console session keeps its id, not its
    text), if it is still stored and neither revoked nor expired."""
    if stored is None:
        raise Unauthenticated("unknown", token_id)
    if stored.revoked_at is not None:
        raise Unauthenticated("revoked", token_id)
    if stored.expired(now):
        raise Unauthenticated("expired", token_id)
    return stored.principal()


async def verify(
    presented: str | None, lookup: Lookup, admin: AdminToken | None, now: datetime
) -> Principal:
    """Who ``presented`` (the bearer token, None when the request had none) acts as.

    ``Unauthenticated`` with ``reason`` missing, malformed, unknown, expired or revoked;
    ``BrokerUnavailable`` when the record cannot be read.
    """
    if not presented:
        raise Unauthenticated("missing")
    if admin is not None and admin.matches(presented):
        return ADMIN_PRINCIPAL
    token_id, secret = parse_token(presented)
    return check_stored(await lookup(token_id), token_id, secret, now)


async def standing(
    token_id: str | None, lookup: Lookup, admin: AdminToken | None, now: datetime
) -> Principal:
    """Who the token with ``token_id`` acts as now; ``Unauthenticated`` ``missing`` (no id),
    ``unknown``, ``revoked`` or ``expired``. Only for an id a verified token gave: the id
    alone is public, so it must never stand for the token a caller presents."""
    if not token_id:
        raise Unauthenticated("missing")
    if token_id == ADMIN_TOKEN_ID:
        if admin is None:  # the bootstrap admin was turned off
            raise Unauthenticated("unknown", token_id)
        return ADMIN_PRINCIPAL
    return in_force(await lookup(token_id), token_id, now)


def bearer_token(header: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (the api and a node's ops listener both
    read it here); None without the header; ``Unauthenticated("malformed")`` for another
    scheme or an empty token."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("malformed")
    return token.strip()
