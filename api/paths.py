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
CONSOLE_STATIC: Final = CONSOLE + "/static"  # its stylesheet and script, from 'self' (CSP)
CONSOLE_ORDERS: Final = CONSOLE + "/orders"
CONSOLE_ORDER: Final = CONSOLE_ORDERS + "/{order_id:str}"
CONSOLE_ORDER_TIMELINE: Final = CONSOLE_ORDER + "/timeline"  # the live part, as HTML
CONSOLE_ORDER_EVENTS: Final = CONSOLE_ORDER + "/events"  # the SSE of ``ORDER_EVENTS``
CONSOLE_ORDER_CANCEL: Final = CONSOLE_ORDER + "/cancel"
CONSOLE_CLUSTER: Final = CONSOLE + "/cluster"
CONSOLE_NODE_DRAIN: Final = CONSOLE_CLUSTER + "/nodes/{node_id:str}/drain"
CONSOLE_DEAD_LETTERS: Final = CONSOLE + "/dlq"
CONSOLE_REPLAY: Final = CONSOLE_DEAD_LETTERS + "/{order_id:str}/replay"
CONSOLE_PRODUCTS: Final = CONSOLE + "/products"


def order_location(order_id: str) -> str:
    """The ``Location`` of an order: where ``GET`` finds its document."""
    return f"{ORDERS}/{order_id}"


def product_location(product_id: str) -> str:
    """The ``Location`` of a product (its id may hold ``:``, which a path segment allows)."""
    return f"{PRODUCTS}/{product_id}"
