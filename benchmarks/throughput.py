"""Throughput, latency and memory of a real orderflow cluster, against its theoretical limit.

Run from the repository root, for example::

    python -m benchmarks.throughput --nodes 1 --step-seconds 0.05 --orders 4000
    python -m benchmarks.throughput --overhead --orders 30000
    python -m benchmarks.throughput --http --overhead --orders 20000

Each run starts its own nats-server (temporary store, free loopback port), K node processes and,
with ``--http``, one api process; submits N orders (directly through
``nodeapp.orders.intake.Intake``, the code the api runs, or over HTTP); waits until every order
document is terminal; prints:

* orders/s: orders completed / the window from the first submit to the last ``complete_time``;
* theoretical: K x C / (4 x D), every slot of every node busy with steps and nothing else;
* utilization: orders/s / theoretical, and the same between the 10th and the 90th percentile
  completion (the run without its ramp-up and its last round);
* latency p50/p99: ``complete_time - start_time`` of each document (queueing included);
* slot time: K x C / orders/s, the wall time one order holds a node slot (Little's law: every
  slot is busy during a backlog run); per-step overhead = slot time / 4 - D, the time a step
  costs beyond its simulated work (with ``--overhead``, D = 0, it is all overhead);
* CPU per process over the window and peak RSS (``VmRSS``, sampled every 0.5 s).

All processes share the machine's cores with this load generator; the output says how many, and
how busy the rest of the machine was. ``--preload`` submits everything before the nodes start
(their drain rate, without the submitter competing), ``--rate`` paces submits open-loop,
``--profile DIR`` records every process with py-spy and prints the hottest functions.

The shop (ADR 0010): every run first loads a benchmark catalog (``--products`` products, stock
for every order of the run) and the order bodies buy those products without an ``amount`` (the
api computes it); direct submits price them as the api does (``price_items`` on a watched
``CatalogCache``, then ``Intake.submit(..., priced=...)``). So Pre-Processing authorizes every
order at the simulated gateway and waits for its signed verdict: the api process hosts that
gateway (and hands the verdicts to its own inbox in-process, ADR 0018), so one api runs in every
mode (with ``--http`` it also takes the submits, with a bootstrap admin token), sharing a
payment secret with the nodes, whose ``ORDERFLOW_API_URL`` points at it. The gateway answers
after ``--payment-delay`` seconds (default 0: the payment's machinery, not a simulated wait, is
what is measured; a delay is added to the theoretical order time, 4 x D + delay).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec
import uvloop
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from benchmarks.common import (
    LOOPBACK,
    BenchError,
    Child,
    CpuMeter,
    OrderTimes,
    Processes,
    Profiler,
    ReadModelState,
    RssSampler,
    bare_node_command,
    bench_folder,
    node_command,
    percentile,
    read_model_state,
    sigint_ignored,
    snapshot,
    start_api,
    start_nodes,
    top_functions,
    wait_for_quiet,
)
from nodeapp.broker.resources import ORDERS_STREAM
from nodeapp.core.errors import OrderflowError
from nodeapp.core.http import HttpClient, HttpFailed
from nodeapp.core.settings import Settings
from nodeapp.local.natsserver import free_port
from nodeapp.orders.handles import Handles, broker_handles
from nodeapp.orders.intake import Intake
from nodeapp.orders.requests import decode_order_request
from nodeapp.orders.store import OrderStore
from nodeapp.shop.cache import CatalogCache
from nodeapp.shop.catalog import Catalog
from nodeapp.shop.checkout import price_items
from nodeapp.shop.products import CatalogItem
from nodeapp.shop.resources import ensure_shop_resources

STEPS: Final = 4
POLL_INTERVAL: Final = 0.2
PROGRESS_EVERY: Final = 5.0
REQUEST_TIMEOUT: Final = 10.0
BENCH_RATE_LIMIT: Final = 1e6  # requests/s per token: the api's limiter never paces a run
READY_TIMEOUT: Final = 30.0
TARGET_SECONDS: Final = 15.0  # default N makes a run last about this long
MAX_LINES: Final = 3  # items per order, each of quantity 1-5: at most 15 units of one product
MAX_QUANTITY: Final = 5


class Options(msgspec.Struct, frozen=True, kw_only=True):
    """The command line, resolved (defaults filled in from the other flags)."""

    nodes: int
    orders: int
    step_seconds: float
    concurrency: int
    failure_rate: float
    http: bool
    client: str
    clients: int
    overhead: bool
    preload: bool
    rate: float | None
    seed: int
    timeout: float
    keep: bool
    json: bool
    profile: Path | None
    wait_quiet: float
    products: int
    payment_delay: float
    free: bool = False
    log_level: str = "INFO"
    compare: bool = False
    rounds: int = 1
    engine_only: bool = False
    tree: Path | None = None
    against: Path | None = None

    @property
    def theoretical(self) -> float | None:
        if self.step_seconds <= 0:
            return None
        order_seconds = STEPS * self.step_seconds + self.payment_delay
        return self.nodes * self.concurrency / order_seconds


class Result(msgspec.Struct, kw_only=True):
    """One run, as printed by ``--json``; times in seconds unless the name says otherwise."""

    mode: str
    cpus: int
    nodes: int
    concurrency: int
    step_seconds: float
    failure_rate: float
    preload: bool
    products: int
    payment_delay: float
    accepted: int
    submit_errors: dict[str, int]
    completed: int
    failed: int
    submit_seconds: float
    submit_per_s: float
    window_seconds: float
    orders_per_s: float
    steady_per_s: float
    theoretical_per_s: float | None
    utilization: float | None
    latency_p50: float
    latency_p99: float
    in_node_p50: float
    in_node_p99: float
    step_p50_ms: float
    step_p99_ms: float
    steps_ms: list[tuple[float, float]] = []  # each step's own p50, p99 (Scheduling first)
    boundary_p50_ms: float = 0.0  # a step's completion to the next step's start
    boundary_p99_ms: float = 0.0
    slot_time_ms: float
    overhead_per_step_ms: float
    cpu_ms_per_order: dict[str, float]
    cpu_cores: dict[str, float]
    other_cores: float
    node_rss_mib: float | None
    api_rss_mib: float | None
    server_rss_mib: float | None
    free: bool = False
    log_level: str = "INFO"
    engine_only: bool = False
    tree: str | None = None
    rss_mib: dict[str, float] = {}  # peak per process
    orders_by_node: dict[str, int] = {}  # node process -> orders whose last step it ran
    # The api's read model when the last order was terminal: revisions not applied yet, and
    # applied since the api started (None without an api).
    read_lag: int | None = None
    read_applied: int | None = None
    leaders: list[str] = []  # the node processes that logged taking the reconciler's lead


# -- orders ----------------------------------------------------------------------------------


def product_ids(count: int) -> list[str]:
    return [f"bench-{n}" for n in range(count)]


def catalog_items(count: int, orders: int, *, free: bool = False) -> list[CatalogItem]:
    """The benchmark catalog: ``count`` products at 1.25-12.50 (0 when ``free``: nothing to pay,
    so Pre-Processing skips the payment), each stocked for every unit ``orders`` orders could
    take of it, so no order of the run fails ``out_of_stock``."""
    on_hand = orders * MAX_LINES * MAX_QUANTITY
    return [
        CatalogItem(
            p,
            f"benchmark product {p}",
            Decimal(0) if free else Decimal(125 * (n + 1)) / 100,
            on_hand=on_hand,
        )
        for n, p in enumerate(product_ids(count))
    ]


async def load_catalog(js: JetStreamContext, settings: Settings, opts: Options) -> KeyValue:
    """Create the shop's buckets and stock the benchmark catalog (a fresh broker: all new);
    return bucket ``catalog``."""
    buckets = await ensure_shop_resources(js, settings)
    items = catalog_items(opts.products, opts.orders, free=opts.free)
    report = await Catalog(js, buckets).load(items)
    if report.stocked != opts.products:
        raise BenchError(f"the benchmark catalog was not stocked: {report}")
    return buckets.catalog


def order_bodies(seed: int, products: int = 10) -> Iterator[bytes]:
    """Endless valid ``POST /orders`` bodies buying benchmark products, reproducible from
    ``seed``; no ``amount``: the api prices the items from the catalog and computes it."""
    rng = random.Random(seed)
    ids = product_ids(products)
    while True:
        picked = rng.sample(ids, min(len(ids), rng.randint(1, MAX_LINES)))
        items = [{"product_id": p, "quantity": rng.randint(1, MAX_QUANTITY)} for p in picked]
        order = {"customer_id": f"cust-{rng.randrange(1_000_000)}", "items": items}
        yield msgspec.json.encode(order)


class Submitted:
    """What the submitters have done so far, shared by all of them."""

    def __init__(self, total: int, seed: int, products: int) -> None:
        self.indexes = iter(range(total))
        self.bodies = order_bodies(seed, products)
        self.ids: list[str] = []
        self.errors: dict[str, int] = {}

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def pace(index: int, start: float, rate: float | None) -> None:
    """Open-loop pacing: order ``index`` goes out at ``start + index / rate``."""
    if rate:
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class _Accepted(msgspec.Struct):
    order_id: str


_accepted_decoder: Final = msgspec.json.Decoder(_Accepted)
Submitter = Callable[[Submitted], Coroutine[Any, Any, None]]


def direct_submitter(
    intake: Intake, prices: CatalogCache, opts: Options, start: float, *, fault_injection: bool
) -> Submitter:
    """The api's checks and pricing (its watched catalog), then KV create + publish through
    ``Intake``, as the api does, from many coroutines."""

    async def submit(state: Submitted) -> None:
        for index in state.indexes:
            await pace(index, start, opts.rate)
            request = decode_order_request(next(state.bodies), fault_injection=fault_injection)
            try:
                priced = await price_items(request.items, request.amount, prices.find)
                result = await intake.submit(request, priced=priced)
            except OrderflowError as exc:  # the broker refused or timed out: count it, go on
                state.error(type(exc).__name__)
                continue
            state.ids.append(result.order.order_id)

    return submit


def raw_http_submitter(settings: Settings, opts: Options, start: float) -> Submitter:
    """One keep-alive connection per submitter (``nodeapp.core.http``, the client the nodes
    use: ~0.07 ms of CPU a request, where httpx needs ~0.6 ms)."""
    url = f"http://{LOOPBACK}:{settings.api_port}/orders"
    headers = _headers(settings)

    async def submit(state: Submitted) -> None:
        async with HttpClient(REQUEST_TIMEOUT, max_connections=1) as client:
            for index in state.indexes:
                await pace(index, start, opts.rate)
                try:
                    answer = await client.request("POST", url, next(state.bodies), headers)
                except HttpFailed as exc:
                    state.error(str(exc))
                    continue
                if answer.status == 202:
                    state.ids.append(_accepted_decoder.decode(answer.body).order_id)
                else:
                    state.error(f"HTTP {answer.status}")

    return submit


def _headers(settings: Settings) -> dict[str, str]:
    """What every submit carries: a JSON body, the run's bootstrap admin token."""
    return {"Content-Type": "application/json", "Authorization": f"Bearer {settings.admin_token}"}


