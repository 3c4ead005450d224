"""The shop's invariants with real nodes (ADR 0010): no oversell, stock and money conserved
under failures and a killed node, payment failures compensated, a step re-run after a crash
changing nothing twice, one notification per finished order.

Orders are priced at the catalog and carry their amount and payment token, as the api submits
them; the payment desk (``tests.support.shop``) plays the api's payment half.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections.abc import AsyncIterator

import msgspec
import pytest

from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import (
    COMPLETED,
    STEP_NAMES,
    Item,
    Order,
    Owner,
    new_order,
    new_order_id,
    utcnow,
)
from nodeapp.shop.notifications import notifications_for, read_state
from nodeapp.shop.notify_resources import notification_bucket
from nodeapp.shop.products import StockLevel
from tests.support.nodes import running_node
from tests.support.orders import wait_all_terminal, wait_terminal
from tests.support.processes import NodeProcesses, wait_registered
from tests.support.shop import (
    PRICE,
    PaymentDesk,
    payment_desk,
    settled_stock,
    sold,
    stocked,
    submit_priced,
)
from tests.support.waiting import wait_for
from tests.support.webhooks import WebhookReceiver

NOTIFY_SECRET = "shop-flow-notify-secret"


@pytest.fixture
async def desk(settings: Settings, broker: Handles) -> AsyncIterator[PaymentDesk]:
    """The payment desk on the test's settings: steps of 0.05 s, no random failures."""
    async with payment_desk(settings, broker, payment_timeout=5.0) as served:
        yield served


def counts(level: StockLevel) -> tuple[int, int]:
    return level.on_hand, level.reserved


async def assert_paid_once_or_given_back(desk: PaymentDesk, orders: list[Order]) -> None:
    """Completed orders are captured exactly once; failed ones were never charged, or their
    authorization voided, or their capture refunded; no payment was captured twice."""
    for order in orders:
        entry = await desk.entry(order.order_id)
        assert entry is None or entry.captures <= 1, entry
        if order.status == "completed":
            assert entry is not None
            assert (entry.status, entry.captures, entry.authorizations) == ("captured", 1, 1)
            assert order.payment is not None
            assert order.payment.status == "captured"
            assert order.payment.authorized_at is not None
            assert order.payment.captured_at is not None
        elif entry is not None:
            assert entry.status in ("voided", "refunded", "declined"), entry
            assert order.payment is not None
            assert order.payment.status == entry.status


async def test_no_oversell_across_three_node_processes(
    desk: PaymentDesk, broker: Handles, node_processes: NodeProcesses
) -> None:
    """60 orders of 1 race for 10 in stock on 3 node processes: exactly 10 are sold."""
    catalog = await stocked(broker, desk.settings, {"scarce": 10})
    node_processes.settings = msgspec.structs.replace(desk.settings, step_seconds=0.0)
    nodes = [node_processes.start(f"node-{n}") for n in range(3)]
    await wait_registered(broker, *nodes)

    order_ids = await asyncio.gather(
        *(submit_priced(broker, catalog, [("scarce", 1)]) for _ in range(60))
    )
    orders = await wait_all_terminal(broker.store, list(order_ids), within=90)

    completed = [o for o in orders if o.status == "completed"]
    failed = [o for o in orders if o.status == "failed"]
    assert (len(completed), len(failed)) == (10, 50)
    for order in failed:
        assert order.failure is not None
        assert (order.failure.step, order.failure.reason) == ("Scheduling", "out_of_stock: scarce")
        assert order.payment is None
    levels = await settled_stock(catalog, ["scarce"])
    assert counts(levels["scarce"]) == (0, 0)
    await assert_paid_once_or_given_back(desk, orders)


def _basket(rng: random.Random, products: list[str]) -> list[tuple[str, int]]:
    return [(p, rng.randint(1, 3)) for p in rng.sample(products, rng.randint(1, 2))]


