"""The reconciler: re-drives orders that stopped moving while nothing is pending for them.

Causes it covers: an api that died between storing an order and publishing its work message, a
work message lost with a broker's disk, a message given up after ``max_deliver``... anything that
leaves a non-terminal document without a live owner or a queued message.

One node at a time runs it (``LeaderLease``, compare-and-set like orders). The leader follows
the ``orders`` bucket's stream from a checkpoint, headers only (ADR 0019): each revision tells
it the order id, the stream sequence, when it was stored and the order's status (the store
writes it in a header), so it keeps a few numbers per order not yet terminal and decodes no
document. Every sweep it reads the latest document of the orders that look stuck and
re-publishes the work message of those that are:

- ``accepted`` for longer than ``reconcile_after``, no owner, and the ``workers`` consumer has
  already delivered every message published before the order was first seen (so its message is
  not merely waiting in a backlog: that is known from the numbers, without a read);
- ``running``/``rolling_back`` whose lease ended more than ``reconcile_after`` ago.

Re-driving is safe even when it was not needed: nodes claim by compare-and-set and ack a message
for a finished order. The checkpoint (the oldest stream sequence still needed) is stored after
every sweep, so a new leader does not rescan everything.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from datetime import datetime, timedelta
from typing import Final

import msgspec
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from nodeapp.broker.connection import ANY_NATS_ERROR, broker_errors
from nodeapp.broker.resources import ORDERS_BUCKET, ORDERS_STREAM, WORK_SUBJECT, WORKERS_CONSUMER
from nodeapp.cluster.leadership import LeaderLease
from nodeapp.cluster.membership import NodeStats
from nodeapp.core.errors import BrokerUnavailable, OrderNotFound
from nodeapp.core.settings import Settings
from nodeapp.core.tracing import inject_headers
from nodeapp.orders.model import TERMINAL_STATUSES, Order, encode, utcnow
from nodeapp.orders.store import STATUS_HEADER, OrderStore

log = logging.getLogger("orderflow.reconciler")

CHECKPOINT_KEY: Final = "checkpoint"
KV_PREFIX: Final = f"$KV.{ORDERS_BUCKET}."
KV_STREAM: Final = f"KV_{ORDERS_BUCKET}"
REMOVED: Final = frozenset({"DEL", "PURGE"})
ACK_TOKENS_V1: Final = 9  # tokens of an ack subject without domain and account hash


class Checkpoint(msgspec.Struct):
    seq: int


class Tracked(msgspec.Struct, gc=False):
    """What the leader keeps of an order not yet terminal: numbers from its revisions' headers
    (about 200 bytes with its key, so 40 000 queued orders are a few MiB)."""

    first_seq: int  # its first revision seen: where a new leader must start
    stored: float  # when its latest revision was stored, or when to look again (epoch seconds)
    accepted: bool  # its latest revision says no node has claimed it


_checkpoint = msgspec.json.Decoder(Checkpoint)


def last_progress(order: Order) -> datetime:
    """The latest time the document records: submit, or a step's start, end or rollback."""
    times = [order.start_time]
    for step in order.steps:
        times += [t for t in (step.start_time, step.complete_time, step.rollback_time) if t]
    return max(times)


