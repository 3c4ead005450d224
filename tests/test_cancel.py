"""Cancellation (DESIGN part 2, ADR 0013) against a real nats-server, a served api hosting the
payment gateway, and real ``orderflow node`` processes: a running order stops at its next step
boundary and is compensated latest step first, a payment wait is cut short, a queued order is
cancelled at once, a finished one is refused, and a cancel racing the owner's death still ends
in one terminal state with the stock conserved.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx
import msgspec
import nats.js.errors
import pytest

from nodeapp.broker.resources import ORDERS_STREAM, WORKERS_CONSUMER
from nodeapp.core.errors import OrderFinished, RevisionConflict
from nodeapp.core.settings import Settings
from nodeapp.orders import lifecycle
from nodeapp.orders.cancellation import request, request_cancel
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import (
    STEP_NAMES,
    DeadLetterMark,
    Item,
    Order,
    Owner,
    new_order,
    new_order_id,
    utcnow,
)
from nodeapp.orders.timeline import timeline
from nodeapp.shop.catalog import Catalog
from nodeapp.shop.gateway_ledger import LedgerEntry, decode_entry
from nodeapp.shop.notify_resources import SCHEDULE_PREFIX
from nodeapp.shop.notify_resources import STREAM as NOTIFICATIONS
from nodeapp.shop.payment_resources import ensure_gateway_bucket
from nodeapp.worker.writes import CancelNoticed, FinishedElsewhere, OrderWrites
from tests.support.api_fixtures import ServedApi, assert_problem, client_as, serve_api
from tests.support.invariants import assert_history_sane
from tests.support.orders import wait_terminal
from tests.support.processes import NodeProcess, NodeProcesses, wait_registered
from tests.support.shop import PRICE, settled_stock, stocked
from tests.support.tokens import mint_token
from tests.support.waiting import wait_for
from tests.support.webhooks import WebhookReceiver

NOTIFY_SECRET: Final = "cancel-notify-secret"
PRODUCT: Final = "lamp"
ON_HAND: Final = 10
UNKNOWN_ORDER: Final = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
SCHEDULING, PRE_PROCESSING, PROCESSING, POST_PROCESSING = STEP_NAMES


class Shop(msgspec.Struct):
    """A served api, a product in stock, a webhook receiver, and node processes set up for
    them (``start``)."""

    served: ServedApi
    catalog: Catalog
    hook: WebhookReceiver
    nodes: NodeProcesses

    @property
    def api(self) -> httpx.AsyncClient:
        return self.served.http

    async def start(self, broker: Handles, *names: str, **changes: Any) -> list[NodeProcess]:
        """Node processes paying at the api's gateway and notifying the receiver."""
        self.nodes.settings = msgspec.structs.replace(
            self.served.settings,
            notify_webhook=self.hook.url,
            notify_secret=NOTIFY_SECRET,
            **changes,
        )
        started = [self.nodes.start(name) for name in names]
        await wait_registered(broker, *started)
        return started


@pytest.fixture
async def shop(
    settings: Settings, broker: Handles, node_processes: NodeProcesses
) -> AsyncIterator[Shop]:
    catalog = await stocked(broker, settings, {PRODUCT: ON_HAND})
    async with WebhookReceiver(NOTIFY_SECRET.encode()) as hook, serve_api(settings) as served:
        yield Shop(served, catalog, hook, node_processes)


async def submit(api: httpx.AsyncClient, token: str = "tok_ok", quantity: int = 3) -> str:
    body = {
        "customer_id": "c-cancel",
        "items": [{"product_id": PRODUCT, "quantity": quantity}],
        "payment_token": token,
    }
    answer = await api.post("/orders", json=body)
    assert answer.status_code == 202, answer.text
    order_id: str = answer.json()["order_id"]
    return order_id


