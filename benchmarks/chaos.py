"""Chaos run: K real nodes under a steady submit rate while nodes (and broker servers) die.

Run from the repository root, for example::

    python -m benchmarks.chaos --nodes 3 --rate 20 --duration 60
    python -m benchmarks.chaos --nodes 3 --rate 20 --duration 600 --kill-every 20 --json
    python -m benchmarks.chaos --nodes 3 --rate 10 --duration 120 --broker-cluster

It starts a nats-server (or, with ``--broker-cluster``, three routed servers on loopback with
``ORDERFLOW_REPLICAS=3``) and K ``python -m nodeapp node`` processes with short steps, submits
R orders/s for T seconds through ``nodeapp.orders.intake.Intake`` (a submit refused with
``BrokerUnavailable`` is retried with the same Idempotency-Key), and every S seconds stops a
random node, by SIGKILL or by SIGTERM (a drain), and starts a new one in its place; with
``--broker-cluster`` it also SIGKILLs one server now and then and restarts it. Then it waits,
bounded, for every order to end and checks every stored revision of every order (the KV
history): lost orders, steps completed twice, stale owners writing, leases overlapping, history
going backwards, the longest stall and how long takeovers took.

Exit status: 0 when no invariant was violated, 2 when one was, 1 when the run itself failed.
Everything runs on loopback and is stopped at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import msgspec
import nats.errors
import uvloop
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from benchmarks.chaos_checks import OrderTrack, Verdict, verdict
from benchmarks.chaos_nodes import NodePool
from benchmarks.common import BenchError, Processes, percentile, sigint_ignored
from benchmarks.throughput import catalog_items, order_bodies, pace
from nodeapp.broker.kv import each_entry, latest_values, stored_at
from nodeapp.broker.resources import DLQ_STREAM, ORDERS_STREAM
from nodeapp.core.errors import BrokerUnavailable, OrderflowError
from nodeapp.core.settings import Settings
from nodeapp.local.natscluster import NatsCluster
from nodeapp.orders.handles import broker_handles
from nodeapp.orders.intake import Intake
from nodeapp.orders.model import DeadLetterMark, decode_order
from nodeapp.orders.requests import OrderRequest, decode_order_request
from nodeapp.shop.catalog import Catalog
from nodeapp.shop.resources import ensure_shop_resources

SUBMIT_RETRY_PAUSE: Final = 0.25
MAX_PENDING_SUBMITS: Final = 500
BENCH_PRODUCTS: Final = 10
SETTLE_POLL: Final = 2.0
WATCH_STALL: Final = 15.0
SERVER_READY_WITHIN: Final = 60.0  # seconds for a (re)started broker server to be healthy
_NATS_ERRORS: Final = (nats.errors.Error, TimeoutError)


class Options(msgspec.Struct, frozen=True, kw_only=True):
    """The command line, resolved."""

    nodes: int
    rate: float
    duration: float
    kill_every: float
    drain_share: float
    restart_after: float
    broker_cluster: bool
    server_kill_every: float
    server_down: float
    step_seconds: float
    failure_rate: float
    concurrency: int
    ack_wait: float
    lease: float
    reconcile_after: float
    settle: float
    seed: int
    log_level: str
    keep: bool
    json: bool


class Submissions(msgspec.Struct, kw_only=True):
    """What the steady submitter did."""

    planned: int
    accepted: int = 0
    retries: int = 0
    gave_up: int = 0
    errors: dict[str, int] = {}
    seconds: float = 0.0


class Report(msgspec.Struct, kw_only=True):
    """One chaos run, as ``--json`` prints it; times in seconds."""

    options: Options
    broker: str
    node_kills: int
    node_drains: int
    drains_clean: int
    drain_p50: float | None
    server_kills: int
    server_recovery_max: float | None
    unexpected_exits: list[str]
    submit: Submissions
    settle_seconds: float
    dlq_messages: int | None
    work_messages_left: int | None  # in ORDERS once settled: each is an ack still to come
    stray_documents: int  # orders stored that no submit returned (a refused submit left them)
    stray_examples: list[str]
    verdict: Verdict
    events: list[str]


# -- the broker ------------------------------------------------------------------------------


class Broker:
    """One nats-server (stopped by ``Processes``) or a loopback cluster (stopped here)."""

    def __init__(self, procs: Processes, cluster: bool) -> None:
        self.procs = procs
        self.cluster = NatsCluster(procs.folder / "cluster") if cluster else None
        self.url = ""

    async def start(self) -> None:
        if self.cluster is None:
            self.url = (await asyncio.to_thread(self.procs.start_server)).url
        else:
            await self.cluster.start(within=SERVER_READY_WITHIN)
            self.url = self.cluster.url

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop_all()


def chaos_settings(opts: Options, nats_url: str) -> Settings:
    """What every node gets: short steps, short ack wait and lease, a quick reconciler."""
    return Settings(
        nats_url=nats_url,
        step_seconds=opts.step_seconds,
        failure_rate=opts.failure_rate,
        concurrency=opts.concurrency,
        ack_wait=opts.ack_wait,
        lease_seconds=opts.lease,
        reconcile_after=opts.reconcile_after,
        replicas=3 if opts.broker_cluster else 1,
        log_level=opts.log_level,
        log_format="json",
    ).validate()


# -- the run ---------------------------------------------------------------------------------


class Chaos:
    """One run: the submitter, the node and server killers, then the checks."""

    def __init__(self, opts: Options, procs: Processes, broker: Broker) -> None:
        self.opts = opts
        self.procs = procs
        self.broker = broker
        self.rng = random.Random(opts.seed)
        self.t0 = time.monotonic()
        self.start = datetime.now(UTC)
        self.events: list[str] = []
        self.server_kills = 0
        self.server_recovery: list[float] = []

    def event(self, text: str) -> None:
        line = f"{time.monotonic() - self.t0:7.1f}s {text}"
        self.events.append(line)
        print(f"  {line}", file=sys.stderr, flush=True)

    async def run(self) -> Report:
        opts = self.opts
        await self.broker.start()
        settings = chaos_settings(opts, self.broker.url)
        async with broker_handles(settings, "orderflow-chaos") as handles:
            js, buckets, intake = handles.js, handles.buckets, handles.intake
            # Orders buy benchmark products with stock for all of them; they are submitted
            # unpriced (no amount), so the steps reserve and sell stock but charge nothing:
            # the nodes run without an api hosting the payment gateway.
            shop = await ensure_shop_resources(js, settings)
            planned = round(opts.rate * opts.duration)
            await Catalog(js, shop).load(catalog_items(BENCH_PRODUCTS, planned))
            pool = NodePool(self.procs, settings, buckets, opts.nodes, self.event)
            for slot in range(opts.nodes):
                await pool.start(slot)
            self.event(f"{opts.nodes} nodes beating on {self.broker.url}")
            self.t0, self.start = time.monotonic(), datetime.now(UTC)
            accepted: list[str] = []
            submissions = await self._load(pool, intake, accepted)
            settle_started = time.monotonic()
            await self._settle(buckets.orders, accepted, pool)
            settle_seconds = time.monotonic() - settle_started
            tracks = await read_tracks(buckets.orders, opts.lease)
            mine = [tracks.get(i) or OrderTrack(i, opts.lease) for i in accepted]
            checked = verdict(mine, pool.killed, pool.drained, self.start)
            strays = _strays(tracks, set(accepted))
            dlq = await _messages(js, DLQ_STREAM)
            left = await _messages(js, ORDERS_STREAM)
        return Report(
            options=opts,
            broker="3-server cluster, R3" if opts.broker_cluster else "1 server, R1",
            node_kills=len(pool.killed),
            node_drains=len(pool.drained),
            drains_clean=pool.drains_clean,
            drain_p50=percentile(sorted(pool.drain_seconds), 0.5) if pool.drain_seconds else None,
            server_kills=self.server_kills,
            server_recovery_max=max(self.server_recovery, default=None),
            unexpected_exits=pool.unexpected,
            submit=submissions,
            settle_seconds=settle_seconds,
            dlq_messages=dlq,
            work_messages_left=left,
            stray_documents=len(strays),
            stray_examples=strays[:10],
            verdict=checked,
            events=self.events,
        )

    async def _load(self, pool: NodePool, intake: Intake, accepted: list[str]) -> Submissions:
        """Submit for ``duration`` seconds while the killers run; when submitting ends, let
        each killer finish what it is doing, then fill every empty slot again."""
        stop = asyncio.Event()
        killers = [asyncio.create_task(self._kill_nodes(pool, stop), name="node-killer")]
        if self.broker.cluster is not None:
            task = self._kill_servers(self.broker.cluster, stop)
            killers.append(asyncio.create_task(task, name="server-killer"))
        try:
            submissions = await submit_steadily(intake, self.opts, self.t0, self.rng, accepted)
        finally:
            stop.set()
            done, _ = await asyncio.wait(killers)
        for killer in done:  # a killer that failed (a node that cannot start) fails the run
            if killer.exception() is not None:
                raise BenchError(f"{killer.get_name()} failed: {killer.exception()!r}")
        await pool.fill()
        self.event(
            f"submitting ended: {submissions.accepted} accepted, "
            f"{submissions.retries} retries, {submissions.gave_up} given up"
        )
        return submissions

    async def _until(self, at: float, stop: asyncio.Event, pool: NodePool) -> bool:
        """Sleep until monotonic time ``at``, restarting crashed nodes meanwhile; False as soon
        as ``stop`` is set."""
        while (left := at - time.monotonic()) > 0:
            await pool.replace_dead()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(1.0, left))
            if stop.is_set():
                return False
        return not stop.is_set()

    async def _kill_nodes(self, pool: NodePool, stop: asyncio.Event) -> None:
        """Every ``kill_every`` seconds stop a random node (SIGKILL, or SIGTERM for a share of
        them) and start a new one in its slot ``restart_after`` seconds later."""
        opts = self.opts
        next_at = self.t0 + opts.kill_every
        while await self._until(next_at, stop, pool):
            slot = self.rng.randrange(opts.nodes)
            if self.rng.random() < opts.drain_share:
                await pool.drain(slot)
            else:
                await pool.kill(slot)
            await asyncio.sleep(opts.restart_after)
            await pool.start(slot)
            next_at += opts.kill_every

    async def _kill_servers(self, cluster: NatsCluster, stop: asyncio.Event) -> None:
        """SIGKILL one random server every ``server_kill_every`` seconds (starting half a
        period in), restart it ``server_down`` seconds later and wait until it is healthy."""
        opts = self.opts
        next_at = self.t0 + opts.server_kill_every / 2
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
            if stop.is_set():
                return
            name = self.rng.choice(cluster.names)
            leads = await cluster.leads(name)
            await cluster.kill(name)
            self.server_kills += 1
            self.event(f"SIGKILL server {name} (leader of {', '.join(leads) or 'no stream'})")
            await asyncio.sleep(opts.server_down)
            try:
                took = await cluster.restart(name, within=SERVER_READY_WITHIN)
            except TimeoutError:
                self.event(f"server {name} not healthy {SERVER_READY_WITHIN:g}s after its restart")
                raise
            self.server_recovery.append(took)
            self.event(f"server {name} restarted, healthy after {took:.1f}s")
            next_at += opts.server_kill_every

    async def _settle(self, kv: KeyValue, ids: list[str], pool: NodePool) -> None:
        """Wait until every accepted order is terminal or dead-lettered, or ``settle`` ends."""
        deadline = time.monotonic() + self.opts.settle
        open_orders = len(ids)
        while time.monotonic() < deadline:
            await pool.replace_dead()
            try:
                latest = await latest_values(kv, _latest_decoder, set(ids), WATCH_STALL)
            except (BrokerUnavailable, BenchError, *_NATS_ERRORS) as exc:
                self.event(f"reading documents failed, retrying: {exc!r}")
                await asyncio.sleep(SETTLE_POLL)
                continue
            open_orders = sum(1 for i in ids if i not in latest or not latest[i].ended)
            if open_orders == 0:
                break
            print(f"  ... {open_orders} orders not ended yet", file=sys.stderr, flush=True)
            await asyncio.sleep(SETTLE_POLL)
        self.event(f"settled: {open_orders} orders not ended")


async def submit_steadily(
    intake: Intake, opts: Options, start: float, rng: random.Random, accepted: list[str]
) -> Submissions:
    """Open-loop submits at ``rate``/s for ``duration`` s, appending order ids to ``accepted``;
    each order keeps its key and body through retries, so an outage neither loses it nor makes
    a second one."""
    planned = round(opts.rate * opts.duration)
    out = Submissions(planned=planned)
    bodies = order_bodies(opts.seed, BENCH_PRODUCTS)
    give_up_at = start + opts.duration + 60.0
    pending = asyncio.Semaphore(MAX_PENDING_SUBMITS)
    token = f"{rng.getrandbits(32):08x}"

    async def one(index: int, request: OrderRequest) -> None:
        key = f"chaos-{token}-{index}"
        try:
            while True:
                try:
                    result = await intake.submit(request, idempotency_key=key)
                except BrokerUnavailable:
                    out.retries += 1
                    if time.monotonic() > give_up_at:
                        out.gave_up += 1
                        return
                    await asyncio.sleep(SUBMIT_RETRY_PAUSE)  # the broker is recovering
                    continue
                except OrderflowError as exc:
                    name = type(exc).__name__
                    out.errors[name] = out.errors.get(name, 0) + 1
                    return
                accepted.append(result.order.order_id)
                out.accepted += 1
                return
        finally:
            pending.release()

    async with asyncio.TaskGroup() as group:
        for index in range(planned):
            await pace(index, start, opts.rate)
            await pending.acquire()
            # The api's checks; chaos_settings leaves fault injection off.
            request = decode_order_request(next(bodies), fault_injection=False)
            group.create_task(one(index, request))
    out.seconds = time.monotonic() - start
    return out


# -- reading the documents back --------------------------------------------------------------


class Latest(msgspec.Struct):
    """The fields of an order's latest document the settle loop needs."""

    status: str
    dead_letter: DeadLetterMark | str | None = None

    @property
    def ended(self) -> bool:
        return self.status in ("completed", "failed") or self.dead_letter is not None


