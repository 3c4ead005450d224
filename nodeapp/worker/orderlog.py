"""One shape for every log line about an order on a node: the event, the order and node ids, and
the step and attempt (None outside a step), so a reader can filter on any of them.

These are the hot path's lines (one per order transition at INFO): when the process logs JSON
to stderr and nothing else listens, the line is encoded and queued directly, without a
LogRecord (``nodeapp.core.logs.direct_lines``); the same line either way."""

from __future__ import annotations

import logging
from typing import Any

from nodeapp.core.logs import direct_lines


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
        lines = direct_lines(logger)
        if lines is None:
            logger.log(level, message, extra=extra)
        else:
            lines.put(level, logger.name, message, extra)
