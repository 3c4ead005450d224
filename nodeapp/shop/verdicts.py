"""The node hears the gateway's verdicts: ``PaymentWaiter`` learns them from bucket
``payments``, where the api's inbox records them (``nodeapp.shop.callbacks``).

The waiter is one subscription per process, not a watch per order: an ordered consumer on the
bucket's subjects delivering only new records (``DeliverPolicy.NEW``) resolves a future per
waiting order. nats-py's ``KeyValue.watch`` is not used: it would first replay the latest
record of every order ever paid, and its "no more values" marker can come before the stored
values (nats-io/nats.py#842). A wait registers its future (``expecting``) *before* it looks:
a record written after that is delivered to it. The node's Pre-Processing registers before it
sends the authorization, so when the gateway answers ``pending`` the verdict is still to come
and no read is needed (ADR 0020); any other answer (a re-run finds the payment decided), and
``wait``, read the key once first. At its deadline a wait reads the key once more, in case the
subscription was being re-created (nats-py re-creates an ordered consumer that misses
heartbeats, e.g. across a broker restart; one re-created before it saw any record replays the
bucket from its start, which only costs reading it). No polling loop. A wait given an
``interrupt`` event ends as soon as it is set (``WaitInterrupted``): the order was cancelled
meanwhile (ADR 0013).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Final

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.kv import KV_MARKER_REASON, KV_OP, KeyValue

from nodeapp.broker.connection import ANY_NATS_ERROR, broker_errors
from nodeapp.core.settings import Settings
from nodeapp.core.shop_errors import InvalidPaymentMessage
from nodeapp.shop.callbacks import read
from nodeapp.shop.payment_messages import PaymentCallback, decode_callback

log = logging.getLogger("orderflow.payments")

HEARTBEAT: Final = 2.0  # seconds; nats-py re-creates the consumer after two missed heartbeats
INACTIVE: Final = 60.0  # seconds before the server drops the consumer of a vanished process


class WaitInterrupted(Exception):
    """A verdict wait ended by its ``interrupt`` event (the order is being cancelled)."""


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


class Expected:
    """One order's verdict, listened for since ``PaymentWaiter.expecting`` was entered."""

    def __init__(
        self, waiter: PaymentWaiter, order_id: str, future: asyncio.Future[PaymentCallback]
    ) -> None:
        self._waiter = waiter
        self._order_id = order_id
        self._future = future

    async def verdict(
        self,
        within: float | None = None,
        interrupt: asyncio.Event | None = None,
        *,
        maybe_recorded: bool,
    ) -> PaymentCallback | None:
        """The verdict, or None after ``within`` seconds (default ``ORDERFLOW_PAYMENT_TIMEOUT``).
        ``maybe_recorded``: it may have been recorded before the listening began, so the key is
        read first; False when the gateway answered ``pending`` after the listening began (its
        verdict is recorded later, and arrives). ``BrokerUnavailable`` if the bucket cannot be
        read (a timeout is only reported once the bucket said there is no verdict);
        ``InvalidPaymentMessage`` if the record is unreadable; ``WaitInterrupted`` once
        ``interrupt`` is set, if no verdict came first."""
        return await self._waiter._verdict(
            self._order_id, self._future, within, interrupt, maybe_recorded
        )


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

    @contextlib.contextmanager
    def expecting(self, order_id: str) -> Iterator[Expected]:
        """Listen for ``order_id``'s verdict from now on: enter it *before* asking the gateway,
        and every record written after that reaches the ``Expected`` (ADR 0020)."""
        if self._sub is None:
            raise RuntimeError("PaymentWaiter used outside its `async with`")
        future: asyncio.Future[PaymentCallback] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(order_id, set()).add(future)
        try:
            yield Expected(self, order_id, future)
        finally:
            futures = self._waiting.get(order_id, set())
            futures.discard(future)
            if not futures:
                self._waiting.pop(order_id, None)

    async def wait(
        self, order_id: str, within: float | None = None, interrupt: asyncio.Event | None = None
    ) -> PaymentCallback | None:
        """The verdict recorded for ``order_id``, or None after ``within`` seconds (default
        ``ORDERFLOW_PAYMENT_TIMEOUT``), whenever it was recorded: the key is read once the
        wait listens. Errors as ``Expected.verdict``."""
        with self.expecting(order_id) as expected:
            return await expected.verdict(within, interrupt, maybe_recorded=True)

    async def _verdict(
        self,
        order_id: str,
        future: asyncio.Future[PaymentCallback],
        within: float | None,
        interrupt: asyncio.Event | None,
        maybe_recorded: bool,
    ) -> PaymentCallback | None:
        if maybe_recorded and (found := await read(self._kv, order_id)) is not None:
            return found
        deadline = self._timeout if within is None else within
        if not await _first(future, interrupt, deadline):
            return self._last_look(order_id, await read(self._kv, order_id))
        if future.done():
            return future.result()
        raise WaitInterrupted(order_id)

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
