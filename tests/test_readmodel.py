"""The read model against a real nats-server: filters, paging, bad parameters, restarts that
resume from the checkpoint, a rebuild from nothing, live changes and a broker outage."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from nodeapp.broker.resources import ORDERS_BUCKET, ensure_resources
from nodeapp.core.errors import BrokerUnavailable, InvalidOrder, OrderExists, SettingsError
from nodeapp.core.settings import Settings, load_settings
from nodeapp.local.natsserver import NatsServer
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import Item, Order, OrderStatus, new_order, new_order_id
from nodeapp.orders.store import OrderStore
from nodeapp.readmodel.params import STATUSES, Position, encode_cursor
from nodeapp.readmodel.probe import ReadModelProbe
from nodeapp.readmodel.projector import Projector
from nodeapp.readmodel.service import ReadModel, open_read_model, rebuild_read_model
from tests.support.listing import expected
from tests.support.waiting import wait_for

BASE = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
CUSTOMERS = ("c-0", "c-1", "c-2")
PRODUCTS = ("p-0", "p-1", "p-2", "p-3", "p-9")
CATCH_UP = 15.0


def zulu(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _order(i: int) -> Order:
    """Order ``i`` of the seed: customers, products, start times and outcomes all mixed; orders
    10 and 11 start at the same microsecond (ties are broken by order id)."""
    items = [Item(f"p-{i % 4}", 1 + i % 3, Decimal("2.50"))]
    if i % 6 == 0:
        items += [Item("p-9", 1, Decimal("1.00")), Item(f"p-{i % 4}", 1, Decimal("2.50"))]
    start = BASE + timedelta(seconds=10 * min(i, 10) + 10 * max(0, i - 11), microseconds=7)
    amount = sum((it.unit_price or Decimal(0)) * it.quantity for it in items)
    return new_order(new_order_id(), CUSTOMERS[i % 3], items, Decimal(amount), now=start)


def _outcome(order: Order, i: int) -> bool:
    """Move the order to outcome ``i % 5``; False for the orders left as accepted."""
    kind = i % 5
    if kind == 0:
        return False
    finished = order.start_time + timedelta(seconds=1 + i)
    outcomes: dict[int, tuple[OrderStatus, str, datetime | None]] = {
        1: ("running", "Processing", None),
        2: ("completed", "Completed", finished),
        3: ("failed", "Failed", finished),
        4: ("rolling_back", "Pre-Processing", None),
    }
    order.status, order.current_step, order.complete_time = outcomes[kind]
    return True


async def seed(store: OrderStore, count: int = 30) -> list[Order]:
    """``count`` orders as the documents stand now (revision set)."""
    orders = []
    for i in range(count):
        order = _order(i)
        await store.create(order)
        if _outcome(order, i):
            await store.update(order)
        orders.append(order)
    return orders


def remove_files(folder: Path, pattern: str) -> None:
    for leftover in folder.glob(pattern):
        leftover.unlink()


async def every_page(read_model: ReadModel, limit: int, **filters: Any) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        page = await read_model.list_orders(limit=limit, cursor=cursor, **filters)
        pages.append([o.order_id for o in page.orders])
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


@pytest.fixture
async def read_model(tmp_path: Path, bare_broker: Handles) -> AsyncIterator[ReadModel]:
    async with open_read_model(tmp_path / "read" / "orders.db", bare_broker) as model:
        yield model


async def test_every_filter_and_combination_returns_exactly_the_right_orders(
    bare_broker: Handles, read_model: ReadModel
) -> None:
    orders = await seed(bare_broker.store)
    await read_model.projector.caught_up(CATCH_UP)
    windows = [(None, None), (BASE + timedelta(seconds=45), BASE + timedelta(seconds=150))]
    combos = itertools.product(
        [None, *sorted(STATUSES)], [None, *CUSTOMERS], [None, *PRODUCTS], windows
    )
    for status, customer, product, (after, before) in combos:
        page = await read_model.list_orders(
            status=status,
            customer_id=customer,
            product_id=product,
            created_after=None if after is None else zulu(after),
            created_before=before,
            limit=500,
        )
        want = expected(orders, status, customer, product, after, before)
        assert [o.order_id for o in page.orders] == want, (status, customer, product, after)
        assert page.next_cursor is None

    newest = (await read_model.list_orders(limit="1")).orders[0]
    top = max(orders, key=lambda o: (o.start_time, o.order_id))
    assert (newest.order_id, newest.status, newest.revision) == (
        top.order_id,
        top.status,
        top.revision,
    )
    assert (newest.amount, newest.start_time, newest.complete_time) == (
        top.amount,
        top.start_time,
        top.complete_time,
    )


async def test_paging_visits_each_order_once_even_while_orders_change(
    bare_broker: Handles, read_model: ReadModel
) -> None:
    orders = await seed(bare_broker.store)
    await read_model.projector.caught_up(CATCH_UP)
    pages = await every_page(read_model, 7)
    assert [len(p) for p in pages] == [7, 7, 7, 7, 2]
    assert [o for p in pages for o in p] == expected(orders)
    by_customer = [o for p in await every_page(read_model, 7, customer_id="c-1") for o in p]
    assert by_customer == expected(orders, customer="c-1")

    # Between pages every order changes and newer ones arrive: none repeats, none is skipped.
    first = await read_model.list_orders(limit=7)
    seen = [o.order_id for o in first.orders]
    for order in orders:
        order.current_step = "Post-Processing"
        await bare_broker.store.update(order)
    for i in range(3):
        await bare_broker.store.create(_order(40 + i))
    await read_model.projector.caught_up(CATCH_UP)
    cursor = first.next_cursor
    while cursor is not None:
        page = await read_model.list_orders(limit=7, cursor=cursor)
        seen += [o.order_id for o in page.orders]
        cursor = page.next_cursor
    assert seen == expected(orders)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "lost"}, "status"),
        ({"customer_id": "two words"}, "customer_id"),
        ({"product_id": "p" * 65}, "product_id"),
        ({"created_after": "2025-03-01T10:00:00"}, "created_after"),
        ({"created_after": "2025-03-01T10:00:00+02:00"}, "created_after"),
        ({"created_after": "2025-W09-6T10:00:00Z"}, "created_after"),  # ISO, not the one form
        ({"created_before": "2025-04-31T10:00:00Z"}, "created_before"),
        ({"created_before": "yesterday"}, "created_before"),
        ({"created_before": datetime(2025, 3, 1)}, "created_before"),  # naive: no zone
        ({"limit": "0"}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "!!"}, "cursor"),
        ({"cursor": encode_cursor(Position("2025-02-30T00:00:00.000000Z", "X"))}, "cursor"),
    ],
)
async def test_a_bad_parameter_is_refused_naming_it(
    read_model: ReadModel, params: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidOrder) as refused:
        await read_model.list_orders(**params)
    assert [e.field for e in refused.value.errors] == [field]
    assert refused.value.status == 422


async def test_bad_parameters_are_all_named_at_once(read_model: ReadModel) -> None:
    with pytest.raises(InvalidOrder) as refused:
        await read_model.list_orders(status="x", limit=0, cursor="x")
    assert sorted(e.field for e in refused.value.errors) == ["cursor", "limit", "status"]
    for window in ("0", "-1", "nan", "soon", " 60", "+5", "1e999", 1e9):
        with pytest.raises(InvalidOrder) as bad_window:
            await read_model.stats(window)
        assert [e.field for e in bad_window.value.errors] == ["window"]


async def test_a_restart_resumes_from_the_checkpoint_and_loses_nothing(
    tmp_path: Path, bare_broker: Handles
) -> None:
    path = tmp_path / "orders.db"
    orders = await seed(bare_broker.store, 12)
    async with Projector(path, bare_broker) as first:
        stopped_at = await first.caught_up(CATCH_UP)
    assert first.applied == stopped_at  # the first run read the stream from the start

    # While no projector runs: new orders, changes, a deletion.
    orders += [_order(i) for i in range(20, 26)]
    for order in orders[12:]:
        await bare_broker.store.create(order)
    for order in orders[:4]:
        order.status, order.current_step = "running", "Processing"
        await bare_broker.store.update(order)
    gone = orders.pop(5)
    assert gone.revision is not None
    await bare_broker.store.delete(gone.order_id, gone.revision)

    async with open_read_model(path, bare_broker) as read_model:
        projector = read_model.projector
        last = await projector.caught_up(CATCH_UP)
        assert projector.applied == last - stopped_at == 6 + 4 + 1
        page = await read_model.list_orders(limit=500)
        stats = await read_model.stats()
    assert [o.order_id for o in page.orders] == expected(orders)
    assert stats.by_status == Counter(o.status for o in orders)
    assert stats.by_step == Counter(o.current_step for o in orders)
    assert {o.order_id: (o.status, o.revision) for o in page.orders} == {
        o.order_id: (o.status, o.revision) for o in orders
    }


async def test_a_deleted_file_is_rebuilt_with_nothing_counted_twice(
    tmp_path: Path, bare_broker: Handles
) -> None:
    path = tmp_path / "orders.db"
    orders = await seed(bare_broker.store)
    now = BASE + timedelta(seconds=400)
    async with open_read_model(path, bare_broker) as read_model:
        await read_model.projector.caught_up(CATCH_UP)
        before = await read_model.stats(window=3600, now=now)
        listed = await every_page(read_model, 7)
    remove_files(tmp_path, "orders.db*")  # the file, its WAL and its shared memory

    async with open_read_model(path, bare_broker) as read_model:
        last = await read_model.projector.caught_up(CATCH_UP)
        assert read_model.projector.applied == last  # replayed from sequence 1
        assert await read_model.stats(window=3600, now=now) == before
        assert await every_page(read_model, 7) == listed
        await read_model.projector.rebuild()  # and again, on a live projector
        await read_model.projector.caught_up(CATCH_UP)
        assert await read_model.stats(window=3600, now=now) == before

    report = await rebuild_read_model(path, bare_broker, within=CATCH_UP)
    assert (report.orders, report.checkpoint) == (30, last)
    assert sum(before.by_status.values()) == 30
    assert before.by_status == {s: sum(o.status == s for o in orders) for s in before.by_status}
    latencies = sorted(
        (o.complete_time - o.start_time).total_seconds()
        for o in orders
        if o.status == "completed" and o.complete_time
    )
    assert before.completed_in_window == len(latencies) == 6
    assert before.latency_seconds is not None
    assert before.latency_seconds.p50 == latencies[2]
    assert before.latency_seconds.p99 == latencies[-1]
    assert before.by_step["Completed"] == 6


async def test_a_change_shows_in_the_list_within_a_second(
    bare_broker: Handles, read_model: ReadModel
) -> None:
    orders = await seed(bare_broker.store, 5)
    await read_model.projector.caught_up(CATCH_UP)
    order = orders[0]
    order.status, order.current_step = "running", "Scheduling"
    await bare_broker.store.update(order)

    async def shown() -> bool:
        page = await read_model.list_orders(status="running")
        return order.order_id in {o.order_id for o in page.orders}

    await wait_for(shown, within=1.5, interval=0.02)

    assert order.revision is not None
    await bare_broker.store.delete(order.order_id, order.revision)
    await bare_broker.buckets.orders.put("not-an-order", b"{")  # logged, counted, skipped

    async def removed() -> bool:
        page = await read_model.list_orders()
        return order.order_id not in {o.order_id for o in page.orders}

    await wait_for(removed, within=1.5, interval=0.02)
    await read_model.projector.caught_up(CATCH_UP)
    assert read_model.projector.status().bad_revisions == 1
    assert (await read_model.projector.lag()).messages == 0


async def test_the_projection_outlives_a_broker_outage(
    tmp_path: Path, nats_server: NatsServer, bare_broker: Handles
) -> None:
    orders = await seed(bare_broker.store, 3)
    async with Projector(tmp_path / "orders.db", bare_broker, idle=0.5) as projector:
        await projector.caught_up(CATCH_UP)
        nats_server.stop()
        nats_server.start()
        late = _order(50)

        async def stored() -> bool:
            try:
                await bare_broker.store.create(late)
            except BrokerUnavailable:  # the client is still reconnecting: try again
                return False
            except OrderExists:  # stored by an attempt whose answer was lost
                pass
            return True

        await wait_for(stored, within=20)
        await projector.caught_up(20)
        assert projector.status().running
    async with open_read_model(tmp_path / "orders.db", bare_broker) as read_model:
        page = await read_model.list_orders()
    assert [o.order_id for o in page.orders] == expected([*orders, late])


async def test_a_rebuild_beside_a_running_projector_leaves_both_right(
    tmp_path: Path, bare_broker: Handles
) -> None:
    """``orderflow readmodel rebuild`` on the file a running api projects into: whichever
    writer finds the checkpoint moved resumes from the stored one; nothing is lost or doubled."""
    path = tmp_path / "orders.db"
    orders = await seed(bare_broker.store)
    async with open_read_model(path, bare_broker) as read_model:
        await read_model.projector.caught_up(CATCH_UP)

        async def keep_writing() -> None:
            for round_ in range(4):
                for order in orders:
                    order.current_step = f"round-{round_}"
                    await bare_broker.store.update(order)

        writing = asyncio.create_task(keep_writing())
        report = await rebuild_read_model(path, bare_broker, within=CATCH_UP)
        await writing
        await read_model.projector.caught_up(CATCH_UP)
        page = await read_model.list_orders(limit=500)
        stats = await read_model.stats()
    assert report.orders == 30
    assert {o.order_id: (o.current_step, o.revision) for o in page.orders} == {
        o.order_id: (o.current_step, o.revision) for o in orders
    }
    assert stats.by_step == {"round-3": 30}
    assert stats.by_status == Counter(o.status for o in orders)


async def test_a_recreated_bucket_is_projected_from_scratch(
    tmp_path: Path, settings: Settings, bare_broker: Handles
) -> None:
    old = await seed(bare_broker.store, 5)
    async with open_read_model(tmp_path / "orders.db", bare_broker) as read_model:
        read_model.projector.idle = 0.5
        await read_model.projector.caught_up(CATCH_UP)
        await bare_broker.js.delete_key_value(ORDERS_BUCKET)
        await ensure_resources(bare_broker.js, settings)
        new = [_order(60), _order(61)]
        for order in new:
            await bare_broker.store.create(order)

        async def only_new() -> list[str] | None:
            page = await read_model.list_orders()
            listed = [o.order_id for o in page.orders]
            return listed if listed == expected(new) else None

        listed = await wait_for(only_new, within=CATCH_UP)
        stats = await read_model.stats()
    assert sum(stats.by_status.values()) == 2
    assert not {o.order_id for o in old} & set(listed)


def test_the_read_db_setting_names_a_file() -> None:
    assert load_settings({}).read_db == "orderflow-read.db"
    assert load_settings({"ORDERFLOW_READ_DB": "/var/lib/x.db"}).read_db == "/var/lib/x.db"
    for bad in (":memory:", "file:x.db?mode=memory"):
        with pytest.raises(SettingsError) as refused:
            load_settings({"ORDERFLOW_READ_DB": bad})
        assert refused.value.variable == "ORDERFLOW_READ_DB"


async def test_the_probe_exports_lag_and_progress(
    bare_broker: Handles, read_model: ReadModel
) -> None:
    await seed(bare_broker.store, 3)
    last = await read_model.projector.caught_up(CATCH_UP)
    registry = CollectorRegistry()
    opened: list[Projector] = []
    probe = ReadModelProbe(lambda: opened[0] if opened else None)
    registry.register(probe)
    await probe.refresh()
    assert registry.get_sample_value("orderflow_readmodel_running") == 0
    assert registry.get_sample_value("orderflow_readmodel_checkpoint") is None

    opened.append(read_model.projector)
    await probe.refresh()
    assert registry.get_sample_value("orderflow_readmodel_running") == 1
    assert registry.get_sample_value("orderflow_readmodel_checkpoint") == last
    assert registry.get_sample_value("orderflow_readmodel_revisions_applied_total") == last
    assert registry.get_sample_value("orderflow_readmodel_lag_up") == 1
    assert registry.get_sample_value("orderflow_readmodel_lag_messages") == 0
    assert registry.get_sample_value("orderflow_readmodel_lag_seconds") == 0
