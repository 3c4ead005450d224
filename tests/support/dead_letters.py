"""Dead letters written the way nodes write them, for tests that need one without a node
crashing ``max_deliver`` times (``test_poison`` does it the long way)."""

from __future__ import annotations

from nodeapp.broker.resources import ORDERS_STREAM
from nodeapp.cluster.dead_letters import mark_dead_lettered, publish_dead_letter
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import DeadLetterMark, WorkMessage, encode, utcnow

MAX_DELIVERIES = "max deliveries reached (3)"
NO_DOCUMENT = "no order document"


async def dead_letter(broker: Handles, order_id: str, stream_seq: int, *, mark: bool) -> None:
    """An entry in ``ORDERS_DLQ`` for ``order_id``; with ``mark``, the order parked as after
    its last delivery (its document must exist), else the entry of an order with none."""
    reason = MAX_DELIVERIES if mark else NO_DOCUMENT
    await publish_dead_letter(
        broker.js,
        encode(WorkMessage(order_id)),
        reason=reason,
        order_id=order_id,
        deliveries=3,
        stream_seq=stream_seq,
    )
    if mark:
        await mark_dead_lettered(broker.store, order_id, DeadLetterMark(reason, utcnow(), 3))


async def park(broker: Handles, order_id: str) -> None:
    """Dead-letter a submitted order no node has taken: its work message goes, as the
    advisory handler deletes it, and its dead letter and mark are written."""
    await broker.js.purge_stream(ORDERS_STREAM)
    await dead_letter(broker, order_id, 1, mark=True)