def httpx_submitter(settings: Settings, opts: Options, start: float) -> Submitter:
    """One ``httpx.AsyncClient`` (one keep-alive connection) per submitter: a single client
    shared by 64 concurrent requests spends most of its time in its pool (441 vs 1355 req/s
    against a trivial server on this machine)."""
    headers = _headers(settings)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)

    async def submit(state: Submitted) -> None:
        async with httpx.AsyncClient(
            base_url=f"http://{LOOPBACK}:{settings.api_port}",
            limits=limits,
            timeout=REQUEST_TIMEOUT,
        ) as client:
            for index in state.indexes:
                await pace(index, start, opts.rate)
                try:
                    response = await client.post(
                        "/orders", content=next(state.bodies), headers=headers
                    )
                except httpx.HTTPError as exc:
                    state.error(type(exc).__name__)
                    continue
                if response.status_code == 202:
                    state.ids.append(_accepted_decoder.decode(response.content).order_id)
                else:
                    state.error(f"HTTP {response.status_code}")

    return submit


async def submit_all(submit: Submitter, state: Submitted, clients: int) -> None:
    """Run ``clients`` submitters until every index is taken; a crash stops them all."""
    async with asyncio.TaskGroup() as group:
        for n in range(clients):
            group.create_task(submit(state), name=f"submitter-{n}")