async def running(broker: Handles, order_id: str, step: str, within: float = 20.0) -> Order:
    """The order once ``step`` is running."""

    async def probe() -> Order | None:
        order = await broker.store.get(order_id)
        assert not order.terminal, order
        current = next(s for s in order.steps if s.name == step)
        return order if current.status == "running" else None

    return await wait_for(probe, within)


async def cancel(api: httpx.AsyncClient, order_id: str) -> httpx.Response:
    return await api.post(f"/orders/{order_id}/cancel")


async def ledger_entry(broker: Handles, settings: Settings, order_id: str) -> LedgerEntry | None:
    """The gateway's record of the order's payment (the api hosts the gateway)."""
    ledger = await ensure_gateway_bucket(broker.js, settings)
    try:
        entry = await ledger.get(order_id)
    except nats.js.errors.KeyNotFoundError:
        return None
    return decode_entry(entry.value) if entry.value else None


async def notified(hook: WebhookReceiver, order_id: str) -> list[dict[str, Any]]:
    """The signed notifications the receiver got for the order, once ``order.cancelled`` came."""

    async def probe() -> list[dict[str, Any]] | None:
        mine = [json.loads(r.body) for r in hook.requests if order_id.encode() in r.body]
        return mine if any(n["kind"] == "order.cancelled" for n in mine) else None

    found = await wait_for(probe, within=20)
    assert all(r.signed for r in hook.requests)
    return found


async def stock_counts(catalog: Catalog) -> tuple[int, int]:
    level = (await settled_stock(catalog, [PRODUCT]))[PRODUCT]
    return level.on_hand, level.reserved


async def terminal_revisions(broker: Handles, order_id: str) -> list[Order]:
    orders = assert_history_sane(await broker.store.history(order_id))
    return [o for o in orders if o.terminal]


async def test_a_running_order_stops_at_the_next_step_boundary_and_is_compensated(
    shop: Shop, broker: Handles
) -> None:
    """Cancelled while Processing (1 s) runs: Processing ends, Post-Processing never starts,
    Processing, Pre-Processing and Scheduling are undone in that order by the owner itself (no
    redelivery), stock and money go back, and the customer hears ``order.cancelled``."""
    await shop.start(broker, "node-a", step_seconds=1.0)
    order_id = await submit(shop.api)
    await running(broker, order_id, PROCESSING)

    accepted = await cancel(shop.api, order_id)
    assert accepted.status_code == 202, accepted.text
    assert accepted.headers["Location"] == f"/orders/{order_id}"
    assert accepted.json()["status"] == "running"
    assert accepted.json()["cancel_requested_at"] is not None
    repeated = await cancel(shop.api, order_id)
    assert repeated.status_code == 202, repeated.text
    assert repeated.json()["cancel_requested_at"] == accepted.json()["cancel_requested_at"]

    order = await wait_terminal(broker.store, order_id, within=20)
    assert (order.status, order.current_step, order.failure) == ("cancelled", "Cancelled", None)
    assert order.complete_time is not None
    assert order.cancel_requested_at is not None
    steps = {s.name: s for s in order.steps}
    assert [s.status for s in order.steps] == ["rolled_back"] * 3 + ["pending"]
    assert steps[POST_PROCESSING].start_time is None  # never started
    assert steps[PROCESSING].complete_time is not None  # the step in progress ran out
    rolled = [steps[name].rollback_time for name in (PROCESSING, PRE_PROCESSING, SCHEDULING)]
    times = [t for t in rolled if t is not None and t >= order.cancel_requested_at]
    assert len(times) == 3, rolled
    assert times == sorted(times), rolled  # the latest step first
    assert order.owner is not None
    assert (order.owner.node_id, order.owner.epoch, order.attempts) == ("node-a", 1, 1)

    revisions = await broker.store.history(order_id)
    assert all(h.order.steps[3].status == "pending" for h in revisions if h.order)
    assert [r.transition for r in timeline(revisions)][-4:] == [
        "cancel requested",
        "Processing completed, Processing rolled back",
        "Pre-Processing rolled back",
        "Scheduling rolled back, order cancelled",
    ]
    assert [o.revision for o in await terminal_revisions(broker, order_id)] == [order.revision]
    assert await stock_counts(shop.catalog) == (ON_HAND, 0)
    entry = await ledger_entry(broker, shop.served.settings, order_id)
    assert entry is not None
    assert (entry.status, entry.voids, entry.captures) == ("voided", 1, 0)
    assert order.payment is not None
    assert order.payment.status == "voided"
    notes = await notified(shop.hook, order_id)
    assert [(n["kind"], n["status"]) for n in notes] == [("order.cancelled", "cancelled")]

    before = order.revision
    again = assert_problem(await cancel(shop.api, order_id), 409)
    assert "already cancelled" in again["detail"]
    assert (await broker.store.get(order_id)).revision == before


