"""``orderflow payments``: the simulated payment gateway on its own (``create_gateway_app``),
for a deployment that points ``ORDERFLOW_PAYMENT_URL`` at it instead of letting the api host it.

It listens on ``ORDERFLOW_API_HOST`` and ``--port``, and signs its callbacks with
``ORDERFLOW_PAYMENT_SECRET`` (the api verifying them needs the same). SIGTERM or SIGINT stops it
cleanly: pending verdicts are dropped (a real network's answer lost with its process), the
broker connection drains, the exit status is 0.
"""

from __future__ import annotations

from typing import Final

import uvicorn

from nodeapp.core.serving import QuietServer, serve_until_signalled
from nodeapp.core.settings import Settings
from nodeapp.shop.gateway_app import create_gateway_app

GRACEFUL_SECONDS: Final = 5


async def serve_gateway(settings: Settings, port: int) -> None:
    """Serve the gateway until SIGTERM or SIGINT (a second one forces the exit)."""
    config = uvicorn.Config(
        create_gateway_app(settings),
        host=settings.api_host,
        port=port,
        lifespan="on",
        log_config=None,  # keep the process's logging (json or console)
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
    )
    server = QuietServer(config)
    await serve_until_signalled(server)
