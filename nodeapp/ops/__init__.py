"""A node process's operations surfaces: ops HTTP endpoints, Prometheus metrics, micro service."""
