"""One typed settings object, parsed once from the environment and passed down.

Every public variable is listed in ``ENV``; a bad value raises ``SettingsError`` naming the
variable, so a typo in a deployment fails at start-up instead of somewhere in a consumer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from nodeapp.core.errors import SettingsError


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a process of orderflow can be told; defaults reproduce the requirements."""

    nats_url: str = "nats://127.0.0.1:4222"
    step_seconds: float = 5.0
    failure_rate: float = 0.05
    concurrency: int = 50
    ack_wait: float = 5.0
    lease_seconds: float = 10.0
    max_deliver: int = 20
    replicas: int = 1
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    ops_host: str = "127.0.0.1"
    ops_port: int = 0
    fault_injection: bool = False
    reconcile_after: float = 30.0
    api_url: str = "http://127.0.0.1:8000"
    request_timeout: float = 1.5
    log_level: str = "INFO"
    log_format: str = "json"

    @property
    def nats_servers(self) -> list[str]:
        """``NATS_URL`` split into the list nats-py takes (a cluster is comma-separated)."""
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]

    def validate(self) -> Settings:
        """Reject values that would make the service misbehave rather than fail."""
        checks: list[tuple[bool, str, str]] = [
            (self.step_seconds >= 0, "ORDERFLOW_STEP_SECONDS", "must be >= 0"),
            (0.0 <= self.failure_rate <= 1.0, "ORDERFLOW_FAILURE_RATE", "must be in [0, 1]"),
            (self.concurrency >= 1, "ORDERFLOW_CONCURRENCY", "must be >= 1"),
            (self.ack_wait >= 0.5, "ORDERFLOW_ACK_WAIT", "must be >= 0.5"),
            (self.lease_seconds >= 0.5, "ORDERFLOW_LEASE_SECONDS", "must be >= 0.5"),
            (self.max_deliver >= 2, "ORDERFLOW_MAX_DELIVER", "must be >= 2"),
            (self.replicas in (1, 3, 5), "ORDERFLOW_REPLICAS", "must be 1, 3 or 5"),
            (0 < self.api_port < 65536, "ORDERFLOW_API_PORT", "must be a TCP port"),
            (0 <= self.ops_port < 65536, "ORDERFLOW_OPS_PORT", "must be a TCP port or 0"),
            (self.reconcile_after > 0, "ORDERFLOW_RECONCILE_AFTER", "must be > 0"),
            (self.request_timeout > 0, "ORDERFLOW_REQUEST_TIMEOUT", "must be > 0"),
            (bool(self.nats_servers), "NATS_URL", "must name at least one server"),
            (
                self.log_format in ("json", "console"),
                "ORDERFLOW_LOG_FORMAT",
                "must be json or console",
            ),
        ]
        for ok, name, why in checks:
            if not ok:
                raise SettingsError(name, why)
        return self


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {raw!r}")


# variable name -> (field, parser)
ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "NATS_URL": ("nats_url", str),
    "ORDERFLOW_STEP_SECONDS": ("step_seconds", float),
    "ORDERFLOW_FAILURE_RATE": ("failure_rate", float),
    "ORDERFLOW_CONCURRENCY": ("concurrency", int),
    "ORDERFLOW_ACK_WAIT": ("ack_wait", float),
    "ORDERFLOW_LEASE_SECONDS": ("lease_seconds", float),
    "ORDERFLOW_MAX_DELIVER": ("max_deliver", int),
    "ORDERFLOW_REPLICAS": ("replicas", int),
    "ORDERFLOW_API_HOST": ("api_host", str),
    "ORDERFLOW_API_PORT": ("api_port", int),
    "ORDERFLOW_OPS_HOST": ("ops_host", str),
    "ORDERFLOW_OPS_PORT": ("ops_port", int),
    "ORDERFLOW_FAULT_INJECTION": ("fault_injection", _bool),
    "ORDERFLOW_RECONCILE_AFTER": ("reconcile_after", float),
    "ORDERFLOW_API_URL": ("api_url", str),
    "ORDERFLOW_REQUEST_TIMEOUT": ("request_timeout", float),
    "ORDERFLOW_LOG_LEVEL": ("log_level", str),
    "ORDERFLOW_LOG_FORMAT": ("log_format", str),
}

FIELD_TO_ENV = {field: name for name, (field, _) in ENV.items()}


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Parse the environment (``os.environ`` by default) and apply explicit overrides (CLI flags).

    Overrides win over the environment; ``None`` overrides are ignored so unset flags fall
    through to the variable or the default.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, (field, parse) in ENV.items():
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            continue
        try:
            values[field] = parse(raw.strip())
        except ValueError as exc:
            raise SettingsError(name, f"cannot parse {raw!r}: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values).validate()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that reproduces ``settings`` in a child process (used by ``up``)."""
    out: dict[str, str] = {}
    for field, name in FIELD_TO_ENV.items():
        value = getattr(settings, field)
        out[name] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return out
