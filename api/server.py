"""Running the api under uvicorn (uvloop, httptools), stopping gracefully on SIGTERM or SIGINT.

uvicorn's own signal capture re-raises the signal once it has shut down, which turns a clean
SIGTERM into exit status 143; here the signal only sets an event, the server drains in-flight
requests and runs the lifespan shutdown (the broker link drains), and ``serve`` returns. The
open event streams are ended first: uvicorn would wait for them (``GRACEFUL_SECONDS``) before
the lifespan shutdown could.
"""

from __future__ import annotations

import asyncio
from typing import Final

import uvicorn
import uvloop
from litestar import Litestar

from api.app import create_app
from api.streams import close_streams
from nodeapp.core.serving import SIGNALS, QuietServer
from nodeapp.core.settings import Settings
from nodeapp.core.tracing import configure_tracing, shutdown_tracing

GRACEFUL_SECONDS: Final = 10


def build_server(settings: Settings, app: Litestar) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,  # keep the process's logging (json or console) as configured
        access_log=False,  # a line per request costs throughput; traces carry requests
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
    )
    return QuietServer(config)


async def serve_async(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set; without one, until SIGTERM or SIGINT (a second one forces)."""
    app = create_app(settings)
    server = build_server(settings, app)
    loop = asyncio.get_running_loop()
    own_signals = stop is None
    stopping = stop if stop is not None else asyncio.Event()

    def on_signal() -> None:
        if stopping.is_set():
            server.force_exit = True
        stopping.set()

    if own_signals:
        for sig in SIGNALS:
            loop.add_signal_handler(sig, on_signal)

    async def exit_when_stopping() -> None:
        await stopping.wait()
        server.should_exit = True
        close_streams(app)  # else uvicorn waits for them before the lifespan shutdown

    watcher = asyncio.create_task(exit_when_stopping(), name="orderflow-api-stop")
    try:
        await server.serve()
    finally:
        watcher.cancel()
        await asyncio.wait([watcher])
        if own_signals:
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)


def serve(settings: Settings) -> None:
    """The ``orderflow api`` process: run the api on uvloop until told to stop."""
    configure_tracing("orderflow-api")
    try:
        uvloop.run(serve_async(settings))
    finally:
        shutdown_tracing()
