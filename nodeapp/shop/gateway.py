"""The simulated card network: a ledger in KV bucket ``gateway``, verdicts sent back signed.

``authorize`` answers ``pending`` at once; after ``ORDERFLOW_PAYMENT_DELAY`` a task of this
process decides (``tok_decline*`` declined, ``tok_silent*`` never answered, anything else
approved) and POSTs the verdict to the callback URL, signed with ``ORDERFLOW_PAYMENT_SECRET``.
``capture``, ``void`` and ``refund`` are synchronous. Every call is idempotent per payment
(= order id) and fenced by the owner's epoch (``gateway_ledger``); the ledger is written by
compare-and-set, so gateways in several api processes share it safely.

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
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Final

import httpx
import nats.js.errors
from nats.js.kv import KeyValue

from nodeapp.broker.connection import broker_errors
from nodeapp.core.settings import Settings
from nodeapp.core.shop_errors import GatewayUnavailable, PaymentNotFound
from nodeapp.core.signing import SIGNATURE_HEADER, sign
from nodeapp.orders.model import utcnow
from nodeapp.shop import gateway_ledger as ledger
from nodeapp.shop.gateway_ledger import LedgerEntry
from nodeapp.shop.payment_messages import AuthorizeRequest, encode
from nodeapp.shop.payment_resources import BucketSource

log = logging.getLogger("orderflow.gateway")

CAS_ATTEMPTS: Final = 10  # compare-and-set rounds before a ledger write gives up (503)
CALLBACK_ATTEMPTS: Final = 5  # POSTs of one verdict while the callback URL is down or 5xx
CALLBACK_BACKOFF: Final = 0.1  # seconds before the second POST, doubling


class Gateway:
    """The network's ledger and its pending verdicts; ``async with`` it (or use ``lifespan``)
    so the verdicts' tasks and HTTP client live and die with the hosting app."""

    def __init__(self, settings: Settings, ledger_bucket: BucketSource) -> None:
        self._bucket = ledger_bucket
        self._secret = settings.payment_secret.encode()
        self._delay = settings.payment_delay
        self._timeout = settings.request_timeout
        self._client: httpx.AsyncClient | None = None
        self._pending: dict[str, asyncio.Task[None]] = {}
        self.callbacks_failed = 0  # verdicts given up on (all attempts failed, or refused)

    async def __aenter__(self) -> Gateway:
        if not self._secret:
            log.warning(
                "ORDERFLOW_PAYMENT_SECRET is empty: every callback will be refused",
                extra={"event": "gateway.no_secret"},
            )
        self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
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
        kv = await self._bucket()
        payment_id = request.order_id
        entry = ledger.new_entry(
            payment_id, request.amount, request.token, request.epoch, request.callback_url,
            utcnow(),
        )  # fmt: skip
        with broker_errors(f"authorizing payment {payment_id}"):
            try:
                await kv.create(payment_id, encode(entry))
            except nats.js.errors.KeyWrongLastSequenceError:
                entry = await self._change(
                    kv,
                    payment_id,
                    lambda e: ledger.authorize_again(
                        e, request.amount, request.epoch, request.callback_url
                    ),
                )
        if entry.callback_due:
            self._schedule(payment_id)
        return entry

    async def capture(self, payment_id: str, epoch: int) -> LedgerEntry:
        return await self._change(
            await self._bucket(), payment_id, lambda e: ledger.capture(e, epoch, utcnow())
        )

    async def void(self, payment_id: str, epoch: int) -> LedgerEntry:
        return await self._change(
            await self._bucket(), payment_id, lambda e: ledger.void(e, epoch, utcnow())
        )

    async def refund(self, payment_id: str, epoch: int) -> LedgerEntry:
        return await self._change(
            await self._bucket(), payment_id, lambda e: ledger.refund(e, epoch, utcnow())
        )

    async def get(self, payment_id: str) -> LedgerEntry:
        entry, _ = await self._read(await self._bucket(), payment_id)
        return entry

    async def _read(self, kv: KeyValue, payment_id: str) -> tuple[LedgerEntry, int]:
        with broker_errors(f"reading payment {payment_id}"):
            try:
                stored = await kv.get(payment_id)
            except nats.js.errors.KeyNotFoundError:
                raise PaymentNotFound(payment_id) from None
        if not stored.value:
            raise PaymentNotFound(payment_id)
        return ledger.decode_entry(stored.value), stored.revision or 0

    async def _change(
        self, kv: KeyValue, payment_id: str, change: Callable[[LedgerEntry], bool]
    ) -> LedgerEntry:
        """Read, ``change`` (may raise), compare-and-set; read again after losing a race."""
        for _ in range(CAS_ATTEMPTS):
            entry, revision = await self._read(kv, payment_id)
            if not change(entry):
                return entry
            with broker_errors(f"writing payment {payment_id}"):
                try:
                    await kv.update(payment_id, encode(entry), last=revision)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue
            return entry
        raise GatewayUnavailable(f"payment {payment_id} too contended, retry", status=503)

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
        """After the delay: decide, POST the verdict, record its delivery."""
        await asyncio.sleep(self._delay)
        kv = await self._bucket()
        entry = await self._change(kv, payment_id, lambda e: ledger.decide(e, utcnow()))
        if not entry.callback_due or entry.decision is None:
            return  # voided meanwhile, or delivered by another process
        if await self._post(entry.callback_url, payment_id, encode(ledger.verdict(entry))):
            await self._change(kv, payment_id, lambda e: ledger.delivered(e, utcnow()))

    async def _post(self, url: str, payment_id: str, body: bytes) -> bool:
        """POST a signed verdict; retried on transport errors and 5xx, not on 4xx."""
        client = self._client
        if client is None:
            raise GatewayUnavailable("the gateway is not running")
        pause = CALLBACK_BACKOFF
        for attempt in range(1, CALLBACK_ATTEMPTS + 1):
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(self._secret, body),
            }
            try:
                answer = await client.post(url, content=body, headers=headers)
            except httpx.TransportError as exc:
                why = f"{type(exc).__name__}"
            else:
                if answer.is_success:
                    return True
                why = f"HTTP {answer.status_code}"
                if answer.status_code < 500:
                    break  # refused (a bad secret, a conflicting verdict): retrying won't help
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
