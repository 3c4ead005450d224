"""The notifier: a task of every node process, delivering ``NOTIFICATIONS`` to the webhook.

A pull consumer (``notifier``) with at most ``concurrency`` deliveries in hand, each in a task
kept here; ``nodeapp.shop.notify_delivery`` decides what becomes of each message. Exiting
``async with`` stops fetching, lets the deliveries in hand finish within ``grace`` and cancels
the rest, which hand their messages back (nak at once: another node sends them).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from types import TracebackType
from typing import Any, Final

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from nodeapp.broker.connection import ANY_NATS_ERROR, broker_errors
from nodeapp.core.settings import Settings
from nodeapp.orders.store import OrderStore
from nodeapp.shop.notify_delivery import Deliveries
from nodeapp.shop.notify_resources import CONSUMER, STREAM, DeliveryPolicy, ensure_notifications
from nodeapp.shop.webhook import Webhook

log = logging.getLogger("orderflow.notifier")

FETCH_TIMEOUT: Final = 1.0  # also bounds how long a stop waits for the fetch in flight
RETRY_PAUSE: Final = 0.5


class Notifier:
    """``async with Notifier(settings, js, store):`` delivers until the block ends.

    Creates its stream, consumer and bucket if missing. ``policy`` defaults to the settings'
    (``ORDERFLOW_MAX_DELIVER`` attempts); ``grace`` to the POST timeout plus a second.
    """

    def __init__(
        self,
        settings: Settings,
        js: JetStreamContext,
        store: OrderStore,
        *,
        policy: DeliveryPolicy | None = None,
        grace: float | None = None,
    ) -> None:
        self.settings = settings
        self.js = js
        self.store = store
        self.policy = policy or DeliveryPolicy.from_settings(settings)
        self.grace = self.policy.post_timeout + 1.0 if grace is None else grace
        self._webhook: Webhook | None = None
        if settings.notify_webhook:
            url, secret = settings.notify_webhook, settings.notify_secret
            self._webhook = Webhook(url, secret, self.policy.post_timeout)
        self._deliveries: Deliveries | None = None
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._fetching: asyncio.Task[None] | None = None
        self._exits = contextlib.AsyncExitStack()

    @property
    def counts(self) -> collections.Counter[str]:
        """Outcomes so far (delivered, retried, dead, skipped, ...), for metrics."""
        return self._deliveries.counts if self._deliveries else collections.Counter()

    async def __aenter__(self) -> Notifier:
        async with contextlib.AsyncExitStack() as stack:
            kv = await ensure_notifications(self.js, self.settings, self.policy)
            with broker_errors("binding to the notifier consumer"):
                sub: Any = await self.js.pull_subscribe_bind(durable=CONSUMER, stream=STREAM)
            stack.push_async_callback(_unsubscribe, sub)
            if self._webhook is not None:
                await stack.enter_async_context(self._webhook)
            self._deliveries = Deliveries(self.js, kv, self.store, self._webhook, self.policy)
            self._fetching = asyncio.create_task(
                self._fetch_loop(sub, self._deliveries), name="notifier-fetch"
            )
            self._fetching.add_done_callback(_report_crash)
            self._exits = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        async with self._exits:
            self._stop.set()
            if self._fetching is not None:
                await self._fetching  # ends after the fetch in flight; re-raises if it crashed
            await self._finish_in_hand()

    async def _finish_in_hand(self) -> None:
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=self.grace)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)

    async def _fetch_loop(self, sub: Any, deliveries: Deliveries) -> None:
        while not self._stop.is_set():
            free = self.policy.concurrency - len(self._tasks)
            if free <= 0:
                await self._slot_or_stop()
                continue
            try:
                msgs: list[Msg] = await sub.fetch(free, timeout=FETCH_TIMEOUT)
            except TimeoutError:  # nothing to deliver (nats-py's TimeoutError is one too)
                _keep_cancellation()
                continue
            except ANY_NATS_ERROR as exc:
                _keep_cancellation()
                log.warning(
                    "fetching notifications failed: %r", exc, extra={"event": "notify.fetch_failed"}
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), RETRY_PAUSE)
                continue
            for msg in msgs:
                task = asyncio.create_task(deliveries.deliver(msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _slot_or_stop(self) -> None:
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({*self._tasks, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()


async def _unsubscribe(sub: Any) -> None:
    try:
        await sub.unsubscribe()
    except ANY_NATS_ERROR as exc:
        log.warning("could not unsubscribe the notifier (it ends with the connection): %r", exc)


def _report_crash(task: asyncio.Task[None]) -> None:
    """Say so at once; ``async with`` re-raises it on the way out."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("the notifier stopped fetching", exc_info=exc, extra={"event": "notify.crashed"})


def _keep_cancellation() -> None:
    """nats-py can turn a cancellation into a timeout; keep the cancellation."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
