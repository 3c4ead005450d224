"""One shape for every log line about an order on a node: the event, the order and node ids, and
the step and attempt (None outside a step), so a reader can filter on any of them."""

from __future__ import annotations

import logging
from typing import Any


def log_order(
    logger: logging.Logger,
    level: int,
    message: str,
    event: str,
    order_id: str,
    node_id: str,
    **fields: Any,
) -> None:
    """Log ``message`` as ``event`` for the order; ``fields`` add to or override the labels."""
    if logger.isEnabledFor(level):
        extra: dict[str, Any] = {
            "event": event,
            "order_id": order_id,
            "node_id": node_id,
            "step": None,
            "attempt": None,
        }
        extra.update(fields)
        logger.log(level, message, extra=extra)
