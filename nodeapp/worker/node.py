"""The worker node: a pull consumer on ``ORDERS``/``workers`` holding at most ``concurrency``
orders, each driven by an ``OrderRun`` in a task the node owns.

Shutdown (SIGTERM, or ``drain()``): stop fetching, let each order finish its current step, hand
the rest back (lease released, message nak'ed so another node continues at once), leave the
registry, close the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import string
import time
from typing import Final

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from nodeapp import __version__
from nodeapp.broker.connection import ANY_NATS_ERROR, broker_errors, jetstream
from nodeapp.broker.resources import (
    ORDERS_STREAM,
    WORKERS_CONSUMER,
    Buckets,
    ensure_resources_patiently,
)
from nodeapp.cluster.advisories import watch_max_deliveries
from nodeapp.cluster.control import is_node_id
from nodeapp.cluster.dead_letters import dead_letter
from nodeapp.cluster.membership import Heartbeat, NodeStats
from nodeapp.cluster.reconciler import Reconciler
from nodeapp.core.errors import BrokerUnavailable, OrderflowError
from nodeapp.core.settings import Settings
from nodeapp.orders.model import decode_work, encode, utcnow
from nodeapp.orders.store import OrderStore
from nodeapp.worker.pipeline import Observer, OrderRun, Outcome, Worker
from nodeapp.worker.steps import SimulatedSteps

log = logging.getLogger("orderflow.node")

FETCH_TIMEOUT: Final = 1.0
HEARTBEAT_INTERVAL: Final = 1.0
RETRY_PAUSE: Final = 0.5


def make_node_id() -> str:
    """Unique per process start: a restarted node is a new node (and a new lease epoch).

    Only ``[A-Za-z0-9_-]``: the id is a KV key and a single subject token (drain requests).
    """
    host = "".join(c if c in _ID_CHARS else "-" for c in socket.gethostname())[:40]
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


_ID_CHARS: Final = frozenset(string.ascii_letters + string.digits + "-_")


class Node:
    """Pulls work, runs orders, heart-beats; ``run()`` returns after a drain."""

    def __init__(
        self,
        settings: Settings,
        js: JetStreamContext,
        buckets: Buckets,
        node_id: str | None = None,
        observer: Observer | None = None,
        *,
        nc: NATS,
    ) -> None:
        self.settings = settings
        self.nc = nc
        self.js = js
        self.buckets = buckets
        self.node_id = node_id or make_node_id()
        if not is_node_id(self.node_id):
            raise OrderflowError(f"invalid node id {self.node_id!r}: use 1-128 of A-Z a-z 0-9 _ -")
        self.started_at = utcnow()
        self.stats = NodeStats()
        self.draining = asyncio.Event()
        # Set once no pull request of ours can still be open on the server: only then is a nak
        # on drain safe, else the server could hand the message straight back to us.
        self.pulls_closed = asyncio.Event()
        self._pull_open_until = 0.0
        self.worker = Worker(
            node_id=self.node_id,
            store=OrderStore(buckets.orders),
            steps=SimulatedSteps(settings),
            stats=self.stats,
            lease=settings.lease_seconds,
            ack_wait=settings.ack_wait,
            draining=self.draining,
            pulls_closed=self.pulls_closed,
            fenced=self.fenced,
            observer=observer,
        )
        self.ops_url: str | None = None
        self._last_beat = time.monotonic()
        self.runs: dict[str, OrderRun] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_free = asyncio.Event()

    def fenced(self) -> bool:
        """True when our heartbeat has not been stored for longer than the lease: the cluster
        may think us dead and take our orders, so we stop taking and advancing work."""
        return time.monotonic() - self._last_beat > self.settings.lease_seconds

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def drain(self) -> None:
        """Ask the node to stop taking work and hand back what it holds; safe to call twice."""
        if not self.draining.is_set():
            log.info("draining", extra={"event": "node.draining", "node_id": self.node_id})
        self.draining.set()
        self._slot_free.set()

    async def run(self) -> None:
        with broker_errors("binding consumer"):
            sub = await self.js.pull_subscribe_bind(durable=WORKERS_CONSUMER, stream=ORDERS_STREAM)
        # Listening before the first pull: JetStream reports an exhausted message on a pull.
        store = self.worker.store
        async with watch_max_deliveries(self.nc, self.js, store, self.stats, self.node_id):
            await self._run(sub)

    async def _run(self, sub: JetStreamContext.PullSubscription) -> None:
        stopped = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat_loop(stopped), name="heartbeat")
        reconciler = Reconciler(
            self.settings, self.js, self.buckets.reconciler, self.node_id, self.stats
        )
        # A draining node stops competing for (and resigns) the reconciler's lead.
        reconciling = asyncio.create_task(reconciler.run(self.draining), name="reconciler")
        log.info(
            "node started",
            extra={
                "event": "node.started",
                "node_id": self.node_id,
                "concurrency": self.settings.concurrency,
            },
        )
        try:
            await self._fetch_loop(sub)
            await self._close_pulls(sub)
            await self._finish_runs()
        finally:
            self.draining.set()
            stopped.set()
            await reconciling
            await heartbeat
            await self._leave_registry()
            with contextlib.suppress(*ANY_NATS_ERROR):
                await sub.unsubscribe()
        log.info("node stopped", extra={"event": "node.stopped", "node_id": self.node_id})

    async def _fetch_loop(self, sub: JetStreamContext.PullSubscription) -> None:
        concurrency = self.settings.concurrency
        while not self.draining.is_set():
            if self.fenced():
                # Wait for the heartbeat loop to get through before taking new work.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.draining.wait(), RETRY_PAUSE)
                continue
            free = concurrency - len(self._tasks)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            self._pull_open_until = asyncio.get_running_loop().time() + FETCH_TIMEOUT
            try:
                msgs = await sub.fetch(free, timeout=FETCH_TIMEOUT)
            except nats.errors.TimeoutError:
                continue
            except ANY_NATS_ERROR as exc:
                log.warning(
                    "fetch failed: %r",
                    exc,
                    extra={"event": "node.fetch_failed", "node_id": self.node_id},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.draining.wait(), RETRY_PAUSE)
                continue
            for msg in msgs:
                self._dispatch(msg)

    async def _close_pulls(self, sub: JetStreamContext.PullSubscription) -> None:
        """Wait out our last pull request, then hand back what it delivered but we never ran."""
        remaining = self._pull_open_until - asyncio.get_running_loop().time()
        if remaining > 0:
            # The server ends the request at its known expiry; there is no event to await.
            await asyncio.sleep(remaining)
        queue = sub._sub._pending_queue  # nats-py keeps early deliveries here for the next fetch
        while not queue.empty():
            msg = queue.get_nowait()
            if not (msg.reply or "").startswith("$JS.ACK"):
                continue  # a status message (408/404), not a delivery
            self._dispatch(msg)
        self.pulls_closed.set()

    def _dispatch(self, msg: Msg) -> None:
        self.stats.received += 1
        if msg.metadata.num_delivered > 1:
            self.stats.redeliveries += 1
        try:
            order_id = decode_work(msg.data).order_id
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
            self._spawn(self._dead_letter(msg, f"undecodable work message: {exc}", None))
            return
        if self.draining.is_set():
            self._spawn(self._nak_quietly(msg, order_id))
            return
        current = self.runs.get(order_id)
        if current is not None:
            # A redelivery of an order this node is working on: answer on the newest delivery.
            current.msg = msg
            return
        run = OrderRun(self.worker, order_id, msg)
        self.runs[order_id] = run
        self._spawn(self._process(run))

    def _spawn(self, work: asyncio.Future[None] | asyncio.Task[None] | object) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            # _process catches everything it expects; anything else is a bug worth shouting about.
            log.error(
                "order task crashed",
                exc_info=task.exception(),
                extra={"event": "node.task_crashed", "node_id": self.node_id},
            )

    async def _process(self, run: OrderRun) -> None:
        try:
            outcome = await run.run()
            if outcome is Outcome.NO_DOCUMENT:
                await self._dead_letter(run.msg, "no order document", run.order_id)
            elif outcome is Outcome.ABANDONED:
                self.stats.abandoned += 1
        except Exception:
            self.stats.errors += 1
            log.exception(
                "order run failed unexpectedly; retrying after the ack wait",
                extra={"event": "order.error", "order_id": run.order_id, "node_id": self.node_id},
            )
            await self._nak_quietly(run.msg, run.order_id, self.settings.ack_wait)
        finally:
            if self.runs.get(run.order_id) is run:
                del self.runs[run.order_id]

    async def _dead_letter(self, msg: Msg, reason: str, order_id: str | None) -> None:
        try:
            await dead_letter(self.js, msg, reason, order_id)
            self.stats.dead_lettered += 1
        except BrokerUnavailable as exc:
            log.warning(
                "dead-lettering failed, message will be redelivered: %s",
                exc,
                extra={"event": "order.dead_letter_failed", "order_id": order_id},
            )

    async def _nak_quietly(self, msg: Msg, order_id: str, delay: float | None = None) -> None:
        if self.draining.is_set():
            await self.pulls_closed.wait()
        try:
            with broker_errors("nak"):
                await msg.nak(delay=delay)
        except BrokerUnavailable as exc:
            log.warning(
                "nak failed: %s", exc, extra={"event": "order.nak_failed", "order_id": order_id}
            )

    async def _finish_runs(self) -> None:
        """Give runs time to finish their current step and hand back; cancel what is left."""
        if not self._tasks:
            return
        grace = self.settings.step_seconds + self.settings.ack_wait
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            log.warning(
                "cancelled %d orders still running after %.1fs",
                len(pending),
                grace,
                extra={"event": "node.drain_cancelled"},
            )

    def heartbeat(self) -> Heartbeat:
        return Heartbeat(
            node_id=self.node_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            started_at=self.started_at,
            state="draining" if self.draining.is_set() else "active",
            concurrency=self.settings.concurrency,
            in_flight=self.in_flight,
            ops_url=self.ops_url,
            counters=self.stats,
            updated_at=utcnow(),
        )

    async def _heartbeat_loop(self, stopped: asyncio.Event) -> None:
        next_beat = time.monotonic()
        while not stopped.is_set():
            try:
                with broker_errors("heartbeat"):
                    await self.buckets.nodes.put(self.node_id, encode(self.heartbeat()))
                if self.fenced():
                    log.info("heartbeat stored again; unfenced", extra={"event": "node.unfenced"})
                self._last_beat = time.monotonic()
            except BrokerUnavailable as exc:
                log.warning(
                    "heartbeat not written: %s", exc, extra={"event": "node.heartbeat_failed"}
                )
            next_beat += HEARTBEAT_INTERVAL
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), max(0.0, next_beat - time.monotonic()))

    async def _leave_registry(self) -> None:
        try:
            with broker_errors("leaving registry"):
                await self.buckets.nodes.delete(self.node_id)
        except BrokerUnavailable as exc:
            log.warning("could not remove heartbeat (it expires by TTL): %s", exc)


async def start_node(
    settings: Settings, nc: NATS, node_id: str | None = None, observer: Observer | None = None
) -> Node:
    js = jetstream(nc, settings)
    buckets = await ensure_resources_patiently(js, settings)
    return Node(settings, js, buckets, node_id, observer, nc=nc)
