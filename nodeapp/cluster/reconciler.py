"""The reconciler: re-drives orders that stopped moving while nothing is pending for them.

Causes it covers: an api that died between storing an order and publishing its work message, a
work message lost with a broker's disk, a message given up after ``max_deliver``... anything that
leaves a non-terminal document without a live owner or a queued message.

One node at a time runs it (a leader lease in KV ``reconciler``, compare-and-set like orders).
The leader follows the ``orders`` bucket's stream from a checkpoint, keeps the set of orders not
yet terminal, and every sweep re-publishes the work message of those that are stuck:

- ``accepted`` for longer than ``reconcile_after``, no owner, and the ``workers`` consumer has
  already delivered every message published before the order was first seen (so its message is
  not merely waiting in a backlog);
- ``running``/``rolling_back`` whose lease ended more than ``reconcile_after`` ago.

Re-driving is safe even when it was not needed: nodes claim by compare-and-set and ack a message
for a finished order. The checkpoint (the oldest stream sequence still needed) is stored after
every sweep, so a new leader does not rescan everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from nodeapp.broker.connection import ANY_NATS_ERROR, broker_errors
from nodeapp.broker.resources import ORDERS_BUCKET, ORDERS_STREAM, WORK_SUBJECT, WORKERS_CONSUMER
from nodeapp.cluster.membership import NodeStats
from nodeapp.core.errors import BrokerUnavailable
from nodeapp.core.settings import Settings
from nodeapp.core.tracing import inject_headers
from nodeapp.orders.model import decode_order, encode, utcnow

log = logging.getLogger("orderflow.reconciler")

LEADER_KEY: Final = "leader"
CHECKPOINT_KEY: Final = "checkpoint"
KV_PREFIX: Final = f"$KV.{ORDERS_BUCKET}."
KV_STREAM: Final = f"KV_{ORDERS_BUCKET}"  # named: no lookup by subject (nats-auth.conf allows none)


class Leader(msgspec.Struct):
    node_id: str
    expires_at: datetime


class Checkpoint(msgspec.Struct):
    seq: int


class Tracked(msgspec.Struct):
    """What the leader remembers of a non-terminal order."""

    first_seq: int
    status: str
    progress: datetime
    lease_expires_at: datetime | None
    orders_seq_seen: int | None = None  # ORDERS stream's last sequence when first swept


_leader = msgspec.json.Decoder(Leader)
_checkpoint = msgspec.json.Decoder(Checkpoint)


def last_progress(data: bytes) -> Tracked | None:
    """Decode a revision; None for a terminal or dead-lettered order."""
    order = decode_order(data)
    if order.terminal or order.dead_letter:
        return None
    times = [order.start_time]
    for step in order.steps:
        times += [t for t in (step.start_time, step.complete_time, step.rollback_time) if t]
    lease = order.owner.lease_expires_at if order.owner else None
    return Tracked(first_seq=0, status=order.status, progress=max(times), lease_expires_at=lease)


async def _unless_stopped(next_msg: Coroutine[Any, Any, Msg], stop: asyncio.Event) -> Msg | None:
    """``next_msg``'s message, or None as soon as ``stop`` is set (the wait is then cancelled)."""
    getting = asyncio.ensure_future(next_msg)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        pending = {t for t in (getting, stopping) if not t.done()}
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    return None if getting.cancelled() else getting.result()


