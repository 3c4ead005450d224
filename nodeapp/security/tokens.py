"""What an API token is: its text, its hash, and the record kept in the ``tokens`` bucket.

A token reads ``of_<id>_<secret>``: the prefix makes a leaked token recognisable (secret
scanners, a reviewer's eye), the id (16 hex digits, public: logs, ``token list``, ``revoke``)
finds the record without scanning, and the secret is ``secrets.token_urlsafe(32)``: 256 random
bits. The token text is shown once, at creation; the bucket keeps only the SHA-256 of the secret.

Why a plain SHA-256 and not bcrypt or argon2: slow, salted hashes exist to protect low-entropy
passwords from guessing. A 256-bit random secret cannot be guessed whatever the hash costs, and
every secret is unique, so a salt adds nothing either; a fast hash keeps verification cheap on
every request (and on every cache miss).
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Final

import msgspec

from nodeapp.core.errors import FieldError, InvalidTokenRequest, Unauthenticated
from nodeapp.security.scopes import Principal, parse_scopes

TOKEN_PREFIX: Final = "of_"
ID_BYTES: Final = 8  # 16 hex digits: collisions are refused by the store's create
SECRET_BYTES: Final = 32  # 256 bits: 43 characters of the URL-safe alphabet
MAX_TOKEN_LENGTH: Final = 256  # longer is not one of ours; refused before any hashing
_TOKEN: Final = re.compile(r"^of_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_TOKEN_ID: Final = re.compile(r"^[0-9a-f]{16}$")
# Same alphabet as order and product ids (DESIGN: 1-64 of ``A-Z a-z 0-9 . _ : -``).
_CUSTOMER: Final = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
MAX_NAME: Final = 64
MAX_TTL: Final = 10 * 366 * 86400.0  # ten years: longer is a mistake (or "never": omit it)


class TokenRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A token as ``token list`` shows it; the public fields of what the bucket stores."""

    token_id: str
    name: str
    scopes: list[str]  # sorted
    customer_id: str | None = None
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def principal(self) -> Principal:
        return Principal(
            token_id=self.token_id,
            name=self.name,
            scopes=frozenset(self.scopes),
            customer_id=self.customer_id,
        )

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at


class StoredToken(TokenRecord, frozen=True, kw_only=True):
    """The bucket's value under the token id: the record and the SHA-256 (hex) of the secret."""

    secret_hash: str

    def public(self) -> TokenRecord:
        fields = {f: getattr(self, f) for f in TokenRecord.__struct_fields__}
        return TokenRecord(**fields)


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(StoredToken)


def encode_token(token: StoredToken) -> bytes:
    return _encoder.encode(token)


def decode_token(data: bytes) -> StoredToken:
    return _decoder.decode(data)


def hash_secret(secret: str) -> str:
    """SHA-256 of the secret part, hex; see the module docstring for why that is enough."""
    return hashlib.sha256(secret.encode()).hexdigest()


def mint() -> tuple[str, str, str]:
    """A fresh ``(token_id, secret, token_text)``."""
    token_id = secrets.token_hex(ID_BYTES)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return token_id, secret, f"{TOKEN_PREFIX}{token_id}_{secret}"


def parse_token(text: str) -> tuple[str, str]:
    """``(token_id, secret)`` of a presented token; ``Unauthenticated("malformed")`` otherwise."""
    match = _TOKEN.fullmatch(text) if len(text) <= MAX_TOKEN_LENGTH else None
    if match is None:
        raise Unauthenticated("malformed")
    return match[1], match[2]


def is_token_id(text: str) -> bool:
    """Whether ``text`` could be a token id (and so is safe as a KV key)."""
    return _TOKEN_ID.fullmatch(text) is not None


class TokenRequest(msgspec.Struct, frozen=True):
    """A validated ``token create``: what the store turns into a record."""

    name: str
    scopes: frozenset[str]
    customer_id: str | None
    ttl: timedelta | None


def _scope_errors(scopes: str | Iterable[str]) -> tuple[frozenset[str], list[FieldError]]:
    try:
        parsed = parse_scopes(scopes)
    except InvalidTokenRequest as exc:
        return frozenset(), exc.errors
    if not parsed:
        return parsed, [FieldError("scopes", "name at least one scope")]
    return parsed, []


def token_request(
    name: str,
    scopes: str | Iterable[str],
    customer: str | None = None,
    ttl: float | None = None,
) -> TokenRequest:
    """Check a request for a token; every bad field is named in one ``InvalidTokenRequest``."""
    parsed, errors = _scope_errors(scopes)
    if not name.strip() or len(name) > MAX_NAME or not name.isprintable():
        errors.append(FieldError("name", f"must be 1-{MAX_NAME} printable characters"))
    if customer is not None and not _CUSTOMER.fullmatch(customer):
        errors.append(FieldError("customer_id", "must be 1-64 of A-Z a-z 0-9 . _ : -"))
    if ttl is not None and not (math.isfinite(ttl) and 0 < ttl <= MAX_TTL):
        errors.append(FieldError("ttl", f"must be seconds, > 0 and <= {MAX_TTL:.0f}"))
    if errors:
        raise InvalidTokenRequest(errors)
    lifetime = timedelta(seconds=ttl) if ttl is not None else None
    return TokenRequest(name.strip(), parsed, customer, lifetime)
