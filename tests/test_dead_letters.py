"""Work messages that cannot be processed are kept in ORDERS_DLQ with the reason, not retried."""

from __future__ import annotations

import nats.js.api

from nodeapp.deadletter import ORDER_HEADER, REASON_HEADER
from nodeapp.model import WorkMessage, encode
from nodeapp.resources import DLQ_STREAM, DLQ_SUBJECT, ORDERS_STREAM, WORK_SUBJECT
from nodeapp.settings import Settings
from tests.conftest import Broker
from tests.nodes import running_node
from tests.waiting import wait_for


async def _dlq_count(broker: Broker) -> int:
    info = await broker.js.stream_info(DLQ_STREAM)
    count: int = info.state.messages
    return count


async def test_undecodable_and_orphan_messages_are_dead_lettered(
    settings: Settings, broker: Broker
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
    assert first.subject == second.subject == DLQ_SUBJECT
    undecodable = next(m for r, m in by_reason.items() if r.startswith("undecodable"))
    assert undecodable.data == b"not json"
    missing = by_reason["no order document"]
    assert missing.headers is not None
    assert missing.headers[ORDER_HEADER] == orphan
    # term()ed: nothing is left to redeliver.
    consumer = await broker.js.consumer_info(ORDERS_STREAM, "workers")
    assert consumer.num_ack_pending == 0
    assert consumer.num_pending == 0
    stream = await broker.js.stream_info(ORDERS_STREAM)
    assert stream.config.retention == nats.js.api.RetentionPolicy.WORK_QUEUE


async def _at_least(broker: Broker, n: int) -> bool:
    return await _dlq_count(broker) >= n
