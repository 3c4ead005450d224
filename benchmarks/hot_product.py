"""One hot product: how fast K processes can reserve it, and how many compare-and-sets they lose.

Run from the repository root::

    python -m benchmarks.hot_product          # K = 1 and 3, combined writes and separate ones
    python -m benchmarks.hot_product --processes 1 2 3 --orders 20000 --modes combined

ADR 0010 keeps a product's stock and every order's hold in one KV document changed by
compare-and-set, so reservations of one product serialize on one key; this measures what that
costs. It starts its own nats-server (temporary store, free loopback port); each run stocks a
fresh product with exactly N units and starts K worker processes (``--worker``, each with its own
NATS connection and R concurrent reservers) that together take N orders of quantity 1 through
``Stock.reserve_items`` -> ``commit_items`` -> ``forget_items``, the calls the node makes. Mode
``combined`` is ``Stock`` as the node uses it (a process's concurrent changes of one product
share one compare-and-set); ``separate`` gives every change its own (``combine=False``), the
naive design, with fewer orders (``--separate-orders``) as it is much slower. It prints, per run:

* reservations/s: N / the window from the first worker's start to the last worker's end (the
  workers start together, after all have connected);
* retries/reservation: how often a reservation was re-applied after a compare-and-set lost
  to another writer; retries/order counts the re-applied changes of all three operations;
* writes/order: compare-and-sets that landed per order (3 without combining);
* failures: orders that met an error (``StockContention`` after every attempt lost);
* the stock afterwards, which must read on_hand 0, reserved 0, no holds (nothing oversold,
  nothing leaked).

All processes share the machine's cores; the output says how many.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Final

import msgspec
import uvloop

from nodeapp.broker.connection import connection, jetstream
from nodeapp.core.errors import OrderflowError
from nodeapp.core.settings import Settings, load_settings
from nodeapp.local.natsserver import NatsServer
from nodeapp.orders.model import Item, new_order_id
from nodeapp.shop.resources import ensure_shop_resources
from nodeapp.shop.stock import Stock

GO: Final = "go\n"
COMBINED: Final = "combined"
SEPARATE: Final = "separate"
READY: Final = "ready"


class WorkerResult(msgspec.Struct):
    orders: int
    started: float  # time.time() of the first reservation
    ended: float
    retries: dict[str, int]
    writes: int
    failures: int


class RunResult(msgspec.Struct):
    mode: str
    processes: int
    orders: int
    window: float
    retries: dict[str, int]
    writes: int
    failures: int
    final: str


# --- one worker process -------------------------------------------------------------------------


async def work(
    settings: Settings, product_id: str, orders: int, reservers: int, combine: bool
) -> WorkerResult:
    """Take ``orders`` orders of the product through reserve, commit, forget, ``reservers`` at
    a time, on this process's own connection; starts when the parent writes ``go``."""
    async with connection(settings, "hot-product-worker") as nc:
        buckets = await ensure_shop_resources(jetstream(nc, settings), settings)
        stock = Stock(buckets.stock, combine=combine)
        print(READY, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        left = iter(range(orders))
        failures = 0

        async def reserver() -> None:
            nonlocal failures
            for _ in left:
                order_id, line = new_order_id(), [Item(product_id, 1)]
                try:
                    await stock.reserve_items(order_id, 1, line)
                    await stock.commit_items(order_id, 1, line)
                    await stock.forget_items(order_id, 1, line)
                except OrderflowError as exc:  # counted and shown: a benchmark reports
                    failures += 1
                    print(f"order {order_id}: {type(exc).__name__}: {exc}", file=sys.stderr)

        started = time.time()
        async with asyncio.TaskGroup() as group:
            for _ in range(reservers):
                group.create_task(reserver())
        ended = time.time()
    writes = stock.writer.writes
    return WorkerResult(orders, started, ended, dict(stock.retries), writes, failures)


# --- the parent: server, runs, report -----------------------------------------------------------


async def run(
    settings: Settings, mode: str, processes: int, orders: int, reservers: int
) -> RunResult:
    """One run: stock a fresh product with ``orders`` units, split the orders over
    ``processes`` workers, start them together, collect their results, check the stock."""
    product_id = f"hot-{mode}-{processes}"
    async with connection(settings, "hot-product") as nc:
        stock = Stock((await ensure_shop_resources(jetstream(nc, settings), settings)).stock)
        await stock.adjust(product_id, orders)
        shares = [orders // processes + (i < orders % processes) for i in range(processes)]
        children = [await _start_worker(settings, mode, product_id, n, reservers) for n in shares]
        try:
            for child in children:  # every worker connected before any starts
                assert child.stdout is not None
                if (await child.stdout.readline()).decode().strip() != READY:
                    raise RuntimeError("a worker failed to start; see its stderr above")
            for child in children:
                assert child.stdin is not None
                child.stdin.write(GO.encode())
                await child.stdin.drain()
            results = [await _result(child) for child in children]
        finally:
            for child in children:
                if child.returncode is None:
                    child.kill()
                    await child.wait()
        level = await stock.level(product_id)
    retries: Counter[str] = Counter()
    for result in results:
        retries.update(result.retries)
    window = max(r.ended for r in results) - min(r.started for r in results)
    final = f"on_hand {level.on_hand}, reserved {level.reserved}, holds {len(level.holds)}"
    failures, writes = sum(r.failures for r in results), sum(r.writes for r in results)
    return RunResult(mode, processes, orders, window, dict(retries), writes, failures, final)


async def _start_worker(
    settings: Settings, mode: str, product_id: str, orders: int, reservers: int
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.hot_product", "--worker", "--url", settings.nats_url,
        "--product", product_id, "--orders", str(orders), "--reservers", str(reservers),
        "--modes", mode, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _result(child: asyncio.subprocess.Process) -> WorkerResult:
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"a worker exited with {child.returncode}; see its stderr above")
    return msgspec.json.decode(out.strip().splitlines()[-1], type=WorkerResult)


def report(results: list[RunResult], reservers: int, command: str) -> str:
    lines = [
        f"$ {command}",
        f"hot product: N orders of quantity 1 through reserve -> commit -> forget, {reservers} "
        f"reservers per process, {os.cpu_count()} CPUs shared by every process",
        f"{'mode':<9} {'K':>2} {'orders':>7} {'window':>8} {'reservations/s':>15} "
        f"{'retries/reservation':>20} {'retries/order':>14} {'writes/order':>13} "
        f"{'failures':>9}  stock after",
    ]
    for r in results:
        lost = sum(r.retries.values())
        lines.append(
            f"{r.mode:<9} {r.processes:>2} {r.orders:>7} {r.window:>7.2f}s "
            f"{r.orders / r.window:>15.0f} {r.retries.get('reserve', 0) / r.orders:>20.2f} "
            f"{lost / r.orders:>14.2f} {r.writes / r.orders:>13.2f} {r.failures:>9}  {r.final}"
        )
    return "\n".join(lines)


async def main_parent(args: argparse.Namespace) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="hot-product-") as folder,
        NatsServer(Path(folder) / "nats") as server,
    ):
        settings = load_settings({}, nats_url=server.url)
        results = []
        for mode in args.modes:
            orders = args.orders if mode == COMBINED else args.separate_orders
            for k in args.processes:
                results.append(await run(settings, mode, k, orders, args.reservers))
                print(f"{mode} K={k} done", file=sys.stderr)
    command = "python -m benchmarks.hot_product " + " ".join(sys.argv[1:])
    print(report(results, args.reservers, command.strip()))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 3], metavar="K")
    parser.add_argument("--orders", type=int, default=30_000, help="orders per combined run")
    parser.add_argument("--separate-orders", type=int, default=300, help="... per separate run")
    parser.add_argument(
        "--modes", nargs="+", choices=[COMBINED, SEPARATE], default=[COMBINED, SEPARATE]
    )
    parser.add_argument("--reservers", type=int, default=50, help="concurrent per process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--product", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if not args.worker:
        uvloop.run(main_parent(args))
        return
    settings = load_settings({}, nats_url=args.url)
    combine = args.modes == [COMBINED]
    result = uvloop.run(work(settings, args.product, args.orders, args.reservers, combine))
    print(msgspec.json.encode(result).decode(), flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
