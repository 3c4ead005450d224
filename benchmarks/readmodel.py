"""The read model: how fast the projector fills SQLite, and how fast a list answers.

Run from the repository root, for example::

    python -m benchmarks.readmodel
    python -m benchmarks.readmodel --revisions 100000 --orders 100000 --queries 5000

Projection: a throwaway nats-server (temporary store, free loopback port); ``--revisions`` order
revisions are written to the ``orders`` bucket (a quarter as many orders, each created and then
updated three times, in rounds, so a batch holds distinct orders and the projector's folding of
an order's revisions within a batch does not flatter it); then a projector starts on an empty
file and is timed until it has applied them all: revisions/s from the stream into SQLite. Then,
with the projector idle, ``--changes`` single updates, each timed from the broker's answer to the
projector's commit of it: how soon a change can show in the list.

Queries: ``--orders`` orders are written straight into a fresh file (through the projector's own
batch write), then ``--queries`` ``GET /orders`` pages with random filters (status, customer,
product, a time window, each with some probability; a third of them also fetch the next page
through the cursor), timed one by one on the reader connection the api uses: p50/p95/p99. The
query plans of one query per filter are printed to show each walks an index in order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import aiosqlite
import uvloop
from nats.js.kv import KeyValue

from benchmarks.common import bench_folder, machine_busy_seconds, percentile, wait_for_quiet
from nodeapp.core.settings import load_settings
from nodeapp.local.natsserver import NatsServer
from nodeapp.orders.handles import broker_handles
from nodeapp.orders.model import Item, OrderStatus, encode, new_order, new_order_id
from nodeapp.readmodel.changes import Change, Row, Upsert, apply_batch
from nodeapp.readmodel.params import STATUSES, list_query
from nodeapp.readmodel.projector import Projector
from nodeapp.readmodel.queries import OrderPage, list_orders, page_sql
from nodeapp.readmodel.schema import connect, db_time
from nodeapp.readmodel.stats import order_stats

BASE: Final = datetime(2025, 3, 1, tzinfo=UTC)
DAY: Final = 24 * 3600.0
CUSTOMERS: Final = [f"customer-{i}" for i in range(1000)]
PRODUCTS: Final = [f"product-{i}" for i in range(200)]
OUTCOMES: Final = [("completed", "Completed")] * 16 + [("failed", "Failed")] * 2 + [
    ("running", "Processing"), ("accepted", "Scheduling"),
]  # fmt: skip
ROUNDS: Final[tuple[tuple[OrderStatus, str], ...]] = (
    ("accepted", "Scheduling"), ("running", "Processing"),
    ("running", "Post-Processing"), ("completed", "Completed"),
)  # fmt: skip
WRITE_CONCURRENCY: Final = 500
INSERT_BATCH: Final = 5000


def ms(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    return " ".join(f"p{q}={percentile(ordered, q / 100) * 1000:.2f}ms" for q in (50, 95, 99))


# -- projection ------------------------------------------------------------------------------


async def write_revisions(kv: KeyValue, revisions: int) -> float:
    """Create ``revisions // 4`` orders and update each three times; returns the seconds."""
    orders = [
        new_order(
            new_order_id(), random.choice(CUSTOMERS), [Item(random.choice(PRODUCTS), 1)], None
        )
        for _ in range(revisions // 4)
    ]
    started = time.perf_counter()
    for status, step in ROUNDS:
        for first in range(0, len(orders), WRITE_CONCURRENCY):
            chunk = orders[first : first + WRITE_CONCURRENCY]
            for order in chunk:
                order.status, order.current_step = status, step
            await asyncio.gather(*(kv.put(o.order_id, encode(o)) for o in chunk))
    return time.perf_counter() - started


async def projection(folder: Path, revisions: int, changes: int) -> list[str]:
    server = NatsServer(folder / "broker").start()
    try:
        settings = load_settings({}, nats_url=server.url, read_db=str(folder / "p.db"))
        async with broker_handles(settings, "bench-readmodel") as handles:
            kv = handles.buckets.orders
            wrote = await write_revisions(kv, revisions)
            async with Projector(settings.read_db, handles) as projector:
                started = time.perf_counter()
                await projector.caught_up(600)
                took = time.perf_counter() - started
                applied = projector.applied
                visible = await change_latencies(kv, projector, changes)
    finally:
        server.stop()
    return [
        f"wrote {revisions} revisions ({revisions // 4} orders x 4) in {wrote:.2f}s "
        f"({revisions / wrote:,.0f}/s, {WRITE_CONCURRENCY} puts in flight)",
        f"projection: {applied} revisions applied from sequence 1 in {took:.2f}s = "
        f"{applied / took:,.0f} revisions/s",
        f"a single change committed after (from the put's answer, {changes} changes): "
        f"{ms(visible)}",
    ]


async def change_latencies(kv: KeyValue, projector: Projector, count: int) -> list[float]:
    order = new_order(new_order_id(), "customer-0", [Item("product-0", 1)], None)
    took = []
    for i in range(count):
        order.current_step = f"step-{i}"
        revision = await kv.put(order.order_id, encode(order))
        started = time.perf_counter()
        await projector.reached(revision, 10)
        took.append(time.perf_counter() - started)
    return took


# -- queries ---------------------------------------------------------------------------------


def synthetic(i: int, rng: random.Random) -> Upsert:
    start = BASE + timedelta(seconds=DAY * i / 100_000)
    status, step = rng.choice(OUTCOMES)
    finished = None
    if step in ("Completed", "Failed"):
        finished = start + timedelta(seconds=rng.uniform(0.2, 30))
    latency = None if finished is None else (finished - start) // timedelta(microseconds=1)
    amount = str(Decimal(rng.randint(100, 99_999)) / 100)
    products = json.dumps(sorted(rng.sample(PRODUCTS, rng.randint(1, 3))))
    row: Row = (
        new_order_id(), status, step, rng.choice(CUSTOMERS), amount, db_time(start),
        None if finished is None else db_time(finished), latency, products, i + 1,
    )  # fmt: skip
    return Upsert(row)


async def fill(path: Path, orders: int) -> float:
    rng = random.Random(7)
    started = time.perf_counter()
    async with connect(path, writer=True) as db:
        for first in range(0, orders, INSERT_BATCH):
            upto = min(orders, first + INSERT_BATCH)
            batch: list[Change] = [synthetic(i, rng) for i in range(first, upto)]
            await apply_batch(db, batch, first, first + len(batch))

    return time.perf_counter() - started


def random_filters(rng: random.Random) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    if rng.random() < 0.4:
        filters["status"] = rng.choice(sorted(STATUSES))
    if rng.random() < 0.3:
        filters["customer_id"] = rng.choice(CUSTOMERS)
    if rng.random() < 0.3:
        filters["product_id"] = rng.choice(PRODUCTS)
    if rng.random() < 0.3:
        after = BASE + timedelta(seconds=rng.uniform(0, DAY))
        filters["created_after"] = after
        filters["created_before"] = after + timedelta(seconds=rng.uniform(60, DAY / 4))
    return filters


async def timed_page(db: aiosqlite.Connection, **params: Any) -> tuple[float, OrderPage]:
    """One ``GET /orders`` page as the api computes it: parameters checked, then the query."""
    started = time.perf_counter()
    page = await list_orders(db, list_query(**params))
    return time.perf_counter() - started, page


async def plans(db: aiosqlite.Connection) -> list[str]:
    lines = []
    for name, filters in (
        ("none", {}),
        ("status", {"status": "running"}),
        ("customer", {"customer_id": "customer-1"}),
        ("product", {"product_id": "product-1"}),
        ("time", {"created_after": BASE + timedelta(hours=3)}),
    ):
        sql, params = page_sql(list_query(**filters))
        async with db.execute(f"EXPLAIN QUERY PLAN {sql}", params) as cursor:
            plan = "; ".join(str(row[-1]) for row in await cursor.fetchall())
        lines.append(f"plan ({name}): {plan}")
    return lines


async def queries(folder: Path, orders: int, count: int) -> list[str]:
    path = folder / "q.db"
    filled = await fill(path, orders)
    lines = [f"inserted {orders} orders directly in {filled:.2f}s"]
    rng = random.Random(11)
    firsts, nexts, filtered = [], [], 0
    async with connect(path, writer=False) as db:
        lines += await plans(db)
        for _ in range(count):
            filters = random_filters(rng)
            filtered += bool(filters)
            took, page = await timed_page(db, limit=50, **filters)
            firsts.append(took)
            if page.next_cursor and rng.random() < 1 / 3:
                took, _ = await timed_page(db, limit=50, cursor=page.next_cursor, **filters)
                nexts.append(took)
        stats = []
        for window in (60.0, 3600.0) * 10:
            started = time.perf_counter()
            await order_stats(db, window, now=BASE + timedelta(hours=12))
            stats.append(time.perf_counter() - started)
    return [
        *lines,
        f"list, first pages ({count}, {filtered} with filters): {ms(firsts)}",
        f"list, next pages through the cursor ({len(nexts)}): {ms(nexts)}",
        f"list, all pages: {ms(firsts + nexts)}",
        f"stats over {orders} orders (windows 60 s and 1 h, 20 calls): {ms(stats)}",
    ]


# -- running ---------------------------------------------------------------------------------


async def run(opts: argparse.Namespace, folder: Path) -> list[str]:
    lines = await projection(folder, opts.revisions, opts.changes)
    return lines + await queries(folder, opts.orders, opts.queries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--revisions", type=int, default=40_000)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--wait-quiet", type=float, default=0.0, help="first wait up to this long for idle cores"
    )
    opts = parser.parse_args(argv)
    if opts.wait_quiet > 0:
        wait_for_quiet(opts.wait_quiet)
    busy, cpu, started = machine_busy_seconds(), time.process_time(), time.perf_counter()
    with bench_folder(opts.keep) as folder:
        lines = uvloop.run(run(opts, folder))
    elapsed = time.perf_counter() - started
    machine, ours = machine_busy_seconds() - busy, time.process_time() - cpu
    print("\n".join(lines))
    print(
        f"run took {elapsed:.1f}s on {os.cpu_count()} cores; busy on average: "
        f"{machine / elapsed:.2f} cores, this process {ours / elapsed:.2f} of them"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
