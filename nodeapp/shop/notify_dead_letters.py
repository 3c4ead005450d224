"""Notifications that cannot be delivered are kept in ``ORDERS_DLQ`` beside the orders' own.

Under ``orders.dlq.notify.<order_id>`` (``orders.dlq.notify.unknown`` without a usable id), so
``GET /dlq`` lists them and one order's own dead letter (``orders.dlq.<order_id>``) is never
taken for one of these. The headers are those of ``nodeapp.cluster.dead_letters`` plus the
notification id. Not ``publish_dead_letter``: it cannot build this subject, and its dedup id
(``dlq-<seq>``) counts ``ORDERS`` sequences, so a notification's copy could be dropped as a
duplicate of an order's; here it is ``dlq-notify-<NOTIFICATIONS seq>``.
"""

from __future__ import annotations

from typing import Final

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from nodeapp.broker.connection import broker_errors
from nodeapp.broker.resources import DLQ_PREFIX
from nodeapp.cluster.dead_letters import (
    DELIVERIES_HEADER,
    ORDER_HEADER,
    REASON_HEADER,
    SEQUENCE_HEADER,
    UNKNOWN_ORDER,
)
from nodeapp.orders.model import is_order_id
from nodeapp.shop.webhook import NOTIFICATION_ID_HEADER

NOTIFY_DLQ_PREFIX: Final = f"{DLQ_PREFIX}notify."  # + the order id


async def copy_to_dlq(
    js: JetStreamContext, msg: Msg, reason: str, order_id: str | None, note_id: str | None
) -> None:
    """Store the copy (once, however often this is retried)."""
    meta = msg.metadata
    known = order_id if order_id and is_order_id(order_id) else None
    headers = {
        REASON_HEADER: " ".join(reason.split()),
        DELIVERIES_HEADER: str(meta.num_delivered),
        SEQUENCE_HEADER: str(meta.sequence.stream),
        "Nats-Msg-Id": f"dlq-notify-{meta.sequence.stream}",
    }
    if known:
        headers[ORDER_HEADER] = known
    if note_id:
        headers[NOTIFICATION_ID_HEADER] = note_id
    subject = NOTIFY_DLQ_PREFIX + (known or UNKNOWN_ORDER)
    with broker_errors(f"dead-lettering a notification of order {known or '?'}"):
        await js.publish(subject, msg.data, headers=headers)
