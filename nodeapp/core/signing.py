"""Signed HTTP bodies: the payment gateway's callbacks and the notification webhooks.

``Orderflow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``, the
scheme of DESIGN part 2. The timestamp is inside the MAC, so a captured request cannot be
replayed later than ``tolerance`` seconds; the digest is compared in constant time. Errors say
what was wrong with the header, never the secret or the expected digest.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Final

from nodeapp.core.errors import OrderflowError

SIGNATURE_HEADER: Final = "Orderflow-Signature"
TOLERANCE: Final = 300.0  # seconds a signature stays acceptable, either side of now
SCHEME: Final = "v1"


class BadSignature(OrderflowError):
    """The signature is missing, malformed, stale or does not match (HTTP 401)."""


def _digest(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, b"%d.%s" % (timestamp, body), hashlib.sha256).hexdigest()


def sign(secret: bytes, body: bytes, now: float | None = None) -> str:
    """The header value for ``body`` signed at ``now`` (default: the current time)."""
    timestamp = int(time.time() if now is None else now)
    return f"t={timestamp},{SCHEME}={_digest(secret, timestamp, body)}"


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    digests: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise BadSignature("malformed signature header")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise BadSignature("signature timestamp is not a whole number") from None
        elif key == SCHEME:
            digests.append(value)
    if timestamp is None or not digests:
        raise BadSignature(f"signature header needs t= and {SCHEME}=")
    return timestamp, digests


def verify(
    secret: bytes,
    body: bytes,
    header: str | None,
    now: float | None = None,
    tolerance: float = TOLERANCE,
) -> None:
    """Return if ``header`` signs ``body`` with ``secret`` within ``tolerance``; else raise
    ``BadSignature``. Several ``v1=`` values are accepted (a secret being rotated)."""
    if not header:
        raise BadSignature(f"missing {SIGNATURE_HEADER} header")
    timestamp, digests = _parse(header)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise BadSignature(f"signature timestamp is more than {tolerance:g}s away from now")
    expected = _digest(secret, timestamp, body)
    # compare_digest on every candidate: the time taken does not say which one was close.
    if not any(hmac.compare_digest(expected, d) for d in digests):
        raise BadSignature("signature does not match the body")