# -- a run -----------------------------------------------------------------------------------


async def wait_terminal(
    js: JetStreamContext, store: OrderStore, ids: list[str], children: list[Child]
) -> dict[str, OrderTimes]:
    """Wait until the work queue is empty (a message is acked only after its order's terminal
    state is stored), then confirm every document is terminal from one snapshot."""
    wanted = set(ids)
    next_progress = time.monotonic() + PROGRESS_EVERY
    while True:  # bounded by the run's deadline (``--timeout``)
        messages = (await js.stream_info(ORDERS_STREAM)).state.messages
        for child in children:
            child.check_alive()
        open_orders = messages
        if messages == 0:
            docs = await snapshot(store.kv, wanted)
            open_orders = sum(1 for i in ids if i not in docs or not docs[i].terminal)
            if not open_orders:
                return docs
        if time.monotonic() > next_progress:
            next_progress += PROGRESS_EVERY
            print(f"  ... {len(ids) - open_orders}/{len(ids)} terminal", file=sys.stderr)
        await asyncio.sleep(POLL_INTERVAL if messages else PROGRESS_EVERY / 5)


def bench_settings(opts: Options, nats_url: str, folder: Path) -> Settings:
    """What every child gets: the run's step, concurrency and failure rate, the log level a user
    runs (INFO unless ``--log-level``); the api (hosting the payment gateway) on a free port,
    the nodes pointed at it with its secret; a bootstrap admin token for the submits over HTTP,
    with a rate limit far above any load generated here (the limiter is per token, and every
    submit carries this one); the api's read model in the run's folder (by default it is a file
    in the working directory, which every run would share)."""
    api_port = free_port(LOOPBACK)
    return Settings(
        nats_url=nats_url,
        step_seconds=opts.step_seconds,
        failure_rate=opts.failure_rate,
        concurrency=opts.concurrency,
        api_host=LOOPBACK,
        api_port=api_port,
        api_url=f"http://{LOOPBACK}:{api_port}",
        payment_secret=secrets.token_urlsafe(32),
        payment_delay=opts.payment_delay,
        admin_token=secrets.token_urlsafe(32),
        rate_limit=BENCH_RATE_LIMIT,
        read_db=str(folder / "read.db"),
        log_level=opts.log_level,
        log_format="json",
    ).validate()


