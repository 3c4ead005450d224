"""Route handlers, one module per resource."""

from api.routes.cancel import cancel_order
from api.routes.cluster import drain_node, get_cluster, get_node
from api.routes.dlq import get_dead_letters, replay_dead_letter
from api.routes.events import order_events
from api.routes.health import healthz, readyz
from api.routes.history import get_order_history
from api.routes.listing import list_orders
from api.routes.notifications import get_order_notifications
from api.routes.orders import get_order, submit_order
from api.routes.payments import payment_callback
from api.routes.products import adjust_stock, get_product, list_products, put_product
from api.routes.stats import order_stats

ROUTE_HANDLERS = [
    submit_order,
    list_orders,
    get_order,
    order_events,
    cancel_order,
    get_order_history,
    get_order_notifications,
    list_products,
    get_product,
    put_product,
    adjust_stock,
    payment_callback,
    get_cluster,
    get_node,
    drain_node,
    get_dead_letters,
    replay_dead_letter,
    order_stats,
    healthz,
    readyz,
]

__all__ = [
    "ROUTE_HANDLERS",
    "adjust_stock",
    "cancel_order",
    "drain_node",
    "get_cluster",
    "get_dead_letters",
    "get_node",
    "get_order",
    "get_order_history",
    "get_order_notifications",
    "get_product",
    "healthz",
    "list_orders",
    "list_products",
    "order_events",
    "order_stats",
    "payment_callback",
    "put_product",
    "readyz",
    "replay_dead_letter",
    "submit_order",
]
