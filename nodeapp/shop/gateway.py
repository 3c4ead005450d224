"""The simulated card network: a ledger in KV bucket ``gateway``, verdicts sent back signed.

``authorize`` answers ``pending`` at once; after ``ORDERFLOW_PAYMENT_DELAY`` a task of this
process decides (``tok_decline*`` declined, ``tok_silent*`` never answered, anything else
approved) and sends the verdict to the callback URL, signed with ``ORDERFLOW_PAYMENT_SECRET``.
``capture``, ``void`` and ``refund`` are synchronous. Every call is idempotent per payment
(= order id) and fenced by the owner's epoch (``gateway_ledger``); the ledger is written by
compare-and-set (``ledger_store``), so gateways in several api processes share it safely.

A verdict for the api hosting this gateway (the callback URL is its own, ``ORDERFLOW_API_URL``
+ ``/payments/callback``) is handed to that api's ``PaymentInbox`` in-process, signed as for
the network and verified by the same ``record`` the route calls: only the HTTP round trip to
itself is skipped (ADR 0018). Any other callback URL (a standalone ``orderflow payments``, an
api elsewhere) gets the HTTP POST.

A repeated ``authorize`` never charges twice and schedules a verdict only if one is still due
(not yet delivered, not voided) and none is pending in this process: the same process never
sends a verdict twice; a re-authorization after the hosting process died (its tasks died with
it, ADR 0010) or after every delivery attempt failed sends it again. Two processes hosting the
gateway may each send one (the api's inbox records the first, the second is a no-op).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Final

from nodeapp.core.errors import OrderflowError
from nodeapp.core.http import HttpClient, HttpFailed
from nodeapp.core.settings import Settings
from nodeapp.core.shop_errors import GatewayUnavailable, InvalidPaymentMessage, PaymentConflict
from nodeapp.core.signing import SIGNATURE_HEADER, BadSignature, sign
from nodeapp.orders.model import utcnow
from nodeapp.shop import gateway_ledger as ledger
from nodeapp.shop.callbacks import PaymentInbox
from nodeapp.shop.gateway_ledger import LedgerEntry
from nodeapp.shop.ledger_store import LedgerStore
from nodeapp.shop.payment_messages import AuthorizeRequest, encode
from nodeapp.shop.payment_resources import BucketSource
from nodeapp.shop.payments import callback_url

log = logging.getLogger("orderflow.gateway")

CALLBACK_ATTEMPTS: Final = 5  # sends of one verdict while the inbox is down or answers 5xx
CALLBACK_BACKOFF: Final = 0.1  # seconds before the second send, doubling
REFUSED: Final = (BadSignature, PaymentConflict, InvalidPaymentMessage)  # an inbox's 4xx

Attempt = tuple[str, bool] | None  # None: delivered; else why not, and whether to try again


class Gateway:
    """The network's ledger and its pending verdicts; ``async with`` it (or use ``lifespan``)
    so the verdicts' tasks and HTTP client live and die with the hosting app. ``inbox`` is the
    hosting api's own: verdicts for its callback URL are handed to it in-process."""

    def __init__(
        self, settings: Settings, ledger_bucket: BucketSource, inbox: PaymentInbox | None = None
    ) -> None:
        self._ledger = LedgerStore(ledger_bucket)
        self._secret = settings.payment_secret.encode()
        self._delay = settings.payment_delay
        self._timeout = settings.request_timeout
        self._inbox = inbox
        self._own_callback = callback_url(settings) if inbox is not None else None
        self._client: HttpClient | None = None
        self._pending: dict[str, asyncio.Task[None]] = {}
        self.callbacks_failed = 0  # verdicts given up on (all attempts failed, or refused)
        self.handed_over = 0  # verdicts delivered in-process to the hosting api's inbox

    async def __aenter__(self) -> Gateway:
        if not self._secret:
            log.warning(
                "ORDERFLOW_PAYMENT_SECRET is empty: every callback will be refused",
                extra={"event": "gateway.no_secret"},
            )
        self._client = HttpClient(self._timeout)
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        """Cancel the pending verdicts (a real network's answer lost with its process)."""
        tasks = list(self._pending.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: object) -> AsyncIterator[None]:
        """For ``Litestar(lifespan=[gateway.lifespan])``."""
        async with self:
            yield

    @property
    def pending(self) -> int:
        """Verdicts waiting for their delay or being delivered, in this process."""
        return len(self._pending)

    async def authorize(self, request: AuthorizeRequest) -> LedgerEntry:
        """The payment, pending or as it stands; ``PaymentFenced``, ``PaymentConflict``."""
        if self._client is None:
            raise GatewayUnavailable("the gateway is not running", status=503)
        payment_id = request.order_id
        entry = ledger.new_entry(
            payment_id, request.amount, request.token, request.epoch, request.callback_url,
            utcnow(),
        )  # fmt: skip
        if not await self._ledger.create(entry):
            entry = await self._ledger.change(
                payment_id,
                lambda e: ledger.authorize_again(
                    e, request.amount, request.epoch, request.callback_url
                ),
            )
        if entry.callback_due:
            self._schedule(payment_id)
        return entry

    async def capture(self, payment_id: str, epoch: int) -> LedgerEntry:
        return await self._ledger.change(payment_id, lambda e: ledger.capture(e, epoch, utcnow()))

    async def void(self, payment_id: str, epoch: int) -> LedgerEntry:
        return await self._ledger.change(payment_id, lambda e: ledger.void(e, epoch, utcnow()))

    async def refund(self, payment_id: str, epoch: int) -> LedgerEntry:
        return await self._ledger.change(payment_id, lambda e: ledger.refund(e, epoch, utcnow()))

    async def get(self, payment_id: str) -> LedgerEntry:
        return await self._ledger.get(payment_id)

    def _schedule(self, payment_id: str) -> None:
        if payment_id in self._pending:
            return
        task = asyncio.create_task(self._call_back(payment_id), name=f"verdict-{payment_id}")
        self._pending[payment_id] = task
        task.add_done_callback(lambda t: self._finished(payment_id, t))

    def _finished(self, payment_id: str, task: asyncio.Task[None]) -> None:
        if self._pending.get(payment_id) is task:
            del self._pending[payment_id]
        if task.cancelled() or (exc := task.exception()) is None:
            return
        self.callbacks_failed += 1
        log.error(
            "verdict for payment %s failed: %s", payment_id, exc, exc_info=exc,
            extra={"event": "gateway.verdict_failed", "order_id": payment_id},
        )  # fmt: skip

    async def _call_back(self, payment_id: str) -> None:
        """After the delay: decide, deliver the verdict, record its delivery."""
        await asyncio.sleep(self._delay)
        entry = await self._ledger.change(payment_id, lambda e: ledger.decide(e, utcnow()))
        if not entry.callback_due or entry.decision is None:
            return  # voided meanwhile, or delivered by another process
        if await self._deliver(entry.callback_url, payment_id, encode(ledger.verdict(entry))):
            await self._ledger.change(payment_id, lambda e: ledger.delivered(e, utcnow()))

    async def _deliver(self, url: str, payment_id: str, body: bytes) -> bool:
        """Send a signed verdict; again after a transport error or a 5xx (or the inbox's
        broker away), not after a refusal (4xx)."""
        local = url == self._own_callback
        pause = CALLBACK_BACKOFF
        for attempt in range(1, CALLBACK_ATTEMPTS + 1):
            signature = sign(self._secret, body)
            failed = await (
                self._hand_over(body, signature) if local else self._post(url, body, signature)
            )
            if failed is None:
                return True
            why, again = failed
            if not again:
                break
            log.warning(
                "callback for payment %s not delivered (%s), attempt %d", payment_id, why, attempt,
                extra={"event": "gateway.callback_retry", "order_id": payment_id},
            )  # fmt: skip
            if attempt < CALLBACK_ATTEMPTS:
                await asyncio.sleep(pause)
                pause *= 2
        self.callbacks_failed += 1
        log.error(
            "callback for payment %s given up: %s", payment_id, why,
            extra={"event": "gateway.callback_failed", "order_id": payment_id},
        )  # fmt: skip
        return False

    async def _hand_over(self, body: bytes, signature: str) -> Attempt:
        """The hosting api's inbox, in-process: the same verification and record as its route."""
        inbox = self._inbox
        if inbox is None:
            raise GatewayUnavailable("no inbox in this process")
        try:
            await inbox.record(body, signature)
        except REFUSED as exc:  # what the route answers 4xx to
            return f"refused: {exc}", False
        except OrderflowError as exc:  # the broker away, the bucket missing: the route's 503
            return f"{type(exc).__name__}: {exc}", True
        self.handed_over += 1
        return None

    async def _post(self, url: str, body: bytes, signature: str) -> Attempt:
        client = self._client
        if client is None:
            raise GatewayUnavailable("the gateway is not running")
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature}
        try:
            answer = await client.request("POST", url, body, headers)
        except HttpFailed as exc:
            return str(exc), True
        if answer.is_success:
            return None
        # 4xx: refused (a bad secret, a conflicting verdict); retrying won't help
        return f"HTTP {answer.status}", answer.status >= 500
