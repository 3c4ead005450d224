"""Route handlers, one module per resource."""

from api.routes.cluster import drain_node, get_cluster, get_node
from api.routes.dlq import get_dead_letters, replay_dead_letter
from api.routes.health import healthz, readyz
from api.routes.history import get_order_history
from api.routes.orders import get_order, submit_order

ROUTE_HANDLERS = [
    submit_order,
    get_order,
    get_order_history,
    get_cluster,
    get_node,
    drain_node,
    get_dead_letters,
    replay_dead_letter,
    healthz,
    readyz,
]

__all__ = [
    "ROUTE_HANDLERS",
    "drain_node",
    "get_cluster",
    "get_dead_letters",
    "get_node",
    "get_order",
    "get_order_history",
    "healthz",
    "readyz",
    "replay_dead_letter",
    "submit_order",
]