_latest_decoder: Final = msgspec.json.Decoder(Latest)


async def read_tracks(kv: KeyValue, lease: float) -> dict[str, OrderTrack]:
    """Feed every stored revision of every order, in stream order, to the order's track."""
    tracks: dict[str, OrderTrack] = {}
    reading = each_entry(kv, include_history=True, stall=WATCH_STALL)
    async with contextlib.aclosing(reading) as entries:
        async for entry in entries:
            track = tracks.get(entry.key)
            if track is None:
                track = tracks[entry.key] = OrderTrack(entry.key, lease)
            order = decode_order(entry.value) if entry.value and not entry.operation else None
            track.feed(stored_at(entry), order)
    return tracks


def _strays(tracks: dict[str, OrderTrack], accepted: set[str]) -> list[str]:
    """Documents still stored that no accepted submit returned, as ``id: outcome``."""
    return [
        f"{order_id}: {track.outcome}"
        for order_id, track in tracks.items()
        if order_id not in accepted and track.last is not None
    ]


async def _messages(js: JetStreamContext, stream: str) -> int | None:
    """Messages in ``stream`` (None if the broker would not say)."""
    try:
        info = await js.stream_info(stream)
    except _NATS_ERRORS:
        return None
    return int(info.state.messages)


# -- output ----------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}s"


