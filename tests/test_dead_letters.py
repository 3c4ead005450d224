"""Work messages that cannot be processed are kept in ORDERS_DLQ with the reason, not retried;
one that exhausts ``max_deliver`` is moved there by the max-deliveries advisory and its order is
parked until a replay (in-process nodes here; ``test_poison`` does it with real crashes)."""

from __future__ import annotations

import msgspec
import nats
import nats.js.api
import pytest
from nats.js.api import StreamConfig

from nodeapp.broker.resources import (
    DLQ_PREFIX,
    DLQ_STREAM,
    DLQ_SUBJECTS,
    ORDERS_STREAM,
    WORK_SUBJECT,
    WORKERS_CONSUMER,
    ensure_resources,
)
from nodeapp.cluster.dead_letter_admin import replay
from nodeapp.cluster.dead_letters import DELIVERIES_HEADER, ORDER_HEADER, REASON_HEADER
from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import DeadLetterMark, Order, WorkMessage, encode
from tests.support.nodes import running_node
from tests.support.orders import submit, wait_terminal
from tests.support.waiting import wait_for

MAX_DELIVER = 3


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Deliveries run out within seconds: a one-second ack wait, three deliveries."""
    return msgspec.structs.replace(settings, ack_wait=1.0, max_deliver=MAX_DELIVER)


async def _dlq_count(broker: Handles) -> int:
    info = await broker.js.stream_info(DLQ_STREAM)
    count: int = info.state.messages
    return count


async def _orders_count(broker: Handles) -> int:
    info = await broker.js.stream_info(ORDERS_STREAM)
    count: int = info.state.messages
    return count


async def test_undecodable_and_orphan_messages_are_dead_lettered(
    settings: Settings, broker: Handles
) -> None:
    await broker.js.publish(WORK_SUBJECT, b"not json")
    orphan = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    await broker.js.publish(WORK_SUBJECT, encode(WorkMessage(orphan)))
    async with running_node(settings) as node:
        await wait_for(lambda: _at_least(broker, 2))
        assert node.stats.dead_lettered == 2
    first = await broker.js.get_msg(DLQ_STREAM, seq=1)
    second = await broker.js.get_msg(DLQ_STREAM, seq=2)
    by_reason = {m.headers[REASON_HEADER]: m for m in (first, second) if m.headers}
    undecodable = next(m for r, m in by_reason.items() if r.startswith("undecodable"))
    assert undecodable.data == b"not json"
    assert undecodable.subject == DLQ_PREFIX + "unknown"
    missing = by_reason["no order document"]
    assert missing.headers is not None
    assert missing.headers[ORDER_HEADER] == orphan
    assert missing.subject == DLQ_PREFIX + orphan
    # term()ed: nothing is left to redeliver, and the work-queue stream dropped both.
    consumer = await broker.js.consumer_info(ORDERS_STREAM, WORKERS_CONSUMER)
    assert consumer.num_ack_pending == 0
    assert consumer.num_pending == 0
    assert await _orders_count(broker) == 0
    stream = await broker.js.stream_info(ORDERS_STREAM)
    assert stream.config.retention == nats.js.api.RetentionPolicy.WORK_QUEUE


async def _at_least(broker: Handles, n: int) -> bool:
    return await _dlq_count(broker) >= n


async def _exhaust(broker: Handles) -> None:
    """Take the one work message ``MAX_DELIVER`` times and never answer, as a node that dies on
    it would. Our pulls end before a node's pull makes JetStream send the advisory."""
    sub = await broker.js.pull_subscribe_bind(WORKERS_CONSUMER, ORDERS_STREAM)
    for delivery in range(1, MAX_DELIVER + 1):
        (msg,) = await sub.fetch(1, timeout=5.0)
        assert msg.metadata.num_delivered == delivery
    await sub.unsubscribe()


async def test_exhausted_message_is_dead_lettered_and_replayed(
    settings: Settings, broker: Handles
) -> None:
    order_id = await submit(broker.intake)
    await _exhaust(broker)
    async with running_node(settings) as node:
        # The node's first pull after the ack wait makes JetStream give up and say so.
        entry = await wait_for(lambda: _last_for(broker, order_id), within=15)
        assert entry.headers is not None
        assert entry.headers[REASON_HEADER] == f"max deliveries reached ({MAX_DELIVER})"
        assert entry.headers[DELIVERIES_HEADER] == str(MAX_DELIVER)
        assert entry.data == encode(WorkMessage(order_id))
        parked = await broker.store.get(order_id)
        assert isinstance(parked.dead_letter, DeadLetterMark)
        assert parked.dead_letter.deliveries == MAX_DELIVER
        assert parked.status == "accepted"  # nothing else changed
        assert await _orders_count(broker) == 0  # deleted, not kept forever
        assert node.stats.dead_lettered == 1

        replayed = await replay(broker.js, broker.store, order_id)
        assert replayed.dead_letter_seq == entry.seq
        done = await wait_terminal(broker.store, order_id, within=15)
    assert done.status == "completed"
    assert done.dead_letter is None
    assert await _dlq_count(broker) == 0
    history = await broker.store.history(order_id)
    marks = [h.order.dead_letter_reason for h in history if h.order is not None]
    assert marks[:3] == [None, f"max deliveries reached ({MAX_DELIVER})", None]


async def _last_for(broker: Handles, order_id: str) -> nats.js.api.RawStreamMsg | None:
    try:
        return await broker.js.get_msg(DLQ_STREAM, subject=DLQ_PREFIX + order_id)
    except nats.js.errors.NotFoundError:
        return None


async def test_a_stray_message_of_a_finished_order_is_only_removed(
    settings: Settings, broker: Handles
) -> None:
    order_id = await submit(broker.intake)
    async with running_node(settings):
        await wait_terminal(broker.store, order_id, within=15)
    # A re-drive that raced the finish: its message outlives the order and gets exhausted.
    await broker.js.publish(WORK_SUBJECT, encode(WorkMessage(order_id)))
    await _exhaust(broker)
    async with running_node(settings) as node:

        async def removed() -> bool:
            return await _orders_count(broker) == 0

        await wait_for(removed, within=15)
        assert node.stats.dead_lettered == 0
    assert await _dlq_count(broker) == 0
    order: Order = await broker.store.get(order_id)
    assert order.status == "completed"
    assert order.dead_letter is None


async def test_a_parked_order_ignores_stray_messages(settings: Settings, broker: Handles) -> None:
    order_id = await submit(broker.intake)

    def park(order: Order) -> bool:
        order.dead_letter = DeadLetterMark("max deliveries reached (3)", order.start_time, 3)
        return True

    await broker.store.modify(order_id, park)
    async with running_node(settings):

        async def dropped() -> bool:
            return await _orders_count(broker) == 0

        await wait_for(dropped, within=10)
    order = await broker.store.get(order_id)
    assert order.status == "accepted"
    assert order.dead_letter_reason == "max deliveries reached (3)"


async def test_a_dlq_stream_from_before_keeps_its_subject_and_gains_the_new_one(
    settings: Settings,
) -> None:
    old_subject = "orders.dlq"  # one subject for every dead letter, before ADR 0006
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=DLQ_STREAM, subjects=[old_subject]))
        await ensure_resources(js, settings)
        await ensure_resources(js, settings)  # idempotent
        info = await js.stream_info(DLQ_STREAM)
        assert info.config.subjects == [old_subject, DLQ_SUBJECTS]
    finally:
        await nc.close()


def test_old_documents_with_a_reason_string_still_decode() -> None:
    from nodeapp.orders.model import decode_order, new_order

    old = msgspec.json.decode(encode(new_order("01ARZ3NDEKTSV4RRFFQ69G5FAV", "c", [], None)))
    old["dead_letter"] = "no order document"
    del old["poison_at"]
    order = decode_order(msgspec.json.encode(old))
    assert order.dead_letter == order.dead_letter_reason == "no order document"
