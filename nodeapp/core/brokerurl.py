"""Credentials inside ``NATS_URL``: ``nats://user:password@host:port[,nats://...]``.

The broker runs with one user per role (ADR 0015), and a process learns its user and password
from the URL. They are taken out here, once: the connection gets the bare server URLs plus
``user``/``password`` (so servers learned from the cluster work too, and no URL that nats-py
prints or logs carries the password), and every URL shown to a person is ``redacted``.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import msgspec

REDACTED: Final = "***"


class BrokerCredentials(msgspec.Struct, frozen=True):
    """``NATS_URL`` taken apart: its servers without credentials, and the one user."""

    servers: list[str]
    user: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        shown = None if self.password is None else REDACTED
        return f"BrokerCredentials({self.servers!r}, user={self.user!r}, password={shown!r})"


def server_list(url: str) -> list[str]:
    """A comma-separated ``NATS_URL`` as a list, blanks dropped."""
    return [u.strip() for u in url.split(",") if u.strip()]


def _netloc(host: str, port: int | None) -> str:
    host = f"[{host}]" if ":" in host else host
    return host if port is None else f"{host}:{port}"


def _without_userinfo(server: str) -> str:
    parts = urlsplit(server)
    if parts.username is None and parts.password is None:
        return server
    netloc = _netloc(parts.hostname or "", parts.port)
    return urlunsplit(parts._replace(netloc=netloc))


def credentials(url: str) -> BrokerCredentials:
    """The servers of ``url`` without userinfo, and its user and password (percent-decoded).

    ``ValueError`` when two servers name different users or passwords: one process is one
    user, and nats-py would send whichever server it reached first.
    """
    found: set[tuple[str, str | None]] = set()
    servers = []
    for server in server_list(url):
        parts = urlsplit(server)
        if parts.username is not None or parts.password is not None:
            secret = None if parts.password is None else unquote(parts.password)
            found.add((unquote(parts.username or ""), secret))
        servers.append(_without_userinfo(server))
    if len(found) > 1:
        raise ValueError("the servers name different users or passwords")
    if not found:
        return BrokerCredentials(servers)
    user, password = found.pop()
    return BrokerCredentials(servers, user, password)


def redacted(url: str) -> str:
    """``url`` fit for a log line or an error message: every password is ``***``."""
    shown = []
    for server in server_list(url):
        parts = urlsplit(server)
        if parts.password is not None:
            where = _netloc(parts.hostname or "", parts.port)
            netloc = f"{parts.username or ''}:{REDACTED}@{where}"
            server = urlunsplit(parts._replace(netloc=netloc))
        shown.append(server)
    return ",".join(shown)


def with_user(url: str, user: str, password: str) -> str:
    """``url`` with every server's credentials replaced by ``user`` and ``password``."""
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}"
    out = []
    for server in server_list(url):
        parts = urlsplit(_without_userinfo(server))
        out.append(urlunsplit(parts._replace(netloc=f"{auth}@{parts.netloc}")))
    return ",".join(out)