@pytest.mark.slow
async def test_stock_and_money_are_conserved_under_failures_and_a_killed_node(
    desk: PaymentDesk, broker: Handles, node_processes: NodeProcesses
) -> None:
    """300 orders over 5 products, 5 % failures per step, a node SIGKILLed mid-run: sold
    stock is exactly what completed orders bought, nothing stays reserved, nobody is charged
    twice and every failed order's money is given back."""
    start = {f"kit-{n}": 150 for n in range(5)}  # less than asked for: some run out too
    catalog = await stocked(broker, desk.settings, start)
    # Steps long enough that the victim's orders are still mid-step when the kill lands, even
    # on a busy machine (the probe below reads every document at once).
    node_processes.settings = msgspec.structs.replace(
        desk.settings, failure_rate=0.05, step_seconds=0.3
    )
    nodes = [node_processes.start(f"node-{n}") for n in range(3)]
    await wait_registered(broker, *nodes)

    rng = random.Random(10)
    baskets = [_basket(rng, sorted(start)) for _ in range(300)]
    order_ids = list(await asyncio.gather(*(submit_priced(broker, catalog, b) for b in baskets)))

    async def under_way() -> bool:
        """A good part done, and the victim holding orders in the middle of a step."""
        seen = await asyncio.gather(*(broker.store.get(o) for o in order_ids))
        held = [o for o in seen if not o.terminal and o.owner and o.owner.node_id == "node-0"]
        return sum(o.terminal for o in seen) >= 50 and bool(held)

    await wait_for(under_way, within=60, interval=0.2)
    nodes[0].signal(signal.SIGKILL)  # with its orders in flight, mid-step
    orders = await wait_all_terminal(broker.store, order_ids, within=120)

    levels = await settled_stock(catalog, start)
    bought = sold(orders)
    for product, on_hand in start.items():
        assert counts(levels[product]) == (on_hand - bought.get(product, 0), 0), product
    reasons = {o.failure.reason for o in orders if o.failure is not None}
    assert reasons <= {"simulated failure"} | {f"out_of_stock: {p}" for p in start}, reasons
    assert sum(o.status == "completed" for o in orders) > 100
    assert any(o.owner is not None and o.owner.epoch > 1 for o in orders)  # taken over
    await assert_paid_once_or_given_back(desk, orders)


async def test_declined_and_silent_payments_fail_pre_processing_and_release_the_stock(
    settings: Settings, broker: Handles
) -> None:
    async with payment_desk(settings, broker, payment_timeout=1.0) as desk:
        catalog = await stocked(broker, desk.settings, {"mug": 5})
        async with running_node(desk.settings):
            declined = await submit_priced(broker, catalog, [("mug", 2)], "tok_decline_nsf")
            silent = await submit_priced(broker, catalog, [("mug", 1)], "tok_silent_network")
            orders = {o: await wait_terminal(broker.store, o) for o in (declined, silent)}
        for order_id, reason in ((declined, "payment_declined"), (silent, "payment_timeout")):
            order = orders[order_id]
            assert order.status == "failed"
            assert order.failure is not None
            assert (order.failure.step, order.failure.reason) == ("Pre-Processing", reason)
            assert [s.status for s in order.steps[:2]] == ["rolled_back", "failed"]
        assert counts((await settled_stock(catalog, ["mug"]))["mug"]) == (5, 0)

        declined_entry, silent_entry = await desk.entry(declined), await desk.entry(silent)
        assert declined_entry is not None
        assert silent_entry is not None
        assert (declined_entry.status, declined_entry.voids) == ("declined", 0)
        assert (silent_entry.status, silent_entry.voids, silent_entry.callbacks) == (
            "voided", 1, 0,
        )  # fmt: skip
    payment = orders[silent].payment
    assert payment is not None
    assert payment.status == "voided"
    assert payment.voided_at is not None
    history = await broker.store.history(silent)
    shown = [h.order.payment.status for h in history if h.order and h.order.payment]
    assert "timed_out" in shown, shown
    refused = orders[declined].payment
    assert refused is not None
    assert refused.status == "declined"


async def _owner_of_running_step(broker: Handles, order_id: str, index: int) -> str | None:
    order = await broker.store.get(order_id)
    step = order.steps[index]
    return step.node_id if step.status == "running" else None