class Run:
    """One benchmark run against a cluster it starts; ``procs`` stops whatever it started.

    The hooks ``prepare``, ``start_nodes`` and ``submitter`` are what ``benchmarks.ceiling``
    replaces to run its lean pipeline through the same measurement."""

    mode_name: str | None = None  # None: named after the submit path

    def __init__(self, opts: Options, procs: Processes, settings: Settings) -> None:
        self.opts = opts
        self.procs = procs
        self.settings = settings
        self.sampler = RssSampler()
        self.cpu = CpuMeter({})
        self.profiler = Profiler(opts.profile) if opts.profile else None
        self.children: list[Child] = []
        self.state = Submitted(opts.orders, opts.seed, opts.products)
        self.catalog: KeyValue | None = None

    def watch(self, label: str, pid: int, profile: bool = True) -> None:
        self.sampler.watch(label, pid)
        self.cpu.pids[label] = pid
        if self.profiler is not None and profile:
            self.profiler.start(label, pid)

    async def prepare(self, handles: Handles) -> None:
        """The benchmark catalog, and the api: it hosts the payment gateway, so it runs in every
        mode but ``--engine-only`` (with --http it also takes the submits)."""
        self.catalog = await load_catalog(handles.js, self.settings, self.opts)
        if self.opts.http or not self.opts.engine_only:
            self.children.append(await start_api(self.procs, self.settings))

    async def start_nodes(self, handles: Handles) -> list[Child]:
        command = bare_node_command if self.opts.engine_only else node_command
        return await start_nodes(
            self.procs, self.settings, handles.buckets, self.opts.nodes, command
        )

    def submitter(self, handles: Handles, prices: CatalogCache | None, start: float) -> Submitter:
        opts = self.opts
        if not opts.http:
            assert prices is not None
            faults = self.settings.fault_injection
            return direct_submitter(handles.intake, prices, opts, start, fault_injection=faults)
        if opts.client == "httpx":
            return httpx_submitter(self.settings, opts, start)
        return raw_http_submitter(self.settings, opts, start)

    async def execute(self, handles: Handles) -> Result:
        await self.prepare(handles)
        if not self.opts.preload:
            self.children += await self.start_nodes(handles)
        for child in self.children:
            self.watch(child.name, child.pid)
        self.watch("bench", os.getpid())
        sampling = asyncio.create_task(self.sampler.run(), name="rss-sampler")
        try:
            if self.catalog is None:
                return await self._measure(handles, None)
            async with CatalogCache(self.catalog) as prices:  # what the api prices submits from
                async with asyncio.timeout(READY_TIMEOUT):
                    await prices.loaded.wait()
                return await self._measure(handles, prices)
        finally:
            self.sampler.stop()
            await sampling
            if self.profiler is not None:
                self.profiler.stop()

    async def _measure(self, handles: Handles, prices: CatalogCache | None) -> Result:
        opts = self.opts
        self.cpu.start()
        first_submit = datetime.now(UTC)
        start = time.monotonic()
        await submit_all(self.submitter(handles, prices, start), self.state, opts.clients)
        submit_seconds = time.monotonic() - start
        if not self.state.ids:
            raise BenchError(f"no order was accepted: {self.state.errors}")
        if opts.preload:
            nodes = await self.start_nodes(handles)
            for node in nodes:
                self.watch(node.name, node.pid)
            self.children += nodes
            self.cpu.start()
        docs = await wait_terminal(handles.js, handles.store, self.state.ids, self.children)
        self.cpu.stop()
        self.sampler.sample()
        read_model = await self._read_model()
        result = _result(
            opts, self.state, docs, first_submit, submit_seconds, self.cpu, self.sampler
        )
        if read_model is not None:
            result.read_lag, result.read_applied = read_model.lag_messages, read_model.applied
        if self.mode_name is not None:
            result.mode = self.mode_name
        result.leaders = [c.name for c in self.children if _led(c)]
        return result

    async def _read_model(self) -> ReadModelState | None:
        if not any(child.name == "api" for child in self.children):
            return None
        return await read_model_state(self.settings)