class Reconciler:
    """Runs on every node; acts only while this node holds the leader lease."""

    def __init__(
        self,
        settings: Settings,
        js: JetStreamContext,
        kv: KeyValue,
        store: OrderStore,
        node_id: str,
        stats: NodeStats,
    ) -> None:
        self.settings = settings
        self.js = js
        self.kv = kv
        self.store = store
        self.node_id = node_id
        self.stats = stats
        self.interval = max(0.5, min(settings.reconcile_after / 3, 10.0))
        self.lease = LeaderLease(kv, node_id, max(3 * self.interval, settings.lease_seconds))
        self.tracked: dict[str, Tracked] = {}
        # One mark a sweep: (last revision seen, ORDERS' last sequence then). An order first seen
        # at or before a mark's revision had its work message published by that sequence.
        self._marks: list[tuple[int, int]] = []
        self._last_seq = 0

    @property
    def is_leader(self) -> bool:
        return self.lease.held

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign and, while leading, follow and sweep; return when ``stop`` is set."""
        while not stop.is_set():
            try:
                if await self.lease.campaign():
                    await self._lead(stop)
            except BrokerUnavailable as exc:
                log.warning("reconciler paused: %s", exc, extra={"event": "reconciler.paused"})
                self.lease.held = False
            await _wait(stop, self.interval)
        await self.lease.resign()

    async def _lead(self, stop: asyncio.Event) -> None:
        """Follow the orders bucket from the checkpoint; sweep and renew every interval."""
        start = await self._load_checkpoint()
        self.tracked.clear()
        self._marks.clear()
        self._last_seq = start - 1
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start, headers_only=True
        )
        with broker_errors("following the orders bucket"):
            sub = await self.js.subscribe(
                f"{KV_PREFIX}>",
                stream=KV_STREAM,
                ordered_consumer=True,
                config=config,
                idle_heartbeat=5.0,
                cb=self._revision,
            )
        try:
            while not await _wait(stop, self.interval):
                await self._sweep()
                await self._save_checkpoint()
                if not await self.lease.campaign():
                    return
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

    async def _revision(self, msg: Msg) -> None:
        """One revision's headers: track the order while open, forget it once it is not."""
        order_id = msg.subject[len(KV_PREFIX) :]
        headers = msg.headers or {}
        self._last_seq, stored = _position(msg.reply)
        status = headers.get(STATUS_HEADER)
        if status in TERMINAL_STATUSES or headers.get("KV-Operation") in REMOVED:
            self.tracked.pop(order_id, None)
            return
        accepted = status == "accepted"
        state = self.tracked.get(order_id)
        if state is None:
            self.tracked[order_id] = Tracked(self._last_seq, stored, accepted)
        else:
            state.stored, state.accepted = stored, accepted

    async def _sweep(self) -> None:
        if not self.tracked:
            self._marks.clear()
            return
        with broker_errors("reading the work queue state"):
            stream = await self.js.stream_info(ORDERS_STREAM)
            consumer = await self.js.consumer_info(ORDERS_STREAM, WORKERS_CONSUMER)
        self._marks.append((self._last_seq, stream.state.last_seq))
        delivered = consumer.delivered.stream_seq or 0
        quiet_since = time.time() - self.settings.reconcile_after
        for order_id, state in list(self.tracked.items()):
            if state.stored > quiet_since:
                continue
            if state.accepted and delivered < self._published_by(state.first_seq):
                continue  # its message may still be queued behind the backlog
            await self._inspect(order_id, state, delivered)
        oldest = min(t.first_seq for t in self.tracked.values()) if self.tracked else 0
        self._marks = self._marks[max(0, self._mark_for(oldest)) :]

    def _mark_for(self, first_seq: int) -> int:
        return bisect.bisect_left(self._marks, (first_seq, 0))

    def _published_by(self, first_seq: int) -> int:
        """ORDERS' last sequence at the first sweep after the order was first seen."""
        index = self._mark_for(first_seq)
        return self._marks[index][1] if index < len(self._marks) else self._marks[-1][1]

    async def _inspect(self, order_id: str, state: Tracked, delivered: int) -> None:
        """Read the order as it stands now and re-drive it if it is stuck."""
        try:
            order = await self.store.get(order_id)
        except OrderNotFound:
            self.tracked.pop(order_id, None)
            return
        if order.terminal or order.dead_letter:
            self.tracked.pop(order_id, None)
            return
        now = utcnow()
        threshold = timedelta(seconds=self.settings.reconcile_after)
        lease = order.owner.lease_expires_at if order.owner else None
        progress = last_progress(order)
        if order.status == "accepted":
            stuck = lease is None and now - progress >= threshold
        else:
            stuck = lease is None or now - lease > threshold
            progress = max(progress, lease) if lease else progress
        state.accepted = order.status == "accepted" and lease is None
        if stuck:
            await self._redrive(order_id, order.status, progress)
            state.stored = time.time()  # another full threshold before it is looked at again
        else:
            state.stored = progress.timestamp()

    async def _redrive(self, order_id: str, status: str, progress: datetime) -> None:
        headers = inject_headers({"Nats-Msg-Id": f"{order_id}:redrive:{progress.isoformat()}"})
        with broker_errors(f"re-driving {order_id}"):
            await self.js.publish(WORK_SUBJECT, encode({"order_id": order_id}), headers=headers)
        self.stats.reconciled += 1
        log.warning(
            "re-driven: no progress and nothing pending",
            extra={
                "event": "order.redriven",
                "order_id": order_id,
                "status": status,
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

    async def _save_checkpoint(self) -> None:
        """The oldest revision still needed: where a new leader must start to rebuild the set."""
        oldest = min((t.first_seq for t in self.tracked.values()), default=self._last_seq + 1)
        with broker_errors("storing the reconciler checkpoint"):
            await self.kv.put(CHECKPOINT_KEY, encode(Checkpoint(oldest)))


def _position(reply: str) -> tuple[int, float]:
    """A delivery's stream sequence and stored time (epoch seconds), from its ack subject:
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<cseq>.<ns>.<pending>``, or the same after
    a domain and an account hash. (``Msg.metadata`` builds objects and a datetime for this.)"""
    tokens = reply.split(".")
    offset = 0 if len(tokens) == ACK_TOKENS_V1 else 2
    return int(tokens[5 + offset]), int(tokens[7 + offset]) / 1e9


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Up to ``seconds``, less once ``stop`` is set; whether it is."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
