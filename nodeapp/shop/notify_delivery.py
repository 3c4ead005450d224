"""Every outcome of one ``NOTIFICATIONS`` message, decided in one place.

- undecodable: copied to ``ORDERS_DLQ`` and ``term()``ed;
- already ``delivered`` (a republish, or a redelivery after a crash): acked, not sent;
- ``order.delayed`` for an order that finished by its deadline (or has no document): acked, not
  sent, no state; one that finished late still gets it: it *was* late at its deadline;
- no webhook configured: state ``skipped``, acked;
- a 2xx answer: state ``delivered``, then acked (shielded: a shutdown cannot cut between them);
- non-2xx or no answer: state ``failed``, ``nak`` with a doubling delay; at ``max_deliver``
  the message is copied to ``orders.dlq.notify.<order_id>``, state ``dead``, ``term()``;
- anything else (the broker away): logged with the order and kind, counted, ``nak`` with delay.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Final, Literal

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from nodeapp.broker.connection import ANY_NATS_ERROR
from nodeapp.core.errors import DeliveryFailed, OrderflowError, OrderNotFound
from nodeapp.orders.model import utcnow
from nodeapp.orders.store import OrderStore
from nodeapp.shop.notifications import (
    DELAYED,
    DeliveryState,
    Notification,
    StateName,
    create_state,
    decode_notification,
    encode,
    read_state,
    write_state,
)
from nodeapp.shop.notify_dead_letters import copy_to_dlq
from nodeapp.shop.notify_resources import DeliveryPolicy
from nodeapp.shop.webhook import Webhook

log = logging.getLogger("orderflow.notifier")

Settle = Literal["ack", "nak", "term"]
FINAL: Final = frozenset({"delivered", "dead", "skipped"})  # nothing more to do


class Deliveries:
    """Delivers notification messages to ``webhook`` (None: record them as ``skipped``).

    ``counts`` tallies outcomes (delivered, retried, dead, skipped, dropped, duplicate, poison,
    errors) for metrics.
    """

    def __init__(
        self,
        js: JetStreamContext,
        kv: KeyValue,
        store: OrderStore,
        webhook: Webhook | None,
        policy: DeliveryPolicy,
    ) -> None:
        self.js = js
        self.kv = kv
        self.store = store
        self.replies = store.replies  # the node's cheaper requests, for the state writes
        self.policy = policy
        self.counts: collections.Counter[str] = collections.Counter()
        self._webhook = webhook
        self._settling: set[int] = set()  # id() of messages whose outcome is being written

    async def deliver(self, msg: Msg) -> None:
        """Decide the outcome of ``msg``; nothing escapes but a cancellation, which hands the
        message back (nak) unless its outcome is already being written."""
        ids: dict[str, Any] = {"stream_seq": msg.metadata.sequence.stream}  # + order and kind
        try:
            await self._handle(msg, ids)
        except asyncio.CancelledError:
            if id(msg) not in self._settling:  # else it was delivered, written and acked
                await self._settle(msg, ids, "nak")  # shutdown: hand it back at once
            raise
        except OrderflowError as exc:  # the broker, mostly: try again in a while
            self._count("errors", ids)
            log.warning("notification not handled: %s", exc, extra={"event": "notify.error", **ids})
            await self._settle(msg, ids, "nak", self.policy.delay(msg.metadata.num_delivered))
        except Exception:
            self._count("errors", ids)
            log.exception("notification handling crashed", extra={"event": "notify.crashed", **ids})
            await self._settle(msg, ids, "nak", self.policy.delay(msg.metadata.num_delivered))
        finally:
            self._settling.discard(id(msg))

    async def _handle(self, msg: Msg, ids: dict[str, Any]) -> None:
        try:
            note = decode_notification(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._poison(msg, f"undecodable notification: {exc}", ids)
            return
        ids.update(order_id=note.order_id, kind=note.kind)
        if note.kind == DELAYED:  # decided before any state is written: a dropped one has none
            current = await self._still_late(note)
            if current is None:
                self._count("dropped", ids)
                await self._settle(msg, ids, "ack")
                return
            note = current
        if self._webhook is None:
            why = "ORDERFLOW_NOTIFY_WEBHOOK is unset"
            go_on, _ = await self._begin(msg, note, "skipped", why, ids)
            if go_on:
                self._count("skipped", ids)
                await self._settle(msg, ids, "ack")
            return
        go_on, before = await self._begin(msg, note, "pending", None, ids)
        if go_on:
            await self._post(msg, note, before, ids, self._webhook)

    async def _begin(
        self, msg: Msg, note: Notification, state: StateName, error: str | None, ids: dict[str, Any]
    ) -> tuple[bool, DeliveryState | None]:
        """Write the first state (``skipped``, or ``pending``: a crash from it to the outcome
        leaves "maybe sent") create-only, so the normal path reads nothing (ADR 0020). A key
        taken means a delivery began before: read it. A final state (a re-publish after the
        dedup window, a redelivery after a crash) is acked as a duplicate and (False, it)
        answered: a delivered notification is never sent again, a dead one never restarted.
        Otherwise (True, the state found): its attempts count on, and a ``pending`` or
        ``failed`` one stays as it is until the POST's outcome."""
        if await create_state(self.replies, self._state(note, state, None, error)):
            return True, None
        before = await read_state(self.kv, note.order_id, note.kind)
        if before is not None and before.state in FINAL:
            self._count("duplicate", ids)
            await self._settle(msg, ids, "ack")
            return False, before
        if before is None or state == "skipped":  # vanished meanwhile, or skipped from now on
            await self._record(note, state, before, error)
        return True, before

    async def _post(
        self,
        msg: Msg,
        note: Notification,
        before: DeliveryState | None,
        ids: dict[str, Any],
        webhook: Webhook,
    ) -> None:
        try:
            async with self._kept_alive(msg, ids):
                await webhook.post(note.notification_id, encode(note))
        except DeliveryFailed as exc:
            await self._failed(msg, note, before, exc, ids)
            return
        writing = asyncio.ensure_future(self._delivered(msg, note, before, ids))
        try:
            await asyncio.shield(writing)
        except asyncio.CancelledError:
            self._settling.add(id(msg))  # a shutdown waits for the state and the ack, then ends
            await asyncio.wait({writing})
            raise

    async def _still_late(self, note: Notification) -> Notification | None:
        """The delayed notification as the order stands now; None when it must not be sent."""
        try:
            order = await self.store.get(note.order_id)
        except OrderNotFound:
            log.info(
                "order.delayed for an order that does not exist",
                extra={"event": "notify.dropped", "order_id": note.order_id},
            )
            return None
        if order.complete_time is not None and order.complete_time <= note.time:
            return None  # finished in time; its schedule fired before it was cancelled
        return msgspec.structs.replace(
            note, customer_id=order.customer_id, contact=order.contact, status=order.status
        )

    async def _delivered(
        self, msg: Msg, note: Notification, before: DeliveryState | None, ids: dict[str, Any]
    ) -> None:
        await self._record(note, "delivered", before, None)
        self._count("delivered", ids)
        await self._settle(msg, ids, "ack")

    async def _failed(
        self,
        msg: Msg,
        note: Notification,
        before: DeliveryState | None,
        exc: DeliveryFailed,
        ids: dict[str, Any],
    ) -> None:
        attempt = msg.metadata.num_delivered
        if attempt < self.policy.max_deliver:
            await self._record(note, "failed", before, exc.reason)
            self._count("retried", ids)
            delay = self.policy.delay(attempt)
            log.warning(
                "notification not delivered (%s), retrying in %.1fs",
                exc.reason,
                delay,
                extra={"event": "notify.retry", "attempt": attempt, **ids},
            )
            await self._settle(msg, ids, "nak", delay)
            return
        reason = f"{note.kind} not delivered after {attempt} attempts: {exc.reason}"
        await copy_to_dlq(self.js, msg, reason, note.order_id, note.notification_id)
        await self._record(note, "dead", before, exc.reason)
        self._count("dead", ids)
        log.error(
            "notification dead-lettered: %s",
            reason,
            extra={"event": "notify.dead", "attempt": attempt, **ids},
        )
        await self._settle(msg, ids, "term")

    async def _poison(self, msg: Msg, reason: str, ids: dict[str, Any]) -> None:
        """Never deliverable: kept in ``ORDERS_DLQ`` (a failed copy is retried), not redelivered."""
        await copy_to_dlq(self.js, msg, reason, None, None)
        self._count("poison", ids)
        log.error("notification dead-lettered: %s", reason, extra={"event": "notify.poison", **ids})
        await self._settle(msg, ids, "term")

    async def _record(
        self, note: Notification, state: StateName, before: DeliveryState | None, error: str | None
    ) -> None:
        """Write the (order, kind)'s state over whatever it was."""
        await write_state(self.replies, self._state(note, state, before, error))

    @staticmethod
    def _state(
        note: Notification, state: StateName, before: DeliveryState | None, error: str | None
    ) -> DeliveryState:
        """The state to write. ``attempts`` counts POSTs begun: every state but ``skipped`` is
        written for one, and a ``pending`` left by a crash counts as one."""
        now = utcnow()
        made = before.attempts if before else 0
        return DeliveryState(
            notification_id=note.notification_id,
            kind=note.kind,
            order_id=note.order_id,
            state=state,
            attempts=made if state == "skipped" else made + 1,
            last_error=error,
            delivered_at=now if state == "delivered" else None,
            updated_at=now,
        )

    @contextlib.asynccontextmanager
    async def _kept_alive(self, msg: Msg, ids: dict[str, Any]) -> AsyncIterator[None]:
        """``in_progress()`` every third of the ack wait while a POST runs."""
        ticker = asyncio.create_task(self._progress(msg, ids))
        try:
            yield
        finally:
            ticker.cancel()
            await asyncio.wait({ticker})

    async def _progress(self, msg: Msg, ids: dict[str, Any]) -> None:
        while True:
            await asyncio.sleep(self.policy.ack_wait / 3)
            try:
                await msg.in_progress()
            except ANY_NATS_ERROR as exc:  # the POST goes on; at worst it is redelivered
                log.warning("in_progress failed: %r", exc, extra={"event": "notify.error", **ids})

    async def _settle(
        self, msg: Msg, ids: dict[str, Any], how: Settle, delay: float | None = None
    ) -> None:
        """ack, nak or term; a failure is logged: the message comes back after the ack wait."""
        try:
            if how == "ack":
                await msg.ack()
            elif how == "nak":
                await msg.nak(delay=delay)
            else:
                await msg.term()
        except ANY_NATS_ERROR as exc:
            log.warning("%s failed: %r", how, exc, extra={"event": "notify.settle_failed", **ids})

    def _count(self, outcome: str, ids: dict[str, Any]) -> None:
        self.counts[outcome] += 1
        log.debug("notification %s", outcome, extra={"event": f"notify.{outcome}", **ids})
