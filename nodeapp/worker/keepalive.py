"""Awaiting long work while telling others we are still at it.

A step can outlast the work message's ack wait and the order's lease; ``while_beating`` calls
``beat`` (in_progress, lease renewal) every ``interval`` seconds until the work ends, and cancels
the work when it is itself cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any


async def while_beating(
    work: Coroutine[Any, Any, None], interval: float, beat: Callable[[], Awaitable[None]]
) -> None:
    """Await ``work``, awaiting ``beat()`` every ``interval`` seconds while it runs."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=interval)
            if done:
                task.result()
                return
            await beat()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
