"""Independent effects run at once: one place that waits for all of them before raising."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


async def together(*effects: Awaitable[object]) -> None:
    """Run ``effects`` at once and wait for all of them; then raise the first one's error (in
    argument order), if any, so none is left running behind the caller's back."""
    for outcome in await asyncio.gather(*effects, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome
