"""The node's side of payments at the gateway: ``PaymentClient`` authorizes, captures, voids
and refunds over ``nodeapp.core.http``; the verdicts come back through bucket ``payments``
(``nodeapp.shop.verdicts``, where the node's ``PaymentWaiter`` hears them).
"""

from __future__ import annotations

import logging
from decimal import Decimal
from types import TracebackType
from typing import Final

import msgspec

from nodeapp.core.errors import FieldError
from nodeapp.core.http import HttpAnswer, HttpClient, HttpFailed
from nodeapp.core.settings import Settings
from nodeapp.core.shop_errors import (
    GatewayUnavailable,
    InvalidPaymentMessage,
    PaymentConflict,
    PaymentFenced,
    PaymentNotFound,
)
from nodeapp.shop.gateway_ledger import LedgerEntry, decode_entry
from nodeapp.shop.payment_messages import (
    AUTHORIZE,
    CALLBACK_PATH,
    FENCED_PROBLEM,
    SIM_PREFIX,
    AuthorizeRequest,
    EpochRequest,
    encode,
)

log = logging.getLogger("orderflow.payments")

_JSON: Final = {"Content-Type": "application/json"}


def gateway_url(settings: Settings) -> str:
    """``ORDERFLOW_PAYMENT_URL``, or the gateway the api hosts under ``/sim/payments``."""
    return (settings.payment_url or settings.api_url.rstrip("/") + SIM_PREFIX).rstrip("/")


def callback_url(settings: Settings) -> str:
    """Where the gateway sends its verdicts: the api's inbox."""
    return settings.api_url.rstrip("/") + CALLBACK_PATH


class _Problem(msgspec.Struct):
    """The fields of a gateway's problem+json answer the client reads."""

    type: str = "about:blank"
    detail: str = ""
    current: int | None = None
    errors: list[dict[str, str]] = []


class PaymentClient:
    """Authorize, capture, void, refund at the gateway; ``async with`` it (one per process).

    Answers the ledger entry; raises ``GatewayUnavailable`` (transport error, timeout, 5xx:
    retry later), ``PaymentFenced`` (a newer owner acted), ``PaymentConflict`` (an impossible
    transition), ``PaymentNotFound``, ``InvalidPaymentMessage``. Errors name the path, never the
    URL (it may carry credentials). The calls go over ``nodeapp.core.http``'s keep-alive pool:
    every one is idempotent at the gateway, so the pool may send one again on a fresh
    connection when the server closed an idle one under it.
    """

    def __init__(self, settings: Settings) -> None:
        self.base_url = gateway_url(settings)
        self.callback_url = callback_url(settings)
        self._timeout = settings.request_timeout
        self._client: HttpClient | None = None

    async def __aenter__(self) -> PaymentClient:
        self._client = HttpClient(self._timeout)
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def authorize(
        self, order_id: str, amount: Decimal, token: str, epoch: int
    ) -> LedgerEntry:
        """Pending at first; the verdict arrives later through the inbox (``PaymentWaiter``)."""
        body = AuthorizeRequest(
            order_id=order_id, amount=amount, token=token, epoch=epoch,
            callback_url=self.callback_url,
        )  # fmt: skip
        return await self._call("POST", AUTHORIZE, order_id, epoch, encode(body))

    async def capture(self, payment_id: str, epoch: int) -> LedgerEntry:
        return await self._epoch_call("capture", payment_id, epoch)

    async def void(self, payment_id: str, epoch: int) -> LedgerEntry:
        return await self._epoch_call("void", payment_id, epoch)

    async def refund(self, payment_id: str, epoch: int) -> LedgerEntry:
        return await self._epoch_call("refund", payment_id, epoch)

    async def get(self, payment_id: str) -> LedgerEntry:
        return await self._call("GET", f"/{payment_id}", payment_id, None, b"")

    async def _epoch_call(self, action: str, payment_id: str, epoch: int) -> LedgerEntry:
        body = encode(EpochRequest(epoch=epoch))
        return await self._call("POST", f"/{payment_id}/{action}", payment_id, epoch, body)

    async def _call(
        self, method: str, path: str, payment_id: str, epoch: int | None, body: bytes
    ) -> LedgerEntry:
        if self._client is None:
            raise RuntimeError("PaymentClient used outside its `async with`")
        try:
            answer = await self._client.request(method, self.base_url + path, body, _JSON)
        except HttpFailed as exc:
            raise GatewayUnavailable(f"{method} {path}: {exc}") from None
        if answer.is_success:
            try:
                return decode_entry(answer.body)
            except msgspec.DecodeError as exc:
                raise GatewayUnavailable(f"{method} {path}: unreadable answer ({exc})") from None
        raise _error(answer, f"{method} {path}", payment_id, epoch)


def _error(answer: HttpAnswer, what: str, payment_id: str, epoch: int | None) -> Exception:
    """Our error for a gateway's non-2xx answer."""
    try:
        problem = msgspec.json.decode(answer.body, type=_Problem)
    except msgspec.DecodeError:
        problem = _Problem()
    status = answer.status
    if status == 409 and problem.type == FENCED_PROBLEM and epoch is not None:
        return PaymentFenced(payment_id, epoch, problem.current or epoch + 1)
    if status == 409:
        return PaymentConflict(payment_id, problem.detail or "refused by the gateway")
    if status == 404:
        return PaymentNotFound(payment_id)
    if status in (400, 413, 422):
        errors = [FieldError(e.get("field", "body"), e.get("message", "")) for e in problem.errors]
        return InvalidPaymentMessage(errors or [FieldError("body", problem.detail)], status=status)
    return GatewayUnavailable(f"{what}: HTTP {status} {problem.detail}".rstrip(), status=status)
