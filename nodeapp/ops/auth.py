"""Who may stop a node: ``POST /stop`` needs a bearer token with the ``ops`` scope (or
``admin``); the read-only ops endpoints stay open (probes and Prometheus carry no token, and the
listener binds loopback by default).

The token is compared with ``ORDERFLOW_ADMIN_TOKEN`` here; any other token is judged by the api
(``nodeapp.security.remote``): the broker does not let a node read the ``tokens`` bucket (ADR
0015). A stop is rare, so a round trip is cheap and a revocation counts at once. With no api
answering, only the admin token can stop a node (503 for any other).
"""

from __future__ import annotations

import logging
from typing import Final

from nats.aio.client import Client as NATS

from nodeapp.core.errors import BrokerUnavailable, Unauthenticated
from nodeapp.core.settings import Settings
from nodeapp.ops.http import Request, Response, error_response
from nodeapp.security.remote import check_token
from nodeapp.security.scopes import ADMIN_PRINCIPAL, OPS, Principal
from nodeapp.security.verify import admin_token, bearer_token

log = logging.getLogger("orderflow.ops")

BEARER: Final = (("WWW-Authenticate", "Bearer"),)


class OpsGuard:
    """``await guard.refusal(request, "stop")``: None when the request may go on, else the
    401, 403 or 503 to answer (JSON, never echoing the token)."""

    def __init__(self, settings: Settings, nc: NATS) -> None:
        self._admin = admin_token(settings.admin_token)
        self._nc = nc
        self._within = settings.request_timeout

    async def refusal(self, request: Request, what: str) -> Response | None:
        try:
            principal = await self._principal(bearer_token(request.header("authorization")))
        except Unauthenticated as exc:
            self._refused(what, exc.reason, exc.token_id)
            return error_response(401, f"{what} needs a token with ops: {exc}", BEARER)
        except BrokerUnavailable as exc:
            log.warning("cannot check a token for %s: %s", what, exc, extra={"event": "ops.auth"})
            return error_response(503, f"cannot check the token now: {exc}")
        if not principal.allows(OPS):
            self._refused(what, "lacks ops", principal.token_id)
            return error_response(403, f"this token lacks the scope {OPS}")
        log.info(
            "%s allowed for token %s (%s)", what, principal.token_id, principal.name,
            extra={"event": "ops.allowed", "token_id": principal.token_id},
        )  # fmt: skip
        return None

    async def _principal(self, presented: str | None) -> Principal:
        if not presented:
            raise Unauthenticated("missing")
        if self._admin is not None and self._admin.matches(presented):
            return ADMIN_PRINCIPAL
        return await check_token(self._nc, presented, self._within)

    @staticmethod
    def _refused(what: str, reason: str, token_id: str | None) -> None:
        log.info(
            "%s refused: token %s", what, reason,
            extra={"event": "ops.refused", "reason": reason, "token_id": token_id},
        )  # fmt: skip