class Reconciler:
    """Runs on every node; acts only while this node holds the leader lease."""

    def __init__(
        self,
        settings: Settings,
        js: JetStreamContext,
        kv: KeyValue,
        node_id: str,
        stats: NodeStats,
    ) -> None:
        self.settings = settings
        self.js = js
        self.kv = kv
        self.node_id = node_id
        self.stats = stats
        self.interval = max(0.5, min(settings.reconcile_after / 3, 10.0))
        self.lease = max(3 * self.interval, settings.lease_seconds)
        self.tracked: dict[str, Tracked] = {}
        self.is_leader = False
        self._leader_revision: int | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign and, while leading, follow and sweep; return when ``stop`` is set."""
        while not stop.is_set():
            try:
                if await self._campaign():
                    await self._lead(stop)
            except BrokerUnavailable as exc:
                log.warning("reconciler paused: %s", exc, extra={"event": "reconciler.paused"})
                self.is_leader = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
        await self._resign()

    async def _campaign(self) -> bool:
        """Take or renew the leader lease by compare-and-set; True while we hold it."""
        now = utcnow()
        mine = encode(Leader(self.node_id, now + timedelta(seconds=self.lease)))
        with broker_errors("reconciler leader lease"):
            try:
                entry = await self.kv.get(LEADER_KEY)
            except nats.js.errors.KeyNotFoundError:
                entry = None
            try:
                if entry is None or entry.value is None:
                    self._leader_revision = await self.kv.create(LEADER_KEY, mine)
                else:
                    current = _leader.decode(entry.value)
                    if current.node_id != self.node_id and current.expires_at > now:
                        self.is_leader = False
                        return False
                    self._leader_revision = await self.kv.update(
                        LEADER_KEY, mine, last=entry.revision
                    )
            except nats.js.errors.KeyWrongLastSequenceError:
                self.is_leader = False
                return False
        if not self.is_leader:
            log.info(
                "reconciler leader", extra={"event": "reconciler.leader", "node_id": self.node_id}
            )
        self.is_leader = True
        return True

    async def _resign(self) -> None:
        """Give the lead up now rather than when its lease runs out."""
        if not self.is_leader or self._leader_revision is None:
            return
        self.is_leader = False
        try:
            await self.kv.delete(LEADER_KEY, last=self._leader_revision)
        except ANY_NATS_ERROR as exc:  # nothing more to do: the lead ends with its lease
            log.warning(
                "reconciler lead not resigned: %r",
                exc,
                extra={"event": "reconciler.resign_failed", "node_id": self.node_id},
            )

    async def _lead(self, stop: asyncio.Event) -> None:
        """Follow the orders bucket from the checkpoint; sweep and renew every interval."""
        start = await self._load_checkpoint()
        self.tracked.clear()
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
        with broker_errors("following the orders bucket"):
            sub = await self.js.subscribe(
                f"{KV_PREFIX}>",
                stream=KV_STREAM,
                ordered_consumer=True,
                config=config,
                idle_heartbeat=5.0,
            )
        last_seq = start - 1
        try:
            loop = asyncio.get_running_loop()
            next_sweep = loop.time() + self.interval
            while not stop.is_set():
                try:
                    wait = max(0.01, next_sweep - loop.time())
                    msg = await _unless_stopped(sub.next_msg(timeout=wait), stop)
                except (TimeoutError, nats.errors.TimeoutError):
                    msg = None
                if stop.is_set():
                    return  # a draining node resigns now, not at the next sweep
                if msg is not None:
                    last_seq = msg.metadata.sequence.stream
                    self._track(msg.subject[len(KV_PREFIX) :], msg.data, msg.headers, last_seq)
                    continue
                await self._sweep()
                await self._save_checkpoint(last_seq)
                if not await self._campaign():
                    return
                next_sweep = loop.time() + self.interval
        finally:
            await self._unfollow(sub)

    async def _unfollow(self, sub: JetStreamContext.PushSubscription) -> None:
        try:
            await sub.unsubscribe()
        except ANY_NATS_ERROR as exc:  # nothing more to do: it ends with the connection
            log.warning(
                "could not stop following the orders bucket: %r",
                exc,
                extra={"event": "reconciler.unsubscribe_failed", "node_id": self.node_id},
            )

    def _track(self, order_id: str, data: bytes, headers: dict[str, str] | None, seq: int) -> None:
        if (headers and headers.get("KV-Operation") in ("DEL", "PURGE")) or not data:
            self.tracked.pop(order_id, None)
            return
        try:
            state = last_progress(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error(  # noqa: TRY400 - the revision is bad data, a traceback adds nothing
                "undecodable order revision %s: %s",
                seq,
                exc,
                extra={"event": "reconciler.bad_revision", "order_id": order_id},
            )
            return
        if state is None:
            self.tracked.pop(order_id, None)
            return
        previous = self.tracked.get(order_id)
        state.first_seq = previous.first_seq if previous else seq
        state.orders_seq_seen = previous.orders_seq_seen if previous else None
        self.tracked[order_id] = state

    async def _sweep(self) -> None:
        if not self.tracked:
            return
        now = utcnow()
        threshold = timedelta(seconds=self.settings.reconcile_after)
        with broker_errors("reading the work queue state"):
            stream = await self.js.stream_info(ORDERS_STREAM)
            consumer = await self.js.consumer_info(ORDERS_STREAM, WORKERS_CONSUMER)
        delivered = consumer.delivered.stream_seq or 0
        for order_id, state in list(self.tracked.items()):
            if state.orders_seq_seen is None:
                state.orders_seq_seen = stream.state.last_seq
            if now - state.progress < threshold:
                continue
            if state.status == "accepted":
                stuck = state.lease_expires_at is None and delivered >= state.orders_seq_seen
            else:
                stuck = state.lease_expires_at is None or now - state.lease_expires_at > threshold
            if stuck:
                await self._redrive(order_id, state)

    async def _redrive(self, order_id: str, state: Tracked) -> None:
        headers = inject_headers(
            {"Nats-Msg-Id": f"{order_id}:redrive:{state.progress.isoformat()}"}
        )
        with broker_errors(f"re-driving {order_id}"):
            await self.js.publish(WORK_SUBJECT, encode({"order_id": order_id}), headers=headers)
        self.stats.reconciled += 1
        # Give the order another full threshold before looking at it again.
        state.progress = utcnow()
        log.warning(
            "re-driven: no progress and nothing pending",
            extra={
                "event": "order.redriven",
                "order_id": order_id,
                "status": state.status,
                "node_id": self.node_id,
            },
        )

    async def _load_checkpoint(self) -> int:
        with broker_errors("reading the reconciler checkpoint"):
            try:
                entry = await self.kv.get(CHECKPOINT_KEY)
            except nats.js.errors.KeyNotFoundError:
                return 1
        return max(1, _checkpoint.decode(entry.value or b'{"seq":1}').seq)

    async def _save_checkpoint(self, last_seq: int) -> None:
        """The oldest revision still needed: where a new leader must start to rebuild the set."""
        oldest = min((t.first_seq for t in self.tracked.values()), default=last_seq + 1)
        with broker_errors("storing the reconciler checkpoint"):
            await self.kv.put(CHECKPOINT_KEY, encode(Checkpoint(oldest)))