async def test_a_cancel_cuts_a_payment_wait_short(shop: Shop, broker: Handles) -> None:
    """A payment whose verdict never comes (``tok_silent``) would hold Pre-Processing for the
    whole payment timeout; the cancel's hint ends the wait, and the pending authorization is
    voided."""
    await shop.start(broker, "node-a", payment_timeout=120.0)
    order_id = await submit(shop.api, token="tok_silent_network")
    await running(broker, order_id, PRE_PROCESSING)

    async def authorized() -> bool:
        return await ledger_entry(broker, shop.served.settings, order_id) is not None

    await wait_for(authorized, within=10)
    assert (await cancel(shop.api, order_id)).status_code == 202

    order = await wait_terminal(broker.store, order_id, within=20)  # far below the timeout
    assert (order.status, order.failure) == ("cancelled", None)
    pre = order.steps[1]
    assert (pre.status, pre.complete_time is None, pre.rollback_time is not None) == (
        "rolled_back", True, True,
    )  # fmt: skip
    assert [s.status for s in order.steps[2:]] == ["pending", "pending"]
    assert order.payment is not None
    assert order.payment.status == "voided"
    entry = await ledger_entry(broker, shop.served.settings, order_id)
    assert entry is not None
    assert (entry.status, entry.voids, entry.callbacks) == ("voided", 1, 0)
    assert await stock_counts(shop.catalog) == (ON_HAND, 0)


async def test_a_queued_order_is_cancelled_at_once_and_its_message_settled_later(
    shop: Shop, broker: Handles
) -> None:
    """No node has claimed it: the api cancels it in the same write (nothing ran); the node
    that later takes its work message finds it finished, acks it, and it is notified once."""
    order_id = await submit(shop.api)
    accepted = await cancel(shop.api, order_id)
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert (body["status"], body["current_step"]) == ("cancelled", "Cancelled")
    assert body["complete_time"] is not None
    assert [s["status"] for s in body["steps"]] == ["pending"] * 4
    stored = await broker.store.get(order_id)
    assert_problem(await cancel(shop.api, order_id), 409)

    await shop.start(broker, "node-a")

    async def acked() -> bool:
        info = await broker.js.consumer_info(ORDERS_STREAM, WORKERS_CONSUMER)
        return (info.num_pending, info.num_ack_pending) == (0, 0)

    await wait_for(acked, within=20)
    notes = await notified(shop.hook, order_id)
    assert [n["kind"] for n in notes] == ["order.cancelled"]
    assert (await broker.store.get(order_id)).revision == stored.revision  # untouched
    with pytest.raises(nats.js.errors.NotFoundError):  # the node dropped order.delayed
        await broker.js.get_last_msg(NOTIFICATIONS, SCHEDULE_PREFIX + order_id)
    assert await stock_counts(shop.catalog) == (ON_HAND, 0)


