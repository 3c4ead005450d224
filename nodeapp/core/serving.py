"""Serving an ASGI app with uvicorn inside our own event loop, signals left to us.

uvicorn's own signal capture re-raises the signal once it has shut down, which turns a clean
SIGTERM into exit status 143; the api, the standalone payment gateway and the tests' servers
all use ``QuietServer`` and decide themselves what a signal means.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from typing import Final

import uvicorn

SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class QuietServer(uvicorn.Server):
    """uvicorn's server without its signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_until_signalled(server: uvicorn.Server) -> None:
    """Serve until SIGTERM or SIGINT: the first drains in-flight requests and runs the lifespan
    shutdown, a second one forces the exit."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        server.force_exit = server.should_exit
        server.should_exit = True

    for sig in SIGNALS:
        loop.add_signal_handler(sig, stop)
    try:
        await server.serve()
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
