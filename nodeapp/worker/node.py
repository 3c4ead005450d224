"""The worker node: pulls from ``ORDERS``/``workers`` for its free slots and those of orders in
their last step (``Slots``, ADR 0022), and drives each order in a task it owns (``OrderRun``),
which claims it once it has a slot; ``Delivery`` answers each message.

Shutdown (SIGTERM, or ``drain()``): stop pulling, let each order finish its current step, hand
the rest back (lease released, message nak'ed once our last pull request is closed, so another
node continues at once; a message held ahead is nak'ed so too, unclaimed), leave the registry,
stop listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import string
from collections.abc import Coroutine
from typing import Any, Final

import msgspec
from nats.aio.msg import Msg

from nodeapp import __version__
from nodeapp.cluster.advisories import watch_max_deliveries
from nodeapp.cluster.control import is_node_id
from nodeapp.cluster.membership import Heartbeat, Membership, NodeStats
from nodeapp.cluster.reconciler import Reconciler
from nodeapp.core.errors import BrokerUnavailable, OrderflowError
from nodeapp.core.settings import Settings
from nodeapp.orders.cancellation import listen_for_hints
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import decode_work, utcnow
from nodeapp.shop.stock_audit import audit_while_leading
from nodeapp.worker.delivery import WorkAnswers
from nodeapp.worker.effects import ShopEffects
from nodeapp.worker.observer import Observer
from nodeapp.worker.pipeline import OrderRun
from nodeapp.worker.pulls import WorkPulls
from nodeapp.worker.slots import Slots, keep_held_alive
from nodeapp.worker.steps import Steps
from nodeapp.worker.stepwork import RunContext

log = logging.getLogger("orderflow.node")

FETCH_TIMEOUT: Final = 1.0  # how long one pull request waits for messages
RETRY_PAUSE: Final = 0.5
_ID_CHARS: Final = frozenset(string.ascii_letters + string.digits + "-_")


def make_node_id() -> str:
    """Unique per process start: a restarted node is a new node (and a new lease epoch).

    Only ``[A-Za-z0-9_-]``: the id is a KV key and a single subject token (drain requests).
    """
    host = "".join(c if c in _ID_CHARS else "-" for c in socket.gethostname())[:40]
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


class Node:
    """Pulls work, runs orders, heart-beats; ``run()`` returns after a drain.

    ``effects`` are the shop's services of the process (``nodeapp.worker.services``): open
    before the node runs, closed after ``run()`` returns."""

    def __init__(
        self,
        settings: Settings,
        handles: Handles,
        effects: ShopEffects,
        node_id: str | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.settings = settings
        self.nc, self.js, self.buckets = handles.nc, handles.js, handles.buckets
        self.node_id = node_id or make_node_id()
        if not is_node_id(self.node_id):
            raise OrderflowError(f"invalid node id {self.node_id!r}: use 1-128 of A-Z a-z 0-9 _ -")
        self.started_at = utcnow()
        self.stats = NodeStats()
        self.draining = asyncio.Event()
        # Set once no pull request of ours can still be open on the server: only then is a nak
        # on drain safe, else the server could hand the message straight back to us.
        self.pulls_closed = asyncio.Event()
        self.membership = Membership(
            self.buckets.nodes, self.node_id, settings.lease_seconds, self.heartbeat
        )
        self.answers = WorkAnswers(
            self.js, self.node_id, self.stats, settings.ack_wait, self.draining, self.pulls_closed
        )
        self.context = RunContext(
            node_id=self.node_id,
            lease=settings.lease_seconds,
            store=handles.store,
            steps=Steps(settings, effects),
            effects=effects,
            stats=self.stats,
            observer=observer or Observer(),
            draining=self.draining,
            fenced=self.fenced,
            keepalive_interval=min(settings.ack_wait, settings.lease_seconds) / 3,
        )
        self.pulls = WorkPulls(self.nc, self.node_id, self._dispatch)
        self.ops_url: str | None = None
        self.runs: dict[str, OrderRun] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.slots = Slots(settings.concurrency)

    def fenced(self) -> bool:
        """True when our heartbeat has not been stored for longer than the lease: the cluster
        may think us dead and take our orders, so we stop taking and advancing work."""
        return self.membership.fenced()

    @property
    def in_flight(self) -> int:
        """Slots taken: claimed orders not yet stamped terminal (a finished order's last write,
        notification and ack run outside its slot; a message held ahead has none yet)."""
        return self.slots.taken

    def drain(self) -> None:
        """Ask the node to stop taking work and hand back what it holds; safe to call twice."""
        if not self.draining.is_set():
            log.info("draining", extra={"event": "node.draining", "node_id": self.node_id})
        self.draining.set()
        self.slots.close()  # runs waiting for a slot start nothing: their messages go back

    async def run(self) -> None:
        await self.pulls.start()
        try:
            # Listening before the first pull: JetStream reports an exhausted message on a pull.
            store = self.context.store
            async with (
                watch_max_deliveries(self.nc, self.js, store, self.stats, self.node_id),
                listen_for_hints(self.nc, self._cancel_hinted),
            ):
                await self._run()
        finally:
            await self.pulls.close()

    async def _run(self) -> None:
        stopped = asyncio.Event()
        heartbeat = asyncio.create_task(self.membership.run(stopped), name="heartbeat")
        holding = asyncio.create_task(
            keep_held_alive(self.slots, self.context.keepalive_interval, stopped), name="held"
        )
        reconciler = Reconciler(
            self.settings,
            self.js,
            self.buckets.reconciler,
            self.context.store,
            self.node_id,
            self.stats,
        )
        # A draining node stops competing for (and resigns) the reconciler's lead.
        reconciling = asyncio.create_task(reconciler.run(self.draining), name="reconciler")
        auditing = asyncio.create_task(  # the leader also gives back leaked reservations
            audit_while_leading(
                self.context.effects.stock,
                self.context.store,
                lambda: reconciler.is_leader,
                self.draining,
                self.settings.reconcile_after,
            ),
            name="stock-audit",
        )
        log.info(
            "node started",
            extra={
                "event": "node.started",
                "node_id": self.node_id,
                "concurrency": self.settings.concurrency,
            },
        )
        try:
            await self._fetch_loop()
            await self._close_pulls()
            await self._finish_runs()
        finally:
            self.draining.set()
            stopped.set()
            await reconciling
            await auditing
            await heartbeat
            await holding
            await self.membership.leave()
        log.info("node stopped", extra={"event": "node.stopped", "node_id": self.node_id})

    async def _fetch_loop(self) -> None:
        """One pull request at a time, for the free slots and those about to free."""
        while not self.draining.is_set():
            if self.fenced():
                await self._pause()  # until the heartbeat loop gets through again
                continue
            wanted = self.slots.wanted
            if wanted <= 0:
                self.slots.changed.clear()
                await self.slots.changed.wait()
                continue
            try:
                await self.pulls.request(wanted, FETCH_TIMEOUT)
            except BrokerUnavailable as exc:
                log.warning(
                    "fetch failed: %s",
                    exc,
                    extra={"event": "node.fetch_failed", "node_id": self.node_id},
                )
                await self._pause()
                continue
            if not await self.pulls.ended(self.draining):
                await self._pause()

    async def _pause(self) -> None:
        """``RETRY_PAUSE`` seconds, or less if the node starts draining."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.draining.wait(), RETRY_PAUSE)

    async def _close_pulls(self) -> None:
        """Wait until our last pull request is closed; only then may hand-backs nak (ADR 0004).
        What it delivered meanwhile was declined on arrival and is nak'ed now too."""
        await self.pulls.ended()
        self.pulls_closed.set()

    def _dispatch(self, msg: Msg) -> None:
        self.stats.received += 1
        if msg.metadata.num_delivered > 1:
            self.stats.redeliveries += 1
        try:
            order_id = decode_work(msg.data).order_id
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
            self._spawn(self.answers.reject(msg, f"undecodable work message: {exc}"))
            return
        if self.draining.is_set():
            self._spawn(self.answers.decline(msg, order_id))
            return
        current = self.runs.get(order_id)
        if current is not None:
            # A redelivery of an order this node is working on: answer on the newest delivery.
            current.delivery.msg = msg
            return
        run = OrderRun(self.context, self.answers.delivery(msg, order_id))
        run.slot = slot = self.slots.slot(run.delivery.keepalive)
        self.runs[order_id] = run
        # A callback, not a ``finally``: a task cancelled before it ran gives its place back too.
        self._spawn(self._process(run)).add_done_callback(lambda _: slot.end())

    def _cancel_hinted(self, order_id: str) -> None:
        """The api announced a cancel: the run of that order, if it is ours, looks now."""
        run = self.runs.get(order_id)
        if run is not None:
            run.hint_cancel()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Deliveries settle everything they expect; anything else is a bug worth shouting about.
            log.error(
                "order task crashed",
                exc_info=task.exception(),
                extra={"event": "node.task_crashed", "node_id": self.node_id},
            )

    async def _process(self, run: OrderRun) -> None:
        try:
            await run.delivery.settle(run.run())
        finally:
            if self.runs.get(run.order_id) is run:
                del self.runs[run.order_id]

    async def _finish_runs(self) -> None:
        """Give runs time to finish their current step and hand back; cancel what is left."""
        if not self._tasks:
            return
        settings = self.settings
        grace = settings.step_seconds + settings.payment_timeout + settings.ack_wait
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
        """What the registry, ``orderflow.node.stats`` and the ops views show of this node."""
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