@pytest.mark.parametrize("index", [0, 3], ids=["Scheduling", "Post-Processing"])
async def test_a_step_re_run_after_a_crash_reserves_and_captures_once(
    desk: PaymentDesk, broker: Handles, node_processes: NodeProcesses, index: int
) -> None:
    """The node running the step is SIGKILLed once the step's effect is done (stock reserved,
    or payment captured and stock sold): the other node re-runs the step, which changes
    nothing twice, and completes the order."""
    catalog = await stocked(broker, desk.settings, {"lamp": 10})
    node_processes.settings = msgspec.structs.replace(desk.settings, step_seconds=1.0)
    nodes = {n: node_processes.start(n) for n in ("node-a", "node-b")}
    await wait_registered(broker, *nodes.values())
    order_id = await submit_priced(broker, catalog, [("lamp", 3)])

    async def effect_done() -> str | None:
        owner = await _owner_of_running_step(broker, order_id, index)
        level = await catalog.stock.level("lamp")
        entry = await desk.entry(order_id)
        done = (
            level.reserved == 3
            if index == 0
            else entry is not None and entry.captures == 1 and level.on_hand == 7
        )
        return owner if done else None

    victim = await wait_for(effect_done, within=20)
    nodes[victim].signal(signal.SIGKILL)
    order = await wait_terminal(broker.store, order_id, within=40)

    assert order.status == "completed", order.failure
    rerun = order.steps[index]
    assert (rerun.attempt, rerun.node_id != victim) == (2, True)
    assert order.owner is not None
    assert order.owner.epoch == 2
    level = (await settled_stock(catalog, ["lamp"]))["lamp"]
    assert counts(level) == (7, 0)
    entry = await desk.entry(order_id)
    assert entry is not None
    assert (entry.status, entry.authorizations, entry.captures, entry.epoch) == (
        "captured", 1, 1, 2,
    )  # fmt: skip


async def test_each_finished_order_is_notified_once(
    settings: Settings, broker: Handles, desk: PaymentDesk
) -> None:
    catalog = await stocked(broker, desk.settings, {"pen": 10})
    async with WebhookReceiver(NOTIFY_SECRET.encode()) as hook:
        node_settings = msgspec.structs.replace(
            desk.settings, notify_webhook=hook.url, notify_secret=NOTIFY_SECRET
        )
        async with running_node(node_settings):
            completed = await submit_priced(broker, catalog, [("pen", 1)])
            failed = await submit_priced(broker, catalog, [("pen", 1)], fail_at=STEP_NAMES[2])
            for order_id in (completed, failed):
                await wait_terminal(broker.store, order_id)
            bucket = await notification_bucket(broker.js)

            async def delivered() -> bool:
                states = [*await notifications_for(bucket, completed)]
                states += await notifications_for(bucket, failed)
                return [s.state for s in states] == ["delivered", "delivered"]

            await wait_for(delivered, within=20)
        # The node has drained: nothing more can be sent.
    sent = sorted(
        (r.headers["orderflow-notification-id"], json.loads(r.body)) for r in hook.requests
    )
    assert [notification_id for notification_id, _ in sent] == sorted(
        [f"{completed}:order.completed", f"{failed}:order.failed"]
    )
    assert all(r.signed and r.answered == 200 for r in hook.requests)
    for notification_id, body in sent:
        order_id, kind = notification_id.split(":")
        assert (body["order_id"], body["kind"], body["customer_id"]) == (order_id, kind, "c-shop")
        assert body["status"] == ("completed" if order_id == completed else "failed")


async def test_a_finished_order_its_owner_did_not_settle_is_settled_by_its_redelivery(
    settings: Settings, broker: Handles
) -> None:
    """The owner stored the order completed and died before its settling (notification,
    forgetting the stock holds) and its ack: the work message comes back, and the node that
    finds the order finished settles it."""
    catalog = await stocked(broker, settings, {"cup": 5})
    order = new_order(new_order_id(), "c-shop", [Item("cup", 2, PRICE)], PRICE * 2)
    order.status, order.current_step, order.complete_time = "completed", COMPLETED, utcnow()
    order.owner = Owner("gone", utcnow(), 1)
    await broker.store.create(order)
    await catalog.stock.reserve_items(order.order_id, 1, order.items)
    await catalog.stock.commit_items(order.order_id, 1, order.items)
    await broker.intake.publish(order.order_id)  # as if redelivered

    async with running_node(settings):
        levels = await settled_stock(catalog, ["cup"])
        bucket = await notification_bucket(broker.js)

        async def recorded() -> bool:  # no webhook configured: recorded as skipped
            state = await read_state(bucket, order.order_id, "order.completed")
            return state is not None and state.state == "skipped"

        await wait_for(recorded, within=20)
    assert counts(levels["cup"]) == (3, 0)
    assert (await broker.store.get(order.order_id)).revision == order.revision  # untouched
