"""Pull requests on the ``workers`` consumer (``nodeapp.worker.pulls``), against a real server.

The node learns that a request has ended from the server's own status message (or from the batch
filling), never from a clock: these tests fail if nats-py stops handing status lines on as
``Status`` headers, or the server stops sending them.
"""

from __future__ import annotations

import msgspec
import pytest
from nats.aio.msg import Msg

import nodeapp.worker.node
from nodeapp.broker.connection import connection
from nodeapp.broker.resources import WORK_SUBJECT
from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.worker.pulls import WorkPulls
from tests.support.nodes import running_node
from tests.support.orders import submit, wait_terminal
from tests.support.waiting import wait_for


def events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [getattr(record, "event", "") for record in caplog.records]


async def test_deliveries_are_handed_on_and_a_filled_request_ends(broker: Handles) -> None:
    received: list[Msg] = []
    pulls = WorkPulls(broker.nc, "test", received.append)
    await pulls.start()
    try:
        await pulls.request(2, expires=60.0)  # the test's timeout fires long before this
        for n in range(2):
            await broker.js.publish(WORK_SUBJECT, b'{"order_id": "o-%d"}' % n)
        assert await pulls.ended()
        assert [m.data for m in received] == [b'{"order_id": "o-0"}', b'{"order_id": "o-1"}']
        for msg in received:
            await msg.ack()
    finally:
        await pulls.close()


async def test_an_expired_request_ends_on_the_servers_word(
    broker: Handles, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[Msg] = []
    pulls = WorkPulls(broker.nc, "test", received.append)
    await pulls.start()
    try:
        await pulls.request(5, expires=0.2)
        assert await pulls.ended()
    finally:
        await pulls.close()
    assert received == []
    assert "node.pull_unanswered" not in events(caplog)  # a 408, not our own deadline


async def test_a_request_nobody_serves_ends_in_trouble(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with connection(settings, "test") as nc:  # no streams: nobody answers for the consumer
        pulls = WorkPulls(nc, "test", lambda msg: None)
        await pulls.start()
        try:
            await pulls.request(1, expires=30.0)
            assert not await pulls.ended()
        finally:
            await pulls.close()
    assert "node.fetch_failed" in events(caplog)


async def test_a_draining_node_hands_back_what_its_open_pull_brings(
    settings: Settings, broker: Handles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADR 0004: what arrives on a draining node's last request goes to another node at once."""
    monkeypatch.setattr(nodeapp.worker.node, "FETCH_TIMEOUT", 3.0)
    # A long ack wait: without the hand-back nak, node B would wait 30 s and time out here.
    slow = msgspec.structs.replace(settings, ack_wait=30.0, lease_seconds=30.0)
    async with running_node(slow, "node-a") as a:
        sent = a.pulls.requests_sent

        async def fresh_request() -> bool:
            return a.pulls.requests_sent > sent

        await wait_for(fresh_request)  # so ours stays open for about 3 s more
        a.drain()
        order_id = await submit(broker.intake)

        async def received() -> bool:
            return a.stats.received == 1

        await wait_for(received, within=10)
        async with running_node(slow, "node-b"):
            order = await wait_terminal(broker.store, order_id, within=15)
    assert order.status == "completed"
    assert {step.node_id for step in order.steps} == {"node-b"}
    assert a.stats.handed_back == 0  # declined on arrival, never started