def _led(child: Child) -> bool:
    """Whether a node process logged taking the reconciler's lead (at INFO)."""
    return child.name.startswith("node-") and any(
        "reconciler.leader" in line for line in child.log_lines()
    )


async def run(opts: Options, procs: Processes, kind: type[Run] = Run) -> Result:
    """One run of ``kind`` (orderflow, or ``benchmarks.ceiling``'s lean pipeline) on a fresh
    broker."""
    server = await asyncio.to_thread(procs.start_server)
    settings = bench_settings(opts, server.url, procs.folder)
    bench = kind(opts, procs, settings)
    if server.proc is not None:
        bench.watch("nats-server", server.proc.pid, profile=False)
    async with broker_handles(settings, "orderflow-bench") as handles:
        return await bench.execute(handles)


def _result(
    opts: Options,
    state: Submitted,
    docs: dict[str, OrderTimes],
    first_submit: datetime,
    submit_seconds: float,
    cpu: CpuMeter,
    sampler: RssSampler,
) -> Result:
    orders = list(docs.values())
    ends = [o.complete_time for o in orders if o.complete_time is not None]
    if opts.preload:  # the window starts when the first node starts its first order
        starts = [o.steps[0].start_time for o in orders if o.steps and o.steps[0].start_time]
        first_submit = min(starts)
    window = (max(ends) - first_submit).total_seconds()
    done = len(orders)
    per_s = done / window
    # Between the 10th and the 90th percentile completion: the run without its ramp-up and its
    # last round's stragglers (by rank, so rounds of lockstep completions do not bias it).
    ranked = sorted(ends)
    low, high = ranked[len(ranked) // 10], ranked[(len(ranked) * 9) // 10]
    spread = (high - low).total_seconds()
    steady = ((len(ranked) * 9) // 10 - len(ranked) // 10) / spread if spread > 0 else per_s
    latency = sorted(
        (o.complete_time - o.start_time).total_seconds() for o in orders if o.complete_time
    )
    in_node = sorted(
        (o.complete_time - o.steps[0].start_time).total_seconds()
        for o in orders
        if o.complete_time and o.steps[0].start_time
    )
    steps = sorted(
        (s.complete_time - s.start_time).total_seconds() * 1000
        for o in orders
        for s in o.steps
        if s.complete_time and s.start_time
    )
    per_step: list[list[float]] = [[] for _ in range(STEPS)]
    for o in orders:
        for i, step in enumerate(o.steps[:STEPS]):
            if step.complete_time and step.start_time:
                per_step[i].append((step.complete_time - step.start_time).total_seconds() * 1000)
    for durations in per_step:
        durations.sort()
    gaps = sorted(  # a step's completion to the next one's start: the boundary's cost
        (b.start_time - a.complete_time).total_seconds() * 1000
        for o in orders
        for a, b in zip(o.steps, o.steps[1:], strict=False)
        if a.complete_time and b.start_time
    )
    theoretical = opts.theoretical
    slot_ms = opts.nodes * opts.concurrency / per_s * 1000
    return Result(
        mode=("http-" + opts.client) if opts.http else "direct",
        cpus=os.cpu_count() or 0,
        nodes=opts.nodes,
        concurrency=opts.concurrency,
        step_seconds=opts.step_seconds,
        failure_rate=opts.failure_rate,
        preload=opts.preload,
        products=opts.products,
        payment_delay=opts.payment_delay,
        accepted=len(state.ids),
        submit_errors=dict(state.errors),
        completed=sum(o.status == "completed" for o in orders),
        failed=sum(o.status == "failed" for o in orders),
        submit_seconds=submit_seconds,
        submit_per_s=len(state.ids) / submit_seconds,
        window_seconds=window,
        orders_per_s=per_s,
        steady_per_s=steady,
        theoretical_per_s=theoretical,
        utilization=per_s / theoretical if theoretical else None,
        latency_p50=percentile(latency, 0.5),
        latency_p99=percentile(latency, 0.99),
        in_node_p50=percentile(in_node, 0.5),
        in_node_p99=percentile(in_node, 0.99),
        step_p50_ms=percentile(steps, 0.5),
        step_p99_ms=percentile(steps, 0.99),
        steps_ms=[(percentile(d, 0.5), percentile(d, 0.99)) for d in per_step if d],
        boundary_p50_ms=percentile(gaps, 0.5) if gaps else 0.0,
        boundary_p99_ms=percentile(gaps, 0.99) if gaps else 0.0,
        slot_time_ms=slot_ms,
        overhead_per_step_ms=slot_ms / STEPS - opts.step_seconds * 1000,
        cpu_ms_per_order={k: v / done * 1000 for k, v in cpu.used.items()},
        cpu_cores=cpu.cores(),
        other_cores=cpu.elsewhere / cpu.seconds if cpu.seconds else 0.0,
        node_rss_mib=sampler.peak_mib("node-"),
        api_rss_mib=sampler.peak_mib("api"),
        server_rss_mib=sampler.peak_mib("nats-server"),
        free=opts.free,
        log_level=opts.log_level,
        engine_only=opts.engine_only,
        tree=str(opts.tree) if opts.tree else None,
        rss_mib={k: v / 2**20 for k, v in sampler.peaks.items()},
        orders_by_node=_orders_by_node(orders),
    )


def _orders_by_node(orders: list[OrderTimes]) -> dict[str, int]:
    """How many orders each node process finished (``bench-node-N`` runs as ``node-N``)."""
    counts: dict[str, int] = {}
    for order in orders:
        last = order.steps[-1].node_id if order.steps else None
        if last is not None:
            name = last.removeprefix("bench-")
            counts[name] = counts.get(name, 0) + 1
    return counts


# -- output ----------------------------------------------------------------------------------


def _own(r: Result, name: str) -> str:
    """A node's CPU per order it finished itself, when there are several nodes."""
    done = r.orders_by_node.get(name)
    if r.nodes < 2 or not done:
        return ""
    total = r.cpu_ms_per_order[name] * (r.completed + r.failed)
    return f" [{total / done:.3f} ms per own order, {done} orders]"


def report(r: Result, opts: Options) -> str:
    """The human-readable result; ``--json`` adds the same numbers as one line."""
    lean = r.mode.startswith("ceiling")
    api = "" if r.engine_only and not r.mode.startswith("http") else "1 api, "
    shared = f"nats-server, {r.nodes} lean worker" if lean else f"nats-server, {api}{r.nodes}"
    if lean:
        shop = "no shop, no logs, no metrics (the lean pipeline)"
    elif r.engine_only:
        shop = f"engine only (no shop effects); log level {r.log_level}"
    else:
        paid = "priced 0 (no payment)" if r.free else f"payment verdict after {r.payment_delay:g}s"
        shop = f"shop: {r.products} products, {paid}; log level {r.log_level}"
    if r.tree and not lean:
        shop += f"; nodes and api from {r.tree}"
    ratio = "n/a (D = 0)" if r.utilization is None else f"{r.utilization:.3f}"
    theory = "unbounded (D = 0)" if r.theoretical_per_s is None else f"{r.theoretical_per_s:.1f}"
    order_time = "4 x D" + (" + payment delay" if r.payment_delay else "")
    window = "first step start" if r.preload else "first submit"
    steady_ratio = (
        f" (10th-90th percentile completions: {r.steady_per_s / r.theoretical_per_s:.3f})"
        if r.theoretical_per_s
        else ""
    )
    cpu = ", ".join(
        f"{k} {v:.3f} ms ({r.cpu_cores[k]:.2f} cores)" + _own(r, k)
        for k, v in sorted(r.cpu_ms_per_order.items())
    )
    rss = ", ".join(
        f"{name} {v:.1f} MiB"
        for name, v in sorted(r.rss_mib.items())
        if name.startswith(("node-", "api", "nats-server"))
    )
    lines = [
        (
            f"{r.mode}: the lean pipeline{' (preloaded)' if r.preload else ''}"
            if lean
            else f"orderflow throughput ({r.mode} submit{', preloaded' if r.preload else ''})"
        ),
        f"  machine      {r.cpus} CPUs shared by {shared} process(es) and this load generator",
        f"  config       K={r.nodes} nodes, C={r.concurrency}, D={r.step_seconds:g}s, "
        f"failure rate {r.failure_rate:g}, {opts.clients} submitters; {shop}",
        f"  submitted    {r.accepted} accepted in {r.submit_seconds:.2f}s "
        f"({r.submit_per_s:.0f}/s), errors: {r.submit_errors or 'none'}",
        f"  done         {r.completed} completed, {r.failed} failed, "
        f"window {r.window_seconds:.2f}s ({window} -> last terminal)",
        f"  orders/s     {r.orders_per_s:.1f}",
        f"  theoretical  {theory} orders/s = K x C / ({order_time})",
        f"  utilization  {ratio}{steady_ratio}",
        f"  latency      end-to-end p50 {r.latency_p50:.3f}s p99 {r.latency_p99:.3f}s; "
        f"first step -> terminal p50 {r.in_node_p50:.3f}s p99 {r.in_node_p99:.3f}s",
        f"  step         p50 {r.step_p50_ms:.2f} ms p99 {r.step_p99_ms:.2f} ms "
        f"(step start -> step complete: the pre-step store write, then D of work)",
        "  per step     "
        + ", ".join(f"{n} p50 {a:.1f}/p99 {b:.1f} ms" for n, (a, b) in enumerate(r.steps_ms, 1))
        + f"; between steps p50 {r.boundary_p50_ms:.2f}/p99 {r.boundary_p99_ms:.2f} ms",
        f"  slot time    {r.slot_time_ms:.2f} ms per order per slot (K x C / orders/s); "
        f"overhead per step {r.overhead_per_step_ms:.3f} ms (slot time / 4 - D; meaningful "
        "while every slot stays busy, as in a backlog run)",
        f"  cpu/order    {cpu}",
        f"  peak RSS     {rss}"
        + (f"; reconciler leader: {', '.join(r.leaders)}" if r.nodes > 1 and r.leaders else ""),
        f"  elsewhere    {r.other_cores:.2f} cores busy outside these processes during the run"
        + ("  << the machine was not quiet: numbers are skewed" if r.other_cores > 0.15 else ""),
    ]
    if r.read_lag is not None:
        lines.append(
            f"  read model   {r.read_lag} revisions not applied yet when the last order was "
            f"terminal ({r.read_applied} applied since the api started)"
        )
    if r.failure_rate > 0:
        lines.append("  note         failed orders run fewer steps: utilization overstates")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--nodes", type=int, default=1, help="node processes K (default 1)")
    p.add_argument("--orders", type=int, default=None, help="orders N (default: ~15 s of work)")
    p.add_argument("--step-seconds", type=float, default=0.05, help="step duration D")
    p.add_argument("--concurrency", type=int, default=50, help="orders in flight per node C")
    p.add_argument("--failure-rate", type=float, default=0.0, help="per-step failure (default 0)")
    p.add_argument("--http", action="store_true", help="submit through an api process")
    p.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="HTTP client for --http (raw: nodeapp.core.http, the least CPU)",
    )
    p.add_argument(
        "--clients",
        type=int,
        default=None,
        help="concurrent submitters (default 64 with --http, else 128)",
    )
    p.add_argument("--overhead", action="store_true", help="D = 0: measure per-order overhead")
    p.add_argument(
        "--preload",
        action="store_true",
        help="submit everything before the nodes start; the window then starts at the "
        "first step (node drain rate, without the submitter competing)",
    )
    p.add_argument("--rate", type=float, default=None, help="open-loop submit rate (orders/s)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the order bodies")
    p.add_argument("--timeout", type=float, default=None, help="whole-run deadline, seconds")
    p.add_argument("--keep", action="store_true", help="keep the broker store and logs")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="py-spy record the node, api and bench processes into DIR",
    )
    p.add_argument(
        "--products", type=int, default=10, help="products of the benchmark catalog (default 10)"
    )
    p.add_argument(
        "--payment-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="the simulated gateway's verdict delay (default 0: the payment machinery only)",
    )
    p.add_argument(
        "--free",
        action="store_true",
        help="price the benchmark products at 0: orders pay nothing, so the payment (authorize, "
        "callback, capture) is skipped; stock and notifications stay",
    )
    p.add_argument(
        "--engine-only",
        action="store_true",
        help="nodes without the shop's effects (benchmarks/bare_node.py): the engine alone",
    )
    p.add_argument(
        "--tree",
        type=Path,
        default=None,
        metavar="DIR",
        help="run the nodes and the api from another checkout (the harness stays this one)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        help="ORDERFLOW_LOG_LEVEL of the api and nodes (default INFO, what a user runs)",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="run benchmarks.ceiling (the lean pipeline) and orderflow alternately, "
        "--rounds times each, and print orderflow / ceiling",
    )
    p.add_argument(
        "--against",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --compare: alternate with DIR's orderflow (same harness) instead of the ceiling",
    )
    p.add_argument("--rounds", type=int, default=3, help="pairs of runs with --compare")
    p.add_argument("--json", action="store_true", help="also print one JSON result line")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS for the machine to be idle (shared cores)",
    )
    a = p.parse_args(argv)
    step = 0.0 if a.overhead else a.step_seconds
    if min(a.nodes, a.concurrency, a.products, a.rounds) < 1 or step < 0 or a.payment_delay < 0:
        p.error(
            "--nodes, --concurrency, --products and --rounds must be >= 1, "
            "--step-seconds and --payment-delay >= 0"
        )
    slots = a.nodes * a.concurrency
    # A whole number of "rounds" (every slot busy once): a partial last round would idle slots.
    order_seconds = STEPS * step + a.payment_delay
    rounds = max(1, round(TARGET_SECONDS / order_seconds)) if step > 0 else 0
    orders = a.orders or (slots * rounds if step > 0 else 20_000)
    expected = orders / (slots / order_seconds if step > 0 else 500.0)
    return Options(
        nodes=a.nodes,
        orders=orders,
        step_seconds=step,
        concurrency=a.concurrency,
        failure_rate=a.failure_rate,
        http=a.http,
        client=a.client,
        clients=a.clients or (64 if a.http else 128),
        overhead=a.overhead,
        preload=a.preload,
        rate=a.rate,
        seed=a.seed,
        timeout=a.timeout or 120 + 3 * expected,
        keep=a.keep,
        json=a.json,
        profile=a.profile,
        wait_quiet=a.wait_quiet,
        products=a.products,
        payment_delay=a.payment_delay,
        free=a.free,
        log_level=a.log_level.upper(),
        compare=a.compare,
        rounds=a.rounds,
        engine_only=a.engine_only,
        tree=a.tree.resolve() if a.tree else None,
        against=a.against.resolve() if a.against else None,
    )


