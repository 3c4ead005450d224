"""Who may stop a node: ``POST /stop`` needs a bearer token with the ``ops`` scope (or
``admin``); the read-only ops endpoints stay open (probes and Prometheus carry no token, and the
listener binds loopback by default).

The token is verified as the api verifies it (``nodeapp.security.verify``): against
``ORDERFLOW_ADMIN_TOKEN``, else its record in the ``tokens`` bucket, read on each request. A stop
is rare, so a broker round trip is cheap and a revocation counts at once; no cache to keep. The
node only reads the bucket: a missing one means no token but the admin's is valid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import nats.js.errors
from nats.js import JetStreamContext

from nodeapp.broker.connection import broker_errors
from nodeapp.core.errors import BrokerUnavailable, Unauthenticated
from nodeapp.core.settings import Settings
from nodeapp.ops.http import Request, Response, error_response
from nodeapp.security.bucket import TOKENS_BUCKET
from nodeapp.security.scopes import OPS
from nodeapp.security.store import TokenStore, utcnow
from nodeapp.security.tokens import StoredToken
from nodeapp.security.verify import admin_token, bearer_token, verify

log = logging.getLogger("orderflow.ops")

BEARER: Final = (("WWW-Authenticate", "Bearer"),)


class OpsGuard:
    """``await guard.refusal(request, "stop")``: None when the request may go on, else the
    401, 403 or 503 to answer (JSON, never echoing the token)."""

    def __init__(self, settings: Settings, jetstream: Callable[[], JetStreamContext]) -> None:
        self._admin = admin_token(settings.admin_token)
        self._jetstream = jetstream

    async def refusal(self, request: Request, what: str) -> Response | None:
        try:
            presented = bearer_token(request.header("authorization"))
            principal = await verify(presented, self._lookup, self._admin, utcnow())
        except Unauthenticated as exc:
            self._refused(what, exc.reason, exc.token_id)
            return error_response(401, f"{what} needs a token with ops: {exc}", BEARER)
        except BrokerUnavailable as exc:
            log.warning("cannot check a token for %s: %s", what, exc, extra={"event": "ops.auth"})
            return error_response(503, "cannot check the token now: the broker is unavailable")
        if not principal.allows(OPS):
            self._refused(what, "lacks ops", principal.token_id)
            return error_response(403, f"this token lacks the scope {OPS}")
        log.info(
            "%s allowed for token %s (%s)", what, principal.token_id, principal.name,
            extra={"event": "ops.allowed", "token_id": principal.token_id},
        )  # fmt: skip
        return None

    async def _lookup(self, token_id: str) -> StoredToken | None:
        try:
            with broker_errors("opening the tokens bucket"):
                kv = await self._jetstream().key_value(TOKENS_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            return None  # no token was ever created: only the admin token is valid
        return await TokenStore(kv).get(token_id)

    @staticmethod
    def _refused(what: str, reason: str, token_id: str | None) -> None:
        log.info(
            "%s refused: token %s", what, reason,
            extra={"event": "ops.refused", "reason": reason, "token_id": token_id},
        )  # fmt: skip
