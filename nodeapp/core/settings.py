"""One typed settings object, parsed once from the environment and passed down.

Every public variable is listed in ``ENV``; a bad value raises ``SettingsError`` naming the
variable, so a typo in a deployment fails at start-up instead of somewhere in a consumer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec

from nodeapp.core.brokerurl import credentials, redacted, server_list
from nodeapp.core.errors import SettingsError


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a process of orderflow can be told; defaults reproduce the requirements."""

    nats_url: str = "nats://127.0.0.1:4222"  # may carry user:password (ADR 0015); never shown
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
    # The shop (ADR 0010).
    payment_url: str = ""  # empty: the api hosts the simulated gateway under /sim/payments
    payment_secret: str = ""  # HMAC key of gateway callbacks; `up` generates one when unset
    payment_delay: float = 0.2
    payment_timeout: float = 10.0
    notify_webhook: str = ""  # empty: notifications are recorded, not sent anywhere
    notify_secret: str = ""
    order_sla: float = 300.0
    # Security (nodeapp.security): the bootstrap admin token, the per-token request rate, and
    # the token CLI commands send.
    admin_token: str = ""  # empty: no bootstrap admin; set, it must be >= 32 characters
    rate_limit: float = 200.0  # requests per second per token, burst twice that
    token: str = ""
    # The browser console (``api.browser``): the key of its CSRF tokens (empty: one per process,
    # so a restart or a second api process refuses the forms of the first); ``Secure`` cookies
    # (browsers keep them over https and on http://localhost or 127.0.0.1 only).
    session_secret: str = ""
    cookie_secure: bool = True
    # The read side (nodeapp.readmodel): the api's local SQLite projection of the orders bucket,
    # one file per api process; a relative path is taken from the process's working directory.
    read_db: str = "orderflow-read.db"

    def __repr__(self) -> str:
        """Secrets never reach a log line or an error message through ``repr``."""
        shown = {
            f: "***" if f in SECRET_FIELDS and getattr(self, f) else getattr(self, f)
            for f in self.__struct_fields__
        }
        shown["nats_url"] = redacted(self.nats_url)
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @property
    def nats_servers(self) -> list[str]:
        """``NATS_URL`` split into the list nats-py takes (a cluster is comma-separated)."""
        return server_list(self.nats_url)

    @property
    def nats_url_shown(self) -> str:
        """``NATS_URL`` for log lines, messages and banners: passwords as ``***``."""
        return redacted(self.nats_url)

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
            (self.payment_delay >= 0, "ORDERFLOW_PAYMENT_DELAY", "must be >= 0"),
            (self.payment_timeout > 0, "ORDERFLOW_PAYMENT_TIMEOUT", "must be > 0"),
            (self.order_sla > 0, "ORDERFLOW_ORDER_SLA", "must be > 0"),
            (self.rate_limit > 0, "ORDERFLOW_RATE_LIMIT", "must be > 0"),
            (_token_or_empty(self.admin_token, 32), "ORDERFLOW_ADMIN_TOKEN", ADMIN_TOKEN_RULE),
            (_token_or_empty(self.token, 1), "ORDERFLOW_TOKEN", "must be printable, no spaces"),
            (
                not self.session_secret or len(self.session_secret) >= 32,
                "ORDERFLOW_SESSION_SECRET",
                "must be empty or >= 32 characters",
            ),
            (_http_or_empty(self.payment_url), "ORDERFLOW_PAYMENT_URL", HTTP_URL),
            (_http_or_empty(self.notify_webhook), "ORDERFLOW_NOTIFY_WEBHOOK", HTTP_URL),
            (bool(self.nats_servers), "NATS_URL", "must name at least one server"),
            (_one_user(self.nats_url), "NATS_URL", "every server must name the same user"),
            (_file_path(self.read_db), "ORDERFLOW_READ_DB", "must be a file path (not :memory:)"),
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


SECRET_FIELDS: Final = frozenset(
    {"payment_secret", "notify_secret", "admin_token", "token", "session_secret"}
)
HTTP_URL: Final = "must be an http(s) URL (or empty)"
ADMIN_TOKEN_RULE: Final = "must be empty or >= 32 printable characters without spaces"


def _token_or_empty(token: str, min_length: int) -> bool:
    """A token travels in an HTTP header: printable ASCII, no spaces; short ones are guessable."""
    return not token or (len(token) >= min_length and all("!" <= c <= "~" for c in token))


def _http_or_empty(url: str) -> bool:
    parts = urlsplit(url)
    return not url or (parts.scheme in ("http", "https") and bool(parts.netloc))


def _one_user(url: str) -> bool:
    """One process is one broker user: servers naming different ones are a typo."""
    try:
        credentials(url)
    except ValueError:
        return False
    return True


def _file_path(path: str) -> bool:
    """The read model has a writer and a reader connection: an in-memory database would give
    each its own empty one."""
    return bool(path.strip()) and path != ":memory:" and not path.startswith("file:")


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
    "ORDERFLOW_PAYMENT_URL": ("payment_url", str),
    "ORDERFLOW_PAYMENT_SECRET": ("payment_secret", str),
    "ORDERFLOW_PAYMENT_DELAY": ("payment_delay", float),
    "ORDERFLOW_PAYMENT_TIMEOUT": ("payment_timeout", float),
    "ORDERFLOW_NOTIFY_WEBHOOK": ("notify_webhook", str),
    "ORDERFLOW_NOTIFY_SECRET": ("notify_secret", str),
    "ORDERFLOW_ORDER_SLA": ("order_sla", float),
    "ORDERFLOW_ADMIN_TOKEN": ("admin_token", str),
    "ORDERFLOW_RATE_LIMIT": ("rate_limit", float),
    "ORDERFLOW_TOKEN": ("token", str),
    "ORDERFLOW_SESSION_SECRET": ("session_secret", str),
    "ORDERFLOW_COOKIE_SECURE": ("cookie_secure", _bool),
    "ORDERFLOW_READ_DB": ("read_db", str),
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
            shown = "the value" if field in SECRET_FIELDS else repr(raw)
            raise SettingsError(name, f"cannot parse {shown}: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values).validate()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that reproduces ``settings`` in a child process (used by ``up``)."""
    out: dict[str, str] = {}
    for field, name in FIELD_TO_ENV.items():
        value = getattr(settings, field)
        out[name] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return out
