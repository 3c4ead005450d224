"""Cancellation around the projector's writes and nats-py's waits.

A transaction cut between two statements would leave the one writer connection inside it, so a
write runs to its end even when the task is cancelled meanwhile (the cancellation is delivered
right after). nats-py can turn a cancellation into a timeout or a closed-connection error; after
catching one of those, ``keep_cancellation`` puts the cancellation back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("orderflow.readmodel")


def keep_cancellation() -> None:
    """Raise ``CancelledError`` if the current task is being cancelled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def shielded(write: Coroutine[Any, Any, T] | asyncio.Future[T]) -> T:
    """``await write``, which a cancellation of the caller does not interrupt: the caller
    waits for it to end, then the cancellation goes on."""
    task = asyncio.ensure_future(write)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error(  # noqa: TRY400 - exc_info is the task's error, not the one in flight
                "read model write failed during shutdown",
                exc_info=exc,
                extra={"event": "readmodel.write_failed"},
            )
        raise
