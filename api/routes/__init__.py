"""Route handlers, one module per resource."""

from api.routes.health import healthz, readyz
from api.routes.orders import get_order, submit_order

ROUTE_HANDLERS = [submit_order, get_order, healthz, readyz]

__all__ = ["ROUTE_HANDLERS", "get_order", "healthz", "readyz", "submit_order"]