def report(r: Report) -> str:
    """The human-readable result; ``--json`` adds the same numbers as one line."""
    o, v = r.options, r.verdict
    failover = "; ".join(
        f"{name} {f.count}: p50 {_seconds(f.p50)} p99 {_seconds(f.p99)} max {_seconds(f.max)}"
        for name, f in v.failover.items()
    )
    lines = [
        f"orderflow chaos: K={o.nodes} nodes, {o.rate:g} orders/s for {o.duration:g}s, "
        f"a node stopped every {o.kill_every:g}s, broker {r.broker}",
        f"  config        D={o.step_seconds:g}s, failure rate {o.failure_rate:g}, "
        f"C={o.concurrency}, ack wait {o.ack_wait:g}s, lease {o.lease:g}s, "
        f"reconcile after {o.reconcile_after:g}s, seed {o.seed}",
        f"  chaos         {r.node_kills} nodes SIGKILLed, {r.node_drains} drained by SIGTERM "
        f"({r.drains_clean} exit 0, p50 {_seconds(r.drain_p50)}), {r.server_kills} servers "
        f"SIGKILLed (healthy again within {_seconds(r.server_recovery_max)}), "
        f"{len(r.unexpected_exits)} unexpected exits",
        f"  submitted     {v.submitted} accepted of {r.submit.planned} "
        f"({r.submit.retries} retries, {r.submit.gave_up} given up, errors: "
        f"{r.submit.errors or 'none'})",
        f"  outcome       {v.completed} completed, {v.failed} failed, "
        f"{v.dead_lettered} dead-lettered (ORDERS_DLQ holds {r.dlq_messages}); "
        f"settled {r.settle_seconds:.1f}s after the last submit, "
        f"{r.work_messages_left} work messages left in ORDERS",
        f"  strays        {r.stray_documents} stored orders that no accepted submit returned"
        + (f"  {r.stray_examples}" if r.stray_documents else ""),
        f"  lost          {v.lost}" + (f"  {v.lost_orders}" if v.lost else ""),
        f"  double-adv.   {v.double_advanced} (orders with a step completed twice "
        f"{v.completed_twice}, stale-owner writes {v.stale_owner_writes}, "
        f"lease overlaps {v.lease_overlaps})",
        f"  backwards     {v.backwards} orders whose history went backwards",
        f"  max stall     {v.max_stall:.2f}s (order {v.max_stall_order}); p99 of each "
        f"order's longest gap {_seconds(v.stall_p99)}",
        f"  failover      {failover or 'no takeovers'}",
        f"  history       {v.revisions} revisions read, {v.truncated_histories} orders with "
        "history cut at 64 revisions",
        "  verdict       " + ("OK" if v.violations == 0 else f"VIOLATED ({v.violations})"),
    ]
    lines += [f"  example       {e}" for e in v.examples[:10]]
    lines += [f"  slow takeover {t}" for t in v.slowest_takeovers]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--nodes", type=int, default=3, help="node processes K (default 3)")
    add("--rate", type=float, default=20.0, help="orders submitted per second (default 20)")
    add("--duration", type=float, default=60.0, help="seconds of submitting (default 60)")
    add("--kill-every", type=float, default=20.0, help="seconds between node stops")
    add("--drain-share", type=float, default=0.3, help="share of stops by SIGTERM (0.3)")
    add("--restart-after", type=float, default=2.0, help="seconds before the replacement")
    add("--broker-cluster", action="store_true", help="3 servers, R3; kill one now and then")
    add("--server-kill-every", type=float, default=None, help="default 3 x --kill-every")
    add("--server-down", type=float, default=5.0, help="seconds a killed server stays down")
    add("--step-seconds", type=float, default=0.2, help="step duration D (default 0.2)")
    add("--failure-rate", type=float, default=0.05, help="per-step failure (default 0.05)")
    add("--concurrency", type=int, default=50, help="orders in flight per node C")
    add("--ack-wait", type=float, default=1.5, help="JetStream ack wait (default 1.5)")
    add("--lease", type=float, default=2.5, help="ownership lease seconds (default 2.5)")
    add("--reconcile-after", type=float, default=5.0, help="reconciler threshold (default 5)")
    add("--settle", type=float, default=180.0, help="max seconds to wait for the end")
    add("--seed", type=int, default=1, help="seed of the chaos schedule and order bodies")
    add("--log-level", default="INFO", help="nodes' log level (default INFO)")
    add("--keep", action="store_true", help="keep the folder with logs and broker stores")
    add("--json", action="store_true", help="also print one JSON result line")
    a = p.parse_args(argv)
    if a.nodes < 1 or a.rate <= 0 or a.duration <= 0 or a.kill_every <= a.restart_after:
        p.error("need --nodes >= 1, --rate > 0, --duration > 0, --kill-every > --restart-after")
    return Options(
        nodes=a.nodes,
        rate=a.rate,
        duration=a.duration,
        kill_every=a.kill_every,
        drain_share=a.drain_share,
        restart_after=a.restart_after,
        broker_cluster=a.broker_cluster,
        server_kill_every=a.server_kill_every or 3 * a.kill_every,
        server_down=a.server_down,
        step_seconds=a.step_seconds,
        failure_rate=a.failure_rate,
        concurrency=a.concurrency,
        ack_wait=a.ack_wait,
        lease=a.lease,
        reconcile_after=a.reconcile_after,
        settle=a.settle,
        seed=a.seed,
        log_level=a.log_level,
        keep=a.keep,
        json=a.json,
    )


