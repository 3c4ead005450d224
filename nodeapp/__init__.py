"""orderflow's engine: order model, store, pipeline, worker node, cluster wiring and CLI."""

__version__ = "0.1.0"
