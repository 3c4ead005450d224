"""The broker's users in tests: every test's nats-server runs with ``nats-auth.conf`` (ADR 0015).

``conftest.settings`` connects as ``admin``: the test's own handles (creating resources, minting
tokens, reading what the system did) act as an operator would. The api and node helpers
(``running_api``, ``serve_api``, ``ApiProcess``, ``running_node``, ``NodeProcesses``) switch to
their role with ``as_role``, so the suite runs the api and the nodes with the permissions they
get in production. ``violations`` reads a server's log: a permission the code needs but
``nats-auth.conf`` lacks shows there (the client only sees a timeout), and the ``nats_server``
fixture fails a test that caused one unless it is marked ``broker_violations``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from nodeapp.core.settings import Settings
from nodeapp.local.broker_users import BrokerUsers, Role

TEST_BROKER_USERS: Final = BrokerUsers(
    {
        "api": "pTestsApi0" + "a1" * 8,
        "node": "pTestsNode0" + "n2" * 8,
        "admin": "pTestsAdmin0" + "d3" * 8,
    }
)
VIOLATION_MARKERS: Final = ("Publish Violation", "Subscription Violation")


def as_role(settings: Settings, role: Role) -> Settings:
    """``settings`` connecting as ``role`` (the test users' password) to the same servers."""
    return TEST_BROKER_USERS.settings(settings, role)


def violations(log_file: Path) -> list[str]:
    """The permission violations a nats-server logged (``[ERR] ... Publish Violation ...``)."""
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if any(m in line for m in VIOLATION_MARKERS)]
