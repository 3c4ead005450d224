"""Every route's path, written once: the routes, the metrics' route labels and ``Location``
headers all use these, so a path cannot drift between them. The paths are public (clients and
``orderflow`` commands call them)."""

from __future__ import annotations

from typing import Final

ORDERS: Final = "/orders"
ORDER: Final = ORDERS + "/{order_id:str}"
ORDER_HISTORY: Final = ORDER + "/history"
ORDER_NOTIFICATIONS: Final = ORDER + "/notifications"
ORDER_EVENTS: Final = ORDER + "/events"
ORDER_CANCEL: Final = ORDER + "/cancel"
PRODUCTS: Final = "/products"
PRODUCT: Final = PRODUCTS + "/{product_id:str}"
PRODUCT_STOCK: Final = PRODUCT + "/stock"
CLUSTER: Final = "/cluster"
NODE: Final = CLUSTER + "/nodes/{node_id:str}"
NODE_DRAIN: Final = NODE + "/drain"
DEAD_LETTERS: Final = "/dlq"
DEAD_LETTER_REPLAY: Final = DEAD_LETTERS + "/{order_id:str}/replay"
STATS: Final = "/stats"
HEALTHZ: Final = "/healthz"
READYZ: Final = "/readyz"
METRICS: Final = "/metrics"
SCHEMA: Final = "/schema"
# The browser console (``api.console``): a session, not a bearer token (``api.browser``).
CONSOLE: Final = "/console"
CONSOLE_HOME: Final = CONSOLE + "/"
CONSOLE_LOGIN: Final = CONSOLE + "/login"
CONSOLE_LOGOUT: Final = CONSOLE + "/logout"


def order_location(order_id: str) -> str:
    """The ``Location`` of an order: where ``GET`` finds its document."""
    return f"{ORDERS}/{order_id}"


def product_location(product_id: str) -> str:
    """The ``Location`` of a product (its id may hold ``:``, which a path segment allows)."""
    return f"{PRODUCTS}/{product_id}"
