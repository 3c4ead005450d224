"""Notifications (ADR 0010): the notifier runs in the test's event loop against the real
nats-server and POSTs to a real local HTTP receiver that verifies each signature."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import msgspec
import pytest
from nats.js.kv import KeyValue

from nodeapp.broker.resources import DLQ_STREAM
from nodeapp.cluster.dead_letters import DELIVERIES_HEADER, ORDER_HEADER, REASON_HEADER
from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import Contact, Item, Order, new_order, new_order_id, utcnow
from nodeapp.shop.notifications import (
    DeliveryState,
    Notification,
    cancel_delayed,
    encode,
    notifications_for,
    publish,
    read_state,
    schedule_delayed,
    write_state,
)
from nodeapp.shop.notifier import Notifier
from nodeapp.shop.notify_dead_letters import NOTIFY_DLQ_PREFIX
from nodeapp.shop.notify_resources import (
    CONSUMER,
    SCHEDULE_PREFIX,
    STREAM,
    SUBJECT_PREFIX,
    DeliveryPolicy,
    ensure_notifications,
)
from tests.support.waiting import wait_for
from tests.support.webhooks import WebhookReceiver

SECRET = "notify-test-secret"
POLICY = DeliveryPolicy(
    max_deliver=3, first_delay=0.05, max_delay=0.2, post_timeout=0.5, ack_wait=5.0, concurrency=4
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, notify_secret=SECRET, order_sla=1.0)


async def _order(broker: Handles, status: str = "accepted") -> Order:
    """An order stored straight into the store, completed (in time) if asked."""
    order = new_order(new_order_id(), "c-1", [Item("p-1", 2, Decimal("3.50"))], Decimal("7.00"))
    order.contact = Contact(email="c-1@example.com")
    await broker.store.create(order)
    if status != "accepted":
        order.status = status  # type: ignore[assignment]
        order.complete_time = utcnow()
        await broker.store.update(order)
    return order


async def _idle(broker: Handles) -> bool:
    """Nothing left for the notifier: every message delivered and settled."""
    info = await broker.js.consumer_info(STREAM, CONSUMER)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def _counted(notifier: Notifier, outcome: str, count: int = 1) -> bool:
    return notifier.counts[outcome] >= count


async def _state(kv: KeyValue, order_id: str, kind: str, state: str) -> DeliveryState | None:
    found = await read_state(kv, order_id, kind)
    return found if found is not None and found.state == state else None


@pytest.fixture
async def kv(settings: Settings, broker: Handles) -> KeyValue:
    return await ensure_notifications(broker.js, settings, POLICY)


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(SECRET.encode()) as hook:
        yield hook


def _hooked(settings: Settings, receiver: WebhookReceiver) -> Settings:
    return msgspec.structs.replace(settings, notify_webhook=receiver.url)


async def test_one_signed_completed_notification_per_completed_order(
    settings: Settings, broker: Handles, kv: KeyValue, receiver: WebhookReceiver
) -> None:
    orders = [await _order(broker, "completed") for _ in range(3)]
    async with Notifier(_hooked(settings, receiver), broker.js, broker.store, policy=POLICY) as n:
        for order in orders + orders:  # a repeat is deduplicated by the stream
            await publish(broker.store.replies, order, "order.completed")

        async def all_delivered() -> bool:
            found = [await read_state(kv, o.order_id, "order.completed") for o in orders]
            return all(s is not None and s.state == "delivered" for s in found)

        await wait_for(all_delivered)
        # A republish past the dedup window (no Nats-Msg-Id) finds "delivered": acked, not sent.
        again = await broker.js.stream_info(STREAM, subjects_filter=f"{SUBJECT_PREFIX}>")
        first = await broker.js.get_msg(STREAM, seq=again.state.first_seq)
        await broker.js.publish(f"{SUBJECT_PREFIX}order.completed", first.data or b"")
        await wait_for(lambda: _counted(n, "duplicate"))
        await wait_for(lambda: _idle(broker))
    assert sorted(r.headers["orderflow-notification-id"] for r in receiver.requests) == sorted(
        f"{o.order_id}:order.completed" for o in orders
    )
    for request in receiver.requests:
        assert request.signed, "every notification carries a valid Orderflow-Signature"
        body = json.loads(request.body)
        assert body["notification_id"] == request.headers["orderflow-notification-id"]
        assert set(body) == {
            "notification_id", "kind", "order_id", "customer_id", "contact", "status", "time"
        }  # fmt: skip
        assert (body["kind"], body["status"], body["customer_id"]) == (
            "order.completed", "completed", "c-1"
        )  # fmt: skip
        assert body["contact"]["email"] == "c-1@example.com"
    states = await notifications_for(kv, orders[0].order_id)
    assert [(s.kind, s.state, s.attempts) for s in states] == [("order.completed", "delivered", 1)]


async def test_a_failing_receiver_gets_it_on_a_retry_with_the_same_id(
    settings: Settings, broker: Handles, kv: KeyValue
) -> None:
    order = await _order(broker, "failed")
    # An error answer, then no answer at all (the POST times out), then 200.
    async with (
        WebhookReceiver(SECRET.encode(), script=[503, None]) as hook,
        Notifier(_hooked(settings, hook), broker.js, broker.store, policy=POLICY),
    ):
        await publish(broker.store.replies, order, "order.failed")
        state = await wait_for(lambda: _state(kv, order.order_id, "order.failed", "delivered"))
        await wait_for(lambda: _idle(broker))
    assert [r.answered for r in hook.requests] == [503, None, 200]
    assert {r.headers["orderflow-notification-id"] for r in hook.requests} == {
        f"{order.order_id}:order.failed"
    }
    assert state.attempts == 3
    assert state.delivered_at is not None


async def test_order_delayed_is_sent_once_past_the_sla_and_never_in_time(
    settings: Settings, broker: Handles, kv: KeyValue, receiver: WebhookReceiver
) -> None:
    late = await _order(broker)  # never finishes
    cancelled = await _order(broker)  # finishes in time, its schedule cancelled
    raced = await _order(broker)  # finishes in time, its schedule fires anyway
    for order in (late, cancelled, raced):
        await schedule_delayed(broker.js, order.order_id, order.start_time, settings.order_sla)
        await schedule_delayed(broker.js, order.order_id, order.start_time, settings.order_sla)
    for order in (cancelled, raced):
        order.status, order.complete_time = "completed", utcnow()
        await broker.store.update(order)
    await cancel_delayed(broker.js, cancelled.order_id)
    async with Notifier(_hooked(settings, receiver), broker.js, broker.store, policy=POLICY) as n:
        await wait_for(lambda: _state(kv, late.order_id, "order.delayed", "delivered"))
        await wait_for(lambda: _counted(n, "dropped"))  # raced's, once it fired
        schedules = await broker.js.stream_info(STREAM, subjects_filter=f"{SCHEDULE_PREFIX}>")
        assert not schedules.state.subjects, "every schedule fired or was cancelled"
        await wait_for(lambda: _idle(broker))
    assert [r.headers["orderflow-notification-id"] for r in receiver.requests] == [
        f"{late.order_id}:order.delayed"
    ]
    body = json.loads(receiver.requests[0].body)
    assert (body["status"], body["customer_id"]) == ("accepted", "c-1")
    assert body["time"].startswith(
        (late.start_time + timedelta(seconds=settings.order_sla)).strftime("%Y-%m-%dT%H:%M:%S")
    )
    assert await notifications_for(kv, cancelled.order_id) == []
    assert await notifications_for(kv, raced.order_id) == []


async def test_a_receiver_that_always_fails_ends_in_a_dead_letter(
    settings: Settings, broker: Handles, kv: KeyValue
) -> None:
    order = await _order(broker, "completed")
    async with (
        WebhookReceiver(SECRET.encode(), always=500) as hook,
        Notifier(_hooked(settings, hook), broker.js, broker.store, policy=POLICY) as n,
    ):
        await publish(broker.store.replies, order, "order.completed")
        state = await wait_for(lambda: _state(kv, order.order_id, "order.completed", "dead"))
        await wait_for(lambda: _idle(broker))
    assert n.counts["dead"] == 1
    assert (state.attempts, state.last_error) == (POLICY.max_deliver, "HTTP 500")
    assert len(hook.requests) == POLICY.max_deliver
    letter = await broker.js.get_msg(DLQ_STREAM, subject=NOTIFY_DLQ_PREFIX + order.order_id)
    headers = letter.headers or {}
    assert headers[ORDER_HEADER] == order.order_id
    assert headers[DELIVERIES_HEADER] == str(POLICY.max_deliver)
    assert "HTTP 500" in headers[REASON_HEADER]
    assert json.loads(letter.data or b"")["notification_id"] == f"{order.order_id}:order.completed"


async def test_without_a_webhook_nothing_is_sent_and_the_state_says_skipped(
    settings: Settings, broker: Handles, kv: KeyValue, receiver: WebhookReceiver
) -> None:
    order = await _order(broker, "completed")
    async with Notifier(settings, broker.js, broker.store, policy=POLICY) as n:
        await publish(broker.store.replies, order, "order.completed")
        state = await wait_for(lambda: _state(kv, order.order_id, "order.completed", "skipped"))
        await wait_for(lambda: _idle(broker))
    assert receiver.requests == []
    assert (n.counts["skipped"], state.attempts, state.delivered_at) == (1, 0, None)


async def test_a_state_found_at_the_first_write_decides_what_follows(
    settings: Settings, broker: Handles, kv: KeyValue, receiver: WebhookReceiver
) -> None:
    """The first state is written create-only (ADR 0020); a key taken is read: a ``failed``
    one (a webhook since removed) becomes ``skipped`` keeping its attempts, a ``skipped`` one
    makes a republish a duplicate."""
    tried, done = await _order(broker, "completed"), await _order(broker, "completed")
    earlier = DeliveryState(
        notification_id=f"{tried.order_id}:order.completed", kind="order.completed",
        order_id=tried.order_id, state="failed", attempts=2, updated_at=utcnow(),
    )  # fmt: skip
    await write_state(broker.store.replies, earlier)
    async with Notifier(settings, broker.js, broker.store, policy=POLICY) as n:
        for order in (tried, done):
            await publish(broker.store.replies, order, "order.completed")
        found = await wait_for(lambda: _state(kv, tried.order_id, "order.completed", "skipped"))
        await wait_for(lambda: _state(kv, done.order_id, "order.completed", "skipped"))
        note = Notification(
            notification_id=f"{done.order_id}:order.completed", kind="order.completed",
            order_id=done.order_id, time=utcnow(),
        )  # fmt: skip
        await broker.js.publish(f"{SUBJECT_PREFIX}order.completed", encode(note))  # no msg id
        await wait_for(lambda: _counted(n, "duplicate"))
        await wait_for(lambda: _idle(broker))
    assert receiver.requests == []
    assert (found.attempts, n.counts["skipped"], n.counts["duplicate"]) == (2, 2, 1)


async def test_an_undecodable_notification_is_dead_lettered_not_retried(
    settings: Settings, broker: Handles, kv: KeyValue, receiver: WebhookReceiver
) -> None:
    await broker.js.publish(f"{SUBJECT_PREFIX}order.completed", b"not json")
    async with Notifier(_hooked(settings, receiver), broker.js, broker.store, policy=POLICY) as n:
        await wait_for(lambda: _counted(n, "poison"))
        await wait_for(lambda: _idle(broker))
    letter = await broker.js.get_msg(DLQ_STREAM, subject=NOTIFY_DLQ_PREFIX + "unknown")
    assert letter.data == b"not json"
    assert "undecodable" in (letter.headers or {})[REASON_HEADER]
    assert receiver.requests == []


async def test_a_stopping_notifier_hands_back_what_it_could_not_finish(
    settings: Settings, broker: Handles, kv: KeyValue
) -> None:
    """A POST still running past the grace is cancelled and its message nak'ed at once: the
    next notifier sends it well before the 30 s ack wait would have brought it back."""
    patient = msgspec.structs.replace(POLICY, post_timeout=20.0, ack_wait=30.0)
    order = await _order(broker, "completed")
    async with WebhookReceiver(SECRET.encode(), script=[None]) as hook:
        hooked = _hooked(settings, hook)
        async with Notifier(hooked, broker.js, broker.store, policy=patient, grace=0.2):
            await publish(broker.store.replies, order, "order.completed")

            async def posted() -> bool:
                return len(hook.requests) == 1

            await wait_for(posted)
        async with Notifier(hooked, broker.js, broker.store, policy=patient):
            state = await wait_for(
                lambda: _state(kv, order.order_id, "order.completed", "delivered"), within=10.0
            )
    assert [r.answered for r in hook.requests] == [None, 200]
    assert state.attempts == 2  # the interrupted POST counts: it may have reached the receiver