async def _main(opts: Options, procs: Processes, kind: type[Run]) -> Result:
    """The run under its deadline; SIGTERM cancels it like Ctrl-C does."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    async with asyncio.timeout(opts.timeout):
        return await run(opts, procs, kind)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.compare or opts.against:
        # Imported here: ``benchmarks.ceiling`` builds on this module's ``Run``.
        from benchmarks.ceiling import compare

        return compare(opts)
    try:
        if opts.wait_quiet > 0:
            wait_for_quiet(opts.wait_quiet)
        result = run_cleanly(opts)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted", file=sys.stderr)
        return 130
    except TimeoutError:
        print(f"the run did not finish within {opts.timeout:.0f}s", file=sys.stderr)
        return 1
    except OrderflowError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print_result(result, opts)
    return 0


def print_result(result: Result, opts: Options) -> None:
    """The human report, the profile's summary when one was taken, the JSON when asked
    (flushed: a comparison prints each run as it ends)."""
    print(report(result, opts), flush=True)
    if opts.profile is not None:
        print(profile_summary(opts.profile), flush=True)
    if opts.json:
        print(msgspec.json.encode(result).decode(), flush=True)


def run_cleanly(opts: Options, kind: type[Run] = Run) -> Result:
    """Run on uvloop; whatever happens, stop every process the run started (the broker last)."""
    with bench_folder(opts.keep) as folder:
        procs = Processes(folder, opts.tree)
        try:
            return uvloop.run(_main(opts, procs, kind))
        finally:
            with sigint_ignored():
                procs.stop_all()


def profile_summary(folder: Path, limit: int = 12) -> str:
    """The hottest functions of each profiled process, by self and by inclusive time."""
    lines = []
    for path in sorted(folder.glob("*.pyspy.txt")):
        lines.append(f"profile {path}  (% of samples: inclusive, self)")
        for by_self in (True, False):
            lines.append("  by self time:" if by_self else "  by inclusive time:")
            for frame, incl, own in top_functions(path, limit, by_self=by_self):
                lines.append(f"    {incl:5.1f} {own:5.1f}  {frame}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
