"""The app factory: nothing connects at import; each app owns its broker link.

Tests build apps with their own settings and broker; ``api.server`` builds one for uvicorn.
"""

from __future__ import annotations

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig

from api.broker_link import STATE_KEY, BrokerLink
from api.problems import EXCEPTION_HANDLERS
from api.routes import ROUTE_HANDLERS
from api.schemas import MAX_BODY_BYTES
from nodeapp import __version__
from nodeapp.settings import Settings


def create_app(settings: Settings) -> Litestar:
    """The api for ``settings``; its lifespan connects to the broker in the background."""
    link = BrokerLink(settings)
    return Litestar(
        route_handlers=ROUTE_HANDLERS,
        state=State({STATE_KEY: link}),
        lifespan=[link.lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=OpenAPIConfig(
            title="orderflow",
            version=__version__,
            description="Submit orders and follow them through their steps.",
            path="/schema",
        ),
        logging_config=None,  # the process configures logging (json or console), not Litestar
    )
