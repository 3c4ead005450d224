"""The token store: create, list and revoke API tokens in the ``tokens`` bucket.

``orderflow token create|list|revoke`` and ``up`` (the first admin token) use it directly on
the broker; verification reads the same records through ``TokenCache``. Revocation keeps the
record (``revoked_at`` set) so a revoked token is told apart from an unknown one and ``token
list`` still shows it.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Final

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

from nodeapp.broker.connection import broker_errors
from nodeapp.broker.kv import latest_values
from nodeapp.core.errors import OrderflowError, TokenNotFound
from nodeapp.security.tokens import (
    StoredToken,
    TokenRecord,
    decode_token,
    encode_token,
    hash_secret,
    is_token_id,
    mint,
    token_request,
)

log = logging.getLogger("orderflow.security")

REVOKE_ATTEMPTS: Final = 3  # only revocations rewrite a record: a second try sees it revoked
_decoder: Final = msgspec.json.Decoder(StoredToken)


def utcnow() -> datetime:
    return datetime.now(UTC)


class TokenStore:
    """Tokens in one bucket; every broker failure surfaces as ``BrokerUnavailable``."""

    def __init__(self, kv: KeyValue, clock: Callable[[], datetime] = utcnow) -> None:
        self._kv = kv
        self._clock = clock

    async def create(
        self,
        name: str,
        scopes: str | Iterable[str],
        customer: str | None = None,
        ttl: float | None = None,
    ) -> tuple[TokenRecord, str]:
        """A new token: its record and its text, which is returned here and nowhere else.

        ``InvalidTokenRequest`` names every bad field (unknown scope, name, customer, ttl).
        """
        request = token_request(name, scopes, customer, ttl)
        token_id, secret, text = mint()
        now = self._clock()
        stored = StoredToken(
            token_id=token_id,
            name=request.name,
            scopes=sorted(request.scopes),
            customer_id=request.customer_id,
            created_at=now,
            expires_at=now + request.ttl if request.ttl is not None else None,
            secret_hash=hash_secret(secret),
        )
        with broker_errors("storing an API token"):
            await self._kv.create(token_id, encode_token(stored))  # never overwrites a token
        log.info(
            "API token %s created (%s)", token_id, ",".join(stored.scopes),
            extra={"event": "token.created", "token_id": token_id, "token_name": stored.name},
        )  # fmt: skip
        return stored.public(), text

    async def get(self, token_id: str) -> StoredToken | None:
        """The stored token, or None when there is none (never was, or deleted)."""
        entry = await self._entry(token_id)
        return None if entry is None else decode_token(entry[1])

    async def list(self) -> builtins.list[TokenRecord]:
        """Every token, revoked and expired ones too, oldest first."""
        stored = await latest_values(self._kv, _decoder)
        return sorted((t.public() for t in stored.values()), key=lambda t: t.created_at)

    async def revoke(self, token_id: str) -> TokenRecord:
        """Mark the token revoked (again is fine: the first ``revoked_at`` stays);
        ``TokenNotFound`` if there is no such token."""
        for _ in range(REVOKE_ATTEMPTS):
            entry = await self._entry(token_id)
            if entry is None:
                raise TokenNotFound(token_id)
            revision, value = entry
            stored = decode_token(value)
            if stored.revoked_at is not None:
                return stored.public()
            revoked = msgspec.structs.replace(stored, revoked_at=self._clock())
            try:
                with broker_errors("revoking an API token"):
                    await self._kv.update(token_id, encode_token(revoked), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # revoked meanwhile by someone else: read it again
            log.info(
                "API token %s revoked", token_id,
                extra={"event": "token.revoked", "token_id": token_id},
            )  # fmt: skip
            return revoked.public()
        raise OrderflowError(f"API token {token_id} kept changing while being revoked")

    async def _entry(self, token_id: str) -> tuple[int, bytes] | None:
        if not is_token_id(token_id):
            return None  # not a key any token has; also keeps a bad id out of the KV API
        try:
            with broker_errors("reading an API token"):
                entry = await self._kv.get(token_id)
        except nats.js.errors.KeyNotFoundError:  # also for a deleted or purged key
            return None
        if entry.revision is None or not entry.value:
            return None
        return entry.revision, entry.value
