"""Serving a Litestar app on a real port in the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import uvicorn
from litestar import Litestar

from nodeapp.core.serving import QuietServer
from tests.support.waiting import wait_for


@contextlib.asynccontextmanager
async def serving(app: Litestar, port: int) -> AsyncIterator[None]:
    """Serve ``app`` on ``port`` in this event loop until the block ends."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_config=None)
    server = QuietServer(config)
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        assert not task.done(), task
        return server.started

    try:
        await wait_for(started, within=15)
        yield
    finally:
        server.should_exit = True
        await task