@contextlib.contextmanager
def run_folder(opts: Options, keep: list[bool]) -> Iterator[Path]:
    """The run's logs and broker stores; kept with ``--keep`` or when an invariant broke."""
    folder = Path(tempfile.mkdtemp(prefix="orderflow-chaos-"))
    try:
        yield folder
    finally:
        if opts.keep or any(keep):
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


async def _main(opts: Options, procs: Processes, broker: Broker) -> Report:
    """The run under its deadline; SIGTERM cancels it like Ctrl-C does."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    async with asyncio.timeout(180 + opts.duration + opts.settle + 120):
        return await Chaos(opts, procs, broker).run()


def run_cleanly(opts: Options) -> Report:
    """Run on uvloop; whatever happens, stop the nodes, then the broker."""
    keep: list[bool] = []
    with run_folder(opts, keep) as folder:
        procs = Processes(folder)
        broker = Broker(procs, opts.broker_cluster)
        try:
            result = uvloop.run(_main(opts, procs, broker))
        except BaseException:
            keep.append(True)
            raise
        finally:
            with sigint_ignored():
                procs.stop_all()
                broker.stop()
        keep.append(result.verdict.violations > 0)
        return result


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        result = run_cleanly(opts)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted", file=sys.stderr)
        return 130
    except TimeoutError:
        print("the run did not finish in time", file=sys.stderr)
        return 1
    except OrderflowError as exc:
        print(f"chaos run failed: {exc}", file=sys.stderr)
        return 1
    print(report(result))
    if opts.json:
        print(msgspec.json.encode(result).decode())
    return 0 if result.verdict.violations == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