async def test_a_dead_lettered_order_is_re_driven_to_be_compensated(
    shop: Shop, broker: Handles
) -> None:
    """Parked in the dead letters after Scheduling reserved its stock: no node would take it
    up again, so the cancel sends it a work message; the node taking it only compensates."""
    now = utcnow()
    order = new_order(new_order_id(), "c-cancel", [Item(PRODUCT, 3, PRICE)], None, now=now)
    order.status, order.current_step = "running", PRE_PROCESSING
    scheduled = order.steps[0]
    scheduled.status, scheduled.node_id, scheduled.attempt = "completed", "gone", 1
    scheduled.start_time = scheduled.complete_time = now
    order.owner, order.attempts = Owner("gone", now, 1), 2
    order.dead_letter = DeadLetterMark("max deliveries reached (2)", now, 2)
    await broker.store.create(order)  # no work message: it went to the dead letters
    await shop.catalog.stock.reserve_items(order.order_id, 1, order.items)
    await shop.start(broker, "node-a")

    assert (await cancel(shop.api, order.order_id)).status_code == 202
    final = await wait_terminal(broker.store, order.order_id, within=20)
    assert (final.status, final.current_step) == ("cancelled", "Cancelled")
    assert [s.status for s in final.steps] == ["rolled_back"] + ["pending"] * 3
    assert final.owner is not None
    assert (final.owner.node_id, final.owner.epoch) == ("node-a", 2)
    assert final.dead_letter is not None  # kept as the record of what happened
    assert await stock_counts(shop.catalog) == (ON_HAND, 0)


async def test_a_cancel_racing_the_owners_death_ends_in_one_terminal_state(
    shop: Shop, broker: Handles
) -> None:
    """The owner is SIGKILLed as the cancel is sent: the surviving node takes the order over,
    finds the request, compensates (the step the victim left running too) and ends it
    cancelled, once; nothing stays reserved and the payment is voided."""
    nodes = {n.node_id: n for n in await shop.start(broker, "node-a", "node-b", step_seconds=1.0)}
    order_id = await submit(shop.api)
    order = await running(broker, order_id, PROCESSING)
    assert order.owner is not None
    victim = order.owner.node_id

    sending = asyncio.create_task(cancel(shop.api, order_id))
    nodes[victim].signal(signal.SIGKILL)
    assert (await sending).status_code == 202

    final = await wait_terminal(broker.store, order_id, within=60)
    assert (final.status, final.current_step) == ("cancelled", "Cancelled")
    assert [s.status for s in final.steps] == ["rolled_back"] * 3 + ["pending"]
    assert final.owner is not None
    assert final.owner.node_id != victim
    assert len(await terminal_revisions(broker, order_id)) == 1
    assert await stock_counts(shop.catalog) == (ON_HAND, 0)
    entry = await ledger_entry(broker, shop.served.settings, order_id)
    assert entry is not None
    assert (entry.status, entry.captures) == ("voided", 0)


async def test_unknown_malformed_and_other_customers_orders_are_404(
    shop: Shop, broker: Handles, settings: Settings
) -> None:
    theirs = await submit(shop.api)
    before = (await broker.store.get(theirs)).revision
    mine = await mint_token(broker, settings, "orders:write", customer="c-mine")
    reader = await mint_token(broker, settings, "orders:read")
    async with client_as(shop.api, mine) as customer, client_as(shop.api, reader) as read_only:
        hidden = assert_problem(await cancel(customer, theirs), 404)
        absent = assert_problem(await cancel(customer, UNKNOWN_ORDER), 404)
        assert hidden["detail"].replace(theirs, "ID") == absent["detail"].replace(
            UNKNOWN_ORDER, "ID"
        )
        assert_problem(await cancel(customer, "not-an-order"), 404)
        # the scope is checked before the order is looked up
        assert_problem(await cancel(read_only, UNKNOWN_ORDER), 403)
        assert_problem(await cancel(read_only, theirs), 403)
    assert (await broker.store.get(theirs)).revision == before


