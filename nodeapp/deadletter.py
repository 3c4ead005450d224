"""Dead letters: work messages that cannot be processed are kept in ``ORDERS_DLQ``.

The original body is kept as it was, with the reason, the order id and the delivery count in
headers, so an operator can inspect it (``nats stream view ORDERS_DLQ``) and replay it.
"""

from __future__ import annotations

import logging

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from nodeapp.broker import broker_errors
from nodeapp.resources import DLQ_SUBJECT

log = logging.getLogger("orderflow.deadletter")

REASON_HEADER = "Orderflow-Reason"
ORDER_HEADER = "Orderflow-Order-Id"
DELIVERIES_HEADER = "Orderflow-Deliveries"
SEQUENCE_HEADER = "Orderflow-Stream-Seq"


async def dead_letter(js: JetStreamContext, msg: Msg, reason: str, order_id: str | None) -> None:
    """Copy ``msg`` to the dead-letter stream, then ``term()`` it so it is never redelivered.

    The copy is deduplicated on the original stream sequence, so a retry stores it once.
    """
    meta = msg.metadata
    headers = {
        REASON_HEADER: reason,
        DELIVERIES_HEADER: str(meta.num_delivered),
        SEQUENCE_HEADER: str(meta.sequence.stream),
        "Nats-Msg-Id": f"dlq-{meta.sequence.stream}",
    }
    if order_id:
        headers[ORDER_HEADER] = order_id
    with broker_errors("dead-lettering"):
        await js.publish(DLQ_SUBJECT, msg.data, headers=headers)
        await msg.term()
    log.error(
        "work message dead-lettered: %s",
        reason,
        extra={"event": "order.dead_lettered", "order_id": order_id, "reason": reason},
    )
