"""The projector's backlog stays in the broker (ADR 0021): however far behind it falls, it holds
at most two batches (one being written, one being collected), counted on its consumer by the
server; a consumer that disappears is replaced and the projection resumes from the checkpoint."""

from __future__ import annotations

import asyncio
import sqlite3
from decimal import Decimal
from pathlib import Path

from nats.js.api import AckPolicy, ConsumerInfo

from nodeapp.orders.handles import Handles
from nodeapp.orders.model import Item, new_order, new_order_id
from nodeapp.readmodel.follower import CONSUMER_INACTIVE
from nodeapp.readmodel.projector import Projector
from nodeapp.readmodel.stream import KV_STREAM, KV_SUBJECTS
from tests.support.waiting import wait_for

BATCH = 20
ORDERS = 400
CATCH_UP = 30.0


async def create_orders(handles: Handles, count: int) -> None:
    """``count`` orders, one revision each, 50 at a time."""
    orders = [
        new_order(new_order_id(), "c-1", [Item("p-1", 1, Decimal("1.00"))], Decimal("1.00"))
        for _ in range(count)
    ]
    for first in range(0, count, 50):
        await asyncio.gather(*(handles.store.create(o) for o in orders[first : first + 50]))


async def pull_consumers(handles: Handles) -> list[ConsumerInfo]:
    """The pull consumers on ``KV_orders`` (the projector's; watches push)."""
    infos = await handles.js.consumers_info(KV_STREAM)
    return [info for info in infos if info.config.deliver_subject is None]


async def test_a_projector_that_cannot_write_holds_at_most_two_batches(
    tmp_path: Path, bare_broker: Handles
) -> None:
    path = tmp_path / "orders.db"
    async with Projector(path, bare_broker, batch_size=BATCH) as projector:
        [consumer] = await wait_for(lambda: pull_consumers(bare_broker), within=CATCH_UP)
        config = consumer.config
        assert (config.ack_policy, config.filter_subject) == (AckPolicy.NONE, KV_SUBJECTS)
        assert (config.mem_storage, config.num_replicas) == (True, 1)
        assert config.inactive_threshold == CONSUMER_INACTIVE

        # Another writer holds the file (as `orderflow readmodel rebuild` would): the
        # projector's first write waits for it, while the bucket gets ORDERS revisions.
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            await create_orders(bare_broker, ORDERS)

            async def backlog_in_the_broker() -> tuple[int, int] | None:
                """(delivered, pending) once the consumer has delivered and more waits."""
                for info in await pull_consumers(bare_broker):
                    delivered = (info.delivered.stream_seq or 0) if info.delivered else 0
                    if delivered and info.num_pending:
                        return delivered, info.num_pending
                return None

            delivered, pending = await wait_for(backlog_in_the_broker, within=CATCH_UP)
            held = delivered - projector.checkpoint
            assert 0 < held <= 2 * BATCH, (delivered, projector.checkpoint)
            assert pending >= ORDERS - 2 * BATCH  # the rest waits in the broker
        finally:
            holder.execute("ROLLBACK")
            holder.close()

        assert await projector.caught_up(CATCH_UP) == ORDERS
        assert projector.status().running


async def test_a_lost_consumer_is_replaced_and_the_projection_resumes(
    tmp_path: Path, bare_broker: Handles
) -> None:
    async with Projector(tmp_path / "orders.db", bare_broker, idle=0.5) as projector:
        await create_orders(bare_broker, 10)
        await projector.caught_up(CATCH_UP)
        [lost] = await pull_consumers(bare_broker)
        assert await bare_broker.js.delete_consumer(KV_STREAM, lost.name)
        await create_orders(bare_broker, 10)
        assert await projector.caught_up(CATCH_UP) == 20
        assert projector.applied == 20  # each revision once
        names = {c.name for c in await pull_consumers(bare_broker)}
        assert len(names) == 1  # the new one (the lost one is gone)
        assert lost.name not in names
