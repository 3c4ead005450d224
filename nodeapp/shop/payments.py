"""The node's side of payments: ``PaymentClient`` calls the gateway, ``PaymentWaiter`` learns
its verdicts from bucket ``payments`` (where the api's inbox records them).

The waiter is one subscription per process, not a watch per order: an ordered consumer on the
bucket's subjects delivering only new records (``DeliverPolicy.NEW``) resolves a future per
waiting order. nats-py's ``KeyValue.watch`` is not used: it would first replay the latest
record of every order ever paid, and its "no more values" marker can come before the stored
values (nats-io/nats.py#842). A wait registers its future *before* reading the key once, so a
verdict recorded first is read, and one recorded after is delivered; at its deadline it reads
the key once more, in case the subscription was being re-created (nats-py re-creates an
ordered consumer that misses heartbeats, e.g. across a broker restart; one re-created
before it saw any record replays the bucket from its start, which only costs reading it).
No polling loop. A wait given an ``interrupt`` event ends as soon as it is set
(``WaitInterrupted``): the order was cancelled meanwhile (ADR 0013).
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from types import TracebackType
from typing import Any, Final

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.kv import KV_MARKER_REASON, KV_OP, KeyValue

from nodeapp.broker.connection import ANY_NATS_ERROR, broker_errors
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
from nodeapp.shop.callbacks import read
from nodeapp.shop.gateway_ledger import LedgerEntry, decode_entry
from nodeapp.shop.payment_messages import (
    AUTHORIZE,
    CALLBACK_PATH,
    FENCED_PROBLEM,
    SIM_PREFIX,
    AuthorizeRequest,
    EpochRequest,
    PaymentCallback,
    decode_callback,
    encode,
)

log = logging.getLogger("orderflow.payments")

HEARTBEAT: Final = 2.0  # seconds; nats-py re-creates the consumer after two missed heartbeats
INACTIVE: Final = 60.0  # seconds before the server drops the consumer of a vanished process
_JSON: Final = {"Content-Type": "application/json"}


def gateway_url(settings: Settings) -> str:
    """``ORDERFLOW_PAYMENT_URL``, or the gateway the api hosts under ``/sim/payments``."""
    return (settings.payment_url or settings.api_url.rstrip("/") + SIM_PREFIX).rstrip("/")


def callback_url(settings: Settings) -> str:
    """Where the gateway sends its verdicts: the api's inbox."""
    return settings.api_url.rstrip("/") + CALLBACK_PATH


class WaitInterrupted(Exception):
    """A verdict wait ended by its ``interrupt`` event (the order is being cancelled)."""


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


async def _first(
    future: asyncio.Future[PaymentCallback], interrupt: asyncio.Event | None, within: float
) -> bool:
    """Wait for ``future`` or ``interrupt``, whichever comes first; False after ``within``."""
    if interrupt is None:
        done, _ = await asyncio.wait({future}, timeout=within)
        return bool(done)
    stop: asyncio.Future[Any] = asyncio.ensure_future(interrupt.wait())
    waits: set[asyncio.Future[Any]] = {future, stop}
    try:
        done, _ = await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        await asyncio.wait({stop})
    return bool(done)


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


class PaymentWaiter:
    """Waits for gateway verdicts; one per process, ``async with`` it (it owns one consumer).

    ``js`` and ``kv`` are the process's JetStream context and its ``payments`` bucket
    (``ensure_payments_bucket``).
    """

    def __init__(self, js: JetStreamContext, kv: KeyValue, settings: Settings) -> None:
        self._js = js
        self._kv = kv
        self._timeout = settings.payment_timeout
        self._waiting: dict[str, set[asyncio.Future[PaymentCallback]]] = {}
        self._prefix = ""
        self._sub: Any = None
        self.undecodable = 0  # records that could not be read (logged with their order id)
        self.found_late = 0  # verdicts only the last look found: the subscription missed them

    async def __aenter__(self) -> PaymentWaiter:
        with broker_errors("subscribing to payment callbacks"):
            status = await self._kv.status()
            self._prefix = f"$KV.{status.bucket}."
            self._sub = await self._js.subscribe(
                self._prefix + ">",
                stream=str(status.stream_info.config.name),
                cb=self._on_record,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW,
                idle_heartbeat=HEARTBEAT,
                inactive_threshold=INACTIVE,
            )
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except ANY_NATS_ERROR as exc:  # the connection is already closing: nothing to undo
                log.debug("payment waiter: unsubscribe failed: %s", exc)

    @property
    def waiting(self) -> int:
        """Orders waiting for a verdict in this process."""
        return len(self._waiting)

    async def wait(
        self, order_id: str, within: float | None = None, interrupt: asyncio.Event | None = None
    ) -> PaymentCallback | None:
        """The verdict recorded for ``order_id``, or None after ``within`` seconds (default
        ``ORDERFLOW_PAYMENT_TIMEOUT``). ``BrokerUnavailable`` if the bucket cannot be read (a
        timeout is only reported once the bucket said there is no verdict);
        ``InvalidPaymentMessage`` if the record is unreadable; ``WaitInterrupted`` once
        ``interrupt`` is set, if no verdict came first."""
        if self._sub is None:
            raise RuntimeError("PaymentWaiter used outside its `async with`")
        future: asyncio.Future[PaymentCallback] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(order_id, set()).add(future)
        try:
            if (found := await read(self._kv, order_id)) is not None:
                return found
            deadline = self._timeout if within is None else within
            if not await _first(future, interrupt, deadline):
                return self._last_look(order_id, await read(self._kv, order_id))
            if future.done():
                return future.result()
            raise WaitInterrupted(order_id)
        finally:
            futures = self._waiting.get(order_id, set())
            futures.discard(future)
            if not futures:
                self._waiting.pop(order_id, None)

    def _last_look(self, order_id: str, found: PaymentCallback | None) -> PaymentCallback | None:
        """The deadline's read (see the module's doc); a find here means the subscription
        missed a record, which is worth a line in the log."""
        if found is not None:
            self.found_late += 1
            log.warning(
                "payment verdict for order %s found only at the deadline (%d so far)",
                order_id, self.found_late,
                extra={"event": "payment.verdict_found_late", "order_id": order_id},
            )  # fmt: skip
        return found

    async def _on_record(self, msg: Msg) -> None:
        """A record written to ``payments``: resolve whoever waits for that order."""
        order_id = msg.subject[len(self._prefix) :]
        futures = self._waiting.get(order_id)
        if not futures:
            return
        if msg.headers and (KV_OP in msg.headers or KV_MARKER_REASON in msg.headers):
            return  # a delete, purge or expiry marker: no verdict
        try:
            callback = decode_callback(msg.data)
        except InvalidPaymentMessage:
            self.undecodable += 1
            log.exception(
                "unreadable payment record for order %s (%d so far)", order_id, self.undecodable,
                extra={"event": "payment.record_unreadable", "order_id": order_id},
            )  # fmt: skip
            return
        for future in futures:
            if not future.done():
                future.set_result(callback)