async def test_openapi_documents_the_cancel_route(shop: Shop) -> None:
    spec = (await shop.api.get("/schema/openapi.json")).json()
    responses = spec["paths"]["/orders/{order_id}/cancel"]["post"]["responses"]
    assert {"202", "403", "404", "409", "503"} <= set(responses)


async def test_an_owner_adopts_a_cancel_request_and_loses_to_anything_else(
    broker: Handles,
) -> None:
    """The owner's write after the api stored a request: it learns of the request (and the
    stored revision) instead of losing the order; any other change still loses it."""
    order = new_order(new_order_id(), "c-1", [Item("p-1", 1)], None)
    await broker.store.create(order)
    writes = OrderWrites(broker.store)
    writes.seen(order)
    lifecycle.claim(order, "node-a", utcnow(), 5.0)
    await writes.save(order)

    cancellation = await request_cancel(broker.store, order.order_id)
    assert (cancellation.recorded, cancellation.finished) == (True, False)
    lifecycle.renew(order, utcnow(), 5.0)
    with pytest.raises(CancelNoticed):
        await writes.save(order, adopt=False)
    assert order.cancel_requested_at == cancellation.order.cancel_requested_at
    assert order.revision == cancellation.order.revision
    await writes.save(order)  # now on the stored revision

    other = await broker.store.get(order.order_id)
    other.dead_letter = DeadLetterMark("test", utcnow())
    await broker.store.update(other)
    with pytest.raises(RevisionConflict):
        await writes.save(order)


async def test_a_claim_losing_to_the_apis_cancel_finds_the_order_finished(
    broker: Handles,
) -> None:
    """A node read the queued order, the api cancelled it outright, then the node's claim is
    written: it finds the order finished (and settles it) instead of losing it."""
    order = new_order(new_order_id(), "c-1", [Item("p-1", 1)], None)
    await broker.store.create(order)
    writes = OrderWrites(broker.store)
    writes.seen(order)
    lifecycle.claim(order, "node-a", utcnow(), 5.0)
    assert (await request_cancel(broker.store, order.order_id)).finished
    with pytest.raises(FinishedElsewhere) as raised:
        await writes.save(order, adopt=False)
    assert raised.value.order.status == "cancelled"


def test_a_cancel_request_on_each_kind_of_order() -> None:
    now = utcnow()
    queued = new_order(new_order_id(), "c-1", [Item("p-1", 1)], None)
    assert request(queued, now) is True
    assert (queued.status, queued.current_step, queued.complete_time) == (
        "cancelled",
        "Cancelled",
        now,
    )
    with pytest.raises(OrderFinished, match="already cancelled"):
        request(queued, now)

    claimed = new_order(new_order_id(), "c-1", [Item("p-1", 1)], None)
    lifecycle.claim(claimed, "node-a", now, 5.0)
    assert request(claimed, now) is True
    assert request(claimed, now) is False  # a repeat writes nothing
    assert (claimed.status, claimed.cancel_requested_at) == ("running", now)
    lifecycle.start_step(claimed, claimed.steps[0], "node-a", now)
    lifecycle.complete_step(claimed.steps[0], now)
    lifecycle.start_step(claimed, claimed.steps[1], "node-a", now)  # interrupted in it
    lifecycle.begin_cancel(claimed, now, 5.0)
    assert [s.name for s in lifecycle.to_compensate(claimed)] == [PRE_PROCESSING, SCHEDULING]
    for step in lifecycle.to_compensate(claimed):
        lifecycle.compensated(step, now)
    lifecycle.finish(claimed, now)
    assert (claimed.status, claimed.current_step) == ("cancelled", "Cancelled")
    assert [s.status for s in claimed.steps] == ["rolled_back"] * 2 + ["pending"] * 2
    for status in ("completed", "failed"):
        done = new_order(new_order_id(), "c-1", [Item("p-1", 1)], None)
        done.status = status
        with pytest.raises(OrderFinished, match=f"already {status}"):
            request(done, now)
