"""The lean pipeline: what the broker work of an order costs with no framework around it.

The measured upper bound for ``benchmarks.throughput`` (``--compare`` runs both alternately and
prints orderflow / ceiling). It does the broker operations an orderflow order needs, on the same
nats-py, nats-server and resources (stream ``ORDERS``, consumer ``workers``, bucket ``orders``,
created by orderflow's own code), and nothing else: no shop effects, logs, metrics, spans, lease
renewals or cancel checks.

Per order:

* submit (this process, as many coroutines as ``--clients``): KV ``create`` of the order
  document, publish of its work message with ``Nats-Msg-Id``;
* worker (a child process, ``python -m benchmarks.ceiling --worker``): pull requests for as many
  messages as it has free of its C slots plus the orders in their last step (fetch ahead, ADR
  0022), several open at once, so a freed slot is refilled without waiting for an earlier
  request to end; a direct get of the document as the message arrives; a message that finds no
  free slot is held, its document read, and started when a slot frees (first come, first
  served); the claim merged with the first step's start by compare-and-set; then per step D
  seconds of sleep; the write of a step's completion merged with the next step's start runs
  while the next step sleeps; the last completion merged with the terminal state, then the ack,
  both after the order's slot is free again.

That is orderflow's write pattern (ADR 0001: one read and five compare-and-sets an order, the
step-start writes overlapping the work as in ADR 0019), written as directly as nats-py allows:
plain requests with the expected-revision header, replies decoded with msgspec. The documents
are orderflow's own ``Order`` structs (same bytes on the wire), and a run is read back and
reported by the same code as an orderflow run.

    python -m benchmarks.ceiling --step-seconds 0.05 --orders 4000
    python -m benchmarks.ceiling --overhead --orders 20000

Besides ``throughput``'s options: ``--no-fetch-ahead`` runs the ceiling as it was before ADR 0022
(a slot's next order fetched and read only once the slot is free), and ``--fetch-ahead-ab``
runs that and the ceiling alternately (``--rounds`` pairs) and prints fetch ahead / without.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import statistics
import sys
from collections import deque
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Final

import msgspec
import uvloop
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from benchmarks.common import Child, start_nodes, wait_for_quiet
from benchmarks.throughput import (
    Options,
    Result,
    Run,
    Submitted,
    Submitter,
    pace,
    parse_args,
    print_result,
    run_cleanly,
)
from nodeapp.broker.connection import connection
from nodeapp.broker.resources import (
    NODES_BUCKET,
    ORDERS_BUCKET,
    ORDERS_STREAM,
    WORK_SUBJECT,
    WORKERS_CONSUMER,
)
from nodeapp.core.errors import OrderflowError
from nodeapp.core.settings import load_settings
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import (
    COMPLETED,
    Item,
    Order,
    Owner,
    decode_order,
    encode,
    new_order,
    new_order_id,
)
from nodeapp.shop.cache import CatalogCache

KV_SUBJECT: Final = f"$KV.{ORDERS_BUCKET}."
DIRECT_GET: Final = f"$JS.API.DIRECT.GET.KV_{ORDERS_BUCKET}.{KV_SUBJECT}"
PULL: Final = f"$JS.API.CONSUMER.MSG.NEXT.{ORDERS_STREAM}.{WORKERS_CONSUMER}"
EXPECTED_REVISION: Final = "Nats-Expected-Last-Subject-Sequence"
PULL_EXPIRES_NS: Final = 1_000_000_000
HEARTBEAT_STATUS: Final = "100"
PENDING: Final = "Nats-Pending-Messages"  # on a request's end: how much of its batch is unused
REQUEST_TIMEOUT: Final = 5.0
LEASE: Final = timedelta(seconds=10)
ITEMS: Final = (Item("bench-0", 1, Decimal("1.25")), Item("bench-1", 2, Decimal("2.50")))
AMOUNT: Final = Decimal("6.25")


class PubAck(msgspec.Struct):
    seq: int = 0
    error: dict[str, object] | None = None


class Work(msgspec.Struct):
    order_id: str


_puback: Final = msgspec.json.Decoder(PubAck)
_work: Final = msgspec.json.Decoder(Work)


class LostWrite(OrderflowError):
    """A compare-and-set lost: never expected here, one worker owns every order it claims."""


# -- the worker process ----------------------------------------------------------------------


class Worker:
    """C slots; pull requests only for free slots; each order in its own task."""

    def __init__(
        self,
        nc: NATS,
        node_id: str,
        concurrency: int,
        step_seconds: float,
        ahead: bool = True,
    ) -> None:
        self.nc = nc
        self.node_id = node_id
        self.concurrency = concurrency
        self.step_seconds = step_seconds
        self.ahead = ahead  # fetch (and read) the next order while an order's last step runs
        self.inbox = nc.new_inbox()
        self.numbers = itertools.count()
        self.asked = 0  # messages the open requests may still deliver
        self.running = 0
        self.finishing = 0  # running orders in their last step (their slot frees within D)
        # Delivered, not started (no slot yet): each with its document's read under way.
        self.held: deque[tuple[Msg, asyncio.Task[tuple[Order, int]]]] = deque()
        self.tasks: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()
        self.failed: BaseException | None = None

    async def run(self) -> None:
        """Ask for messages whenever slots are free (or, ahead, about to free) and not already
        asked for or held."""
        await self.nc.subscribe(f"{self.inbox}.*", cb=self._received)
        while self.failed is None:
            self.wake.clear()  # before looking: a slot freed while we publish wakes us again
            free = self.concurrency - self.running + self.finishing - self.asked - len(self.held)
            if free > 0:
                reply = f"{self.inbox}.{next(self.numbers)}"
                self.asked += free
                body = b'{"batch":%d,"expires":%d}' % (free, PULL_EXPIRES_NS)
                await self.nc.publish(PULL, body, reply=reply)
            await self.wake.wait()
        raise self.failed

    async def _received(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is not None:
            if status != HEARTBEAT_STATUS:  # a request ended (408 at its expiry) short of its batch
                assert msg.headers is not None
                self.asked -= int(msg.headers.get(PENDING, "0"))
                self.wake.set()
            return
        # A delivery names the work subject, not the request: count it against all of them.
        self.asked -= 1
        if self.running < self.concurrency:
            self._begin(msg, None)
        else:  # fetched ahead: read it now, start it when a slot frees
            read = asyncio.create_task(self._read(_work.decode(msg.data).order_id))
            self.held.append((msg, read))

    def _begin(self, msg: Msg, read: asyncio.Task[tuple[Order, int]] | None) -> None:
        self.running += 1
        task = asyncio.create_task(self._order(msg, read))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _free(self) -> None:
        self.running -= 1
        if self.ahead:
            self.finishing -= 1
        if self.held:
            self._begin(*self.held.popleft())
        self.wake.set()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failed = task.exception()
            self.wake.set()

    async def _read(self, order_id: str) -> tuple[Order, int]:
        """A direct get: the document and its revision (the claim's compare-and-set guards a
        read made ahead: nobody else writes here, so it never goes stale)."""
        reply = await self.nc.request(DIRECT_GET + order_id, b"", timeout=REQUEST_TIMEOUT)
        return decode_order(reply.data), int((reply.headers or {})["Nats-Sequence"])

    async def _order(self, msg: Msg, read: asyncio.Task[tuple[Order, int]] | None) -> None:
        if read is None:
            order, revision = await self._read(_work.decode(msg.data).order_id)
        else:
            order, revision = await read
        now = datetime.now(UTC)
        order.owner = Owner(self.node_id, now + LEASE, 1)
        order.status, order.attempts = "running", 1
        self._start(order, 0, now)
        revision = await self._write(order, revision)
        writing: asyncio.Task[int] | None = None
        for index, step in enumerate(order.steps):
            if self.ahead and index + 1 == len(order.steps):
                self.finishing += 1  # this slot frees within D: fetch its next order now
                self.wake.set()
            if self.step_seconds > 0:
                await asyncio.sleep(self.step_seconds)
            if writing is not None:
                revision = await writing
            now = datetime.now(UTC)
            step.status, step.complete_time = "completed", now
            if index + 1 == len(order.steps):
                break
            self._start(order, index + 1, now)
            if self.step_seconds > 0:  # the write runs while the next step works
                writing = asyncio.create_task(self._write(order, revision))
            else:
                revision = await self._write(order, revision)
        order.status, order.current_step, order.complete_time = "completed", COMPLETED, now
        order.owner.lease_expires_at = now
        self._free()  # the slot is free once the end is stamped: its write and ack overlap
        await self._write(order, revision)
        await msg.ack()

    def _start(self, order: Order, index: int, now: datetime) -> None:
        step = order.steps[index]
        step.status, step.start_time, step.node_id, step.attempt = "running", now, self.node_id, 1
        order.current_step = step.name

    async def _write(self, order: Order, revision: int) -> int:
        """Compare-and-set the document on ``revision``; its new revision."""
        reply = await self.nc.request(
            KV_SUBJECT + order.order_id,
            encode(order),
            timeout=REQUEST_TIMEOUT,
            headers={EXPECTED_REVISION: str(revision)},
        )
        ack = _puback.decode(reply.data)
        if ack.error is not None:
            raise LostWrite(f"{order.order_id}: {ack.error}")
        return ack.seq


async def serve_worker(node_id: str, ahead: bool = True) -> None:
    """One worker process, configured like a node (``NATS_URL``, ``ORDERFLOW_CONCURRENCY``,
    ``ORDERFLOW_STEP_SECONDS``); it beats once in ``nodes`` so the runner knows it is up."""
    settings = load_settings()
    async with connection(settings, f"ceiling-{node_id}") as nc:
        nodes = await nc.jetstream().key_value(NODES_BUCKET)
        await nodes.put(node_id, b"{}")
        await Worker(nc, node_id, settings.concurrency, settings.step_seconds, ahead).run()


# -- the run ---------------------------------------------------------------------------------


def worker_command(node_id: str) -> list[str]:
    return ["-m", "benchmarks.ceiling", "--worker", "--node-id", node_id]


def plain_worker_command(node_id: str) -> list[str]:
    return [*worker_command(node_id), "--no-fetch-ahead"]


class CeilingRun(Run):
    """A ``throughput`` run of lean workers, submitted to without checks or pricing (no api,
    no catalog: nothing here needs them)."""

    mode_name = "ceiling"

    async def prepare(self, handles: Handles) -> None:
        """Nothing to prepare: no catalog, no api."""

    command = staticmethod(worker_command)

    async def start_nodes(self, handles: Handles) -> list[Child]:
        return await start_nodes(
            self.procs, self.settings, handles.buckets, self.opts.nodes, self.command
        )

    def submitter(self, handles: Handles, prices: CatalogCache | None, start: float) -> Submitter:
        kv, js, rate = handles.buckets.orders, handles.js, self.opts.rate

        async def submit(state: Submitted) -> None:
            for index in state.indexes:
                await pace(index, start, rate)
                order_id = new_order_id()
                document = new_order(order_id, "ceiling", list(ITEMS), AMOUNT)
                await kv.create(order_id, encode(document))
                await js.publish(
                    WORK_SUBJECT, encode(Work(order_id)), headers={"Nats-Msg-Id": order_id}
                )
                state.ids.append(order_id)

        return submit


class PlainCeilingRun(CeilingRun):
    """The ceiling as it was before ADR 0022: a slot's next order is fetched and read only once
    the slot is free (kept to measure what fetching ahead is worth)."""

    mode_name = "ceiling, no fetch ahead"
    command = staticmethod(plain_worker_command)


# -- orderflow against the ceiling -----------------------------------------------------------


class Contender(msgspec.Struct, frozen=True):
    """One side of an alternating comparison: what runs, from which checkout."""

    name: str
    kind: type[Run]
    tree: Path | None


def compare(opts: Options, contenders: tuple[Contender, Contender] | None = None) -> int:
    """``throughput --compare``: ceiling, orderflow, ceiling, orderflow... (``--rounds`` pairs,
    same D, K, C and N), each on a fresh broker; prints every run and orderflow / ceiling.
    With ``--against DIR`` the first of each pair is DIR's orderflow instead of the ceiling;
    ``contenders`` (base, subject) replaces both."""
    if contenders is None:
        if opts.against is not None:
            first = Contender(f"orderflow ({opts.against})", Run, opts.against)
        else:
            first = Contender("ceiling", CeilingRun, None)  # the ceiling is always this checkout's
        name = f"orderflow ({opts.tree})" if opts.tree else "orderflow"
        contenders = (first, Contender(name, Run, opts.tree))
    base, subject = contenders
    pairs: list[tuple[Result, Result]] = []
    try:
        for n in range(1, opts.rounds + 1):
            pair = []
            for contender in (base, subject):
                result = _one(opts, contender, n)
                if result is None:
                    return 1
                pair.append(result)
            pairs.append((pair[0], pair[1]))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if pairs:
            print(comparison(pairs, base.name, subject.name))
    return 0


def _one(opts: Options, contender: Contender, n: int) -> Result | None:
    """One run of ``contender``, printed; None (said on stderr) when it failed."""
    label = "".join(c if c.isalnum() else "_" for c in contender.name)
    profile = opts.profile / f"{label}-{n}" if opts.profile else None
    run_opts = msgspec.structs.replace(opts, profile=profile, tree=contender.tree)
    if opts.wait_quiet > 0:
        wait_for_quiet(opts.wait_quiet)
    try:
        result = run_cleanly(run_opts, contender.kind)
    except OrderflowError as exc:
        print(f"{contender.name}: benchmark failed: {exc}", file=sys.stderr)
        return None
    except TimeoutError:
        print(f"{contender.name} did not finish within {opts.timeout:.0f}s", file=sys.stderr)
        return None
    finally:  # the run's loop handled SIGTERM; between runs it ends the process again
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    print_result(result, run_opts)
    return result


def comparison(pairs: list[tuple[Result, Result]], base: str, subject: str) -> str:
    """One line per pair and the median ratio of orders/s: ``subject`` / ``base``."""
    ratios = [o.orders_per_s / c.orders_per_s for c, o in pairs]
    first = pairs[0][1]
    lines = [
        f"{subject} / {base}: D={first.step_seconds:g}s, K={first.nodes}, C={first.concurrency},"
        f" N={first.accepted}, {first.mode} submit{', preloaded' if first.preload else ''}",
        "  pair     base/s  subject/s   ratio  base util  subject util  base cpu/order  "
        "subject cpu/order  elsewhere (base, subject)",
    ]
    for n, ((c, o), ratio) in enumerate(zip(pairs, ratios, strict=True), 1):
        lines.append(
            f"  {n:>4}  {c.orders_per_s:9.1f}  {o.orders_per_s:9.1f}  {ratio:6.3f}  "
            f"{_util(c):>9}  {_util(o):>12}  {_node_cpu(c):>14}  {_node_cpu(o):>17}  "
            f"{c.other_cores:.2f}, {o.other_cores:.2f}"
        )
    median, low, high = statistics.median(ratios), min(ratios), max(ratios)
    lines.append(f"  median ratio {median:.3f} (range {low:.3f}-{high:.3f})")
    return "\n".join(lines)


def _node_cpu(r: Result) -> str:
    """ms of CPU per order over the node processes (each one's CPU / all orders, summed)."""
    return f"{sum(v for k, v in r.cpu_ms_per_order.items() if k.startswith('node-')):.3f} ms"


def _util(r: Result) -> str:
    return "n/a" if r.utilization is None else f"{r.utilization:.3f}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--worker" in args:
        w = argparse.ArgumentParser(prog="python -m benchmarks.ceiling --worker")
        w.add_argument("--worker", action="store_true")
        w.add_argument("--node-id", required=True)
        w.add_argument("--no-fetch-ahead", action="store_true")
        wargs = w.parse_args(args)
        uvloop.run(serve_worker(wargs.node_id, not wargs.no_fetch_ahead))
        return 0
    own = {"--no-fetch-ahead", "--fetch-ahead-ab"}
    opts = msgspec.structs.replace(parse_args([a for a in args if a not in own]), tree=None)
    if "--fetch-ahead-ab" in args:
        plain = Contender("ceiling without fetch ahead", PlainCeilingRun, None)
        return compare(opts, (plain, Contender("ceiling", CeilingRun, None)))
    if opts.wait_quiet > 0:
        wait_for_quiet(opts.wait_quiet)
    try:
        result = run_cleanly(opts, PlainCeilingRun if "--no-fetch-ahead" in args else CeilingRun)
    except OrderflowError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print_result(result, opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
