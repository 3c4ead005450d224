"""The order store (``nodeapp.orders.store``) on a real nats-server: compare-and-set writes that
carry the order's status in a header (what the reconciler follows), reads by direct get on one
replica, a withdrawn order's id free again."""

from __future__ import annotations

import pytest

from nodeapp.core.errors import OrderExists, OrderNotFound, RevisionConflict
from nodeapp.orders import lifecycle
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import Item, Order, new_order, new_order_id, utcnow
from nodeapp.orders.store import ORDERS_KV_STREAM, STATUS_HEADER


def _order() -> Order:
    return new_order(new_order_id(), "c-1", [Item("p-1", 1)], None)


async def _status_header(broker: Handles, revision: int) -> str | None:
    stored = await broker.js.get_msg(ORDERS_KV_STREAM, seq=revision)
    return (stored.headers or {}).get(STATUS_HEADER)


async def test_each_revision_carries_the_status_it_stores(broker: Handles) -> None:
    store = broker.store
    assert store.direct  # one replica: reads are direct gets
    order = _order()
    created = await store.create(order)
    lifecycle.claim(order, "node-1", utcnow(), 10.0)
    running = await store.update(order)
    lifecycle.finish(order, utcnow())
    finished = await store.update(order)

    assert [await _status_header(broker, r) for r in (created, running, finished)] == [
        "accepted",
        "running",
        "completed",
    ]
    read = await store.get(order.order_id)
    assert (read.status, read.revision) == ("completed", finished)


async def test_a_stale_write_conflicts_and_changes_nothing(broker: Handles) -> None:
    store = broker.store
    order = _order()
    await store.create(order)
    stale = await store.get(order.order_id)
    read_at = stale.revision
    lifecycle.claim(order, "node-1", utcnow(), 10.0)
    await store.update(order)

    lifecycle.claim(stale, "node-2", utcnow(), 10.0)
    with pytest.raises(RevisionConflict):
        await store.update(stale)
    assert stale.revision == read_at  # the revision it read, kept
    assert (await store.get(order.order_id)).owner.node_id == "node-1"  # type: ignore[union-attr]
    with pytest.raises(OrderExists):
        await store.create(_order_with_id(order.order_id))


async def test_a_withdrawn_order_reads_as_missing_and_its_id_can_be_stored_again(
    broker: Handles,
) -> None:
    store = broker.store
    order = _order()
    revision = await store.create(order)
    await store.delete(order.order_id, revision)
    with pytest.raises(OrderNotFound):
        await store.get(order.order_id)
    with pytest.raises(OrderNotFound):
        await store.get(new_order_id())  # never stored

    again = _order_with_id(order.order_id)
    assert await store.create(again) > revision
    assert (await store.get(order.order_id)).revision == again.revision


def _order_with_id(order_id: str) -> Order:
    return new_order(order_id, "c-2", [Item("p-2", 2)], None)


async def test_direct_gets_are_used_only_where_they_are_answered(broker: Handles) -> None:
    """A bucket without direct gets (as on three replicas, or a user not allowed to ask) is read
    through the JSON API: the probe at start says which."""
    replies = broker.store.replies
    assert await replies.can_direct_get(ORDERS_KV_STREAM, "$KV.orders.nothing-here")
    await broker.js.create_key_value(bucket="nodirect", history=2)
    assert not await replies.can_direct_get("KV_nodirect", "$KV.nodirect.nothing-here")
