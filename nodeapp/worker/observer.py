"""The engine's metrics hooks, on their own so ``ops.metrics`` can implement them without
importing the pipeline that calls them."""

from __future__ import annotations


class Observer:
    """Hooks for metrics; this base does nothing. Called on the hot path: keep them cheap."""

    def step_finished(self, step: str, seconds: float, outcome: str) -> None:
        """A step's action ended: ``outcome`` is ``completed`` or ``failed``."""

    def order_finished(self, status: str, failed_step: str | None, latency: float) -> None:
        """An order reached ``completed``, ``failed`` or ``cancelled``, ``latency`` seconds
        after submit."""
