"""The notification webhook: one signed JSON POST, succeeded or ``DeliveryFailed``.

The body is signed like the gateway's callbacks (``nodeapp.core.signing``) with
``ORDERFLOW_NOTIFY_SECRET``, so a receiver can tell our notifications from forged ones; the
``Orderflow-Notification-Id`` header lets it drop the duplicate a crash can cause. Errors say what
went wrong without the URL (it may carry credentials) or the secret.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Final

import httpx

from nodeapp.core.errors import DeliveryFailed
from nodeapp.core.signing import SIGNATURE_HEADER, sign

log = logging.getLogger("orderflow.notifier")

NOTIFICATION_ID_HEADER: Final = "Orderflow-Notification-Id"


class Webhook:
    """POSTs to one URL over one pooled client, opened and closed by ``async with``."""

    def __init__(self, url: str, secret: str, timeout: float) -> None:
        self.url = url
        self._secret = secret.encode()
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None
        if not secret:
            log.warning(
                "ORDERFLOW_NOTIFY_SECRET is unset: notifications are sent unsigned",
                extra={"event": "notify.unsigned"},
            )

    async def __aenter__(self) -> Webhook:
        self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def headers(self, notification_id: str, body: bytes) -> dict[str, str]:
        out = {
            "Content-Type": "application/json",
            "User-Agent": "orderflow-notifier",
            NOTIFICATION_ID_HEADER: notification_id,
        }
        if self._secret:
            out[SIGNATURE_HEADER] = sign(self._secret, body)
        return out

    async def post(self, notification_id: str, body: bytes) -> int:
        """Send ``body``; the 2xx status, else ``DeliveryFailed`` (non-2xx, timeout, refused)."""
        if self._client is None:
            raise RuntimeError("Webhook.post() outside `async with`")
        try:
            response = await self._client.post(
                self.url, content=body, headers=self.headers(notification_id, body)
            )
        except httpx.TimeoutException:
            raise DeliveryFailed(notification_id, f"no answer within {self._timeout:g}s") from None
        except httpx.HTTPError as exc:
            # The class says what failed (ConnectError, RemoteProtocolError...); its text may
            # quote the URL, so it stays out.
            raise DeliveryFailed(notification_id, type(exc).__name__) from None
        if not response.is_success:
            reason = f"HTTP {response.status_code}"
            raise DeliveryFailed(notification_id, reason, response.status_code)
        return response.status_code
