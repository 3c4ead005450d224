"""Fixtures: a real nats-server per test (own port, own store, users and permissions as in
production), broker handles, node processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from nodeapp.core.settings import Settings, load_settings
from nodeapp.local.natsserver import NatsServer
from nodeapp.orders.handles import Handles, broker_handles
from tests.support.broker_users import TEST_BROKER_USERS, violations
from tests.support.catalog import load_test_catalog
from tests.support.processes import NodeProcesses
from tests.support.tokens import TEST_ADMIN_TOKEN

# Fixtures that live beside the code they drive, registered for every test module.
pytest_plugins = [
    "tests.support.api_fixtures",
    "tests.support.broker_cluster",
    "tests.support.otlp",
]


@pytest.fixture
def nats_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[NatsServer]:
    """A fresh nats-server for each test: tests share no streams, so none sees another's work.

    Authentication is on (``nats-auth.conf``, the test users' passwords). A permission the code
    needs but a role lacks fails the test here, naming the subject, unless the test is marked
    ``broker_violations`` (it provokes them on purpose)."""
    server = NatsServer(tmp_path / "nats", users=TEST_BROKER_USERS).start()
    try:
        yield server
    finally:
        server.stop()
    if request.node.get_closest_marker("broker_violations") is None:
        refused = violations(server.log_file)
        assert not refused, "nats-auth.conf refused:\n" + "\n".join(refused)


@pytest.fixture
def settings(nats_server: NatsServer, tmp_path: Path) -> Settings:
    """Fast settings for tests: short steps, no random failures, short ack wait and lease; the
    api's bootstrap admin token is ``TEST_ADMIN_TOKEN`` (its clients send it by default); the
    api's read model in the test's own folder, never the repository. The broker user is
    ``admin``; the api and node helpers switch to theirs
    (``tests.support.broker_users.as_role``)."""
    return load_settings(
        {},
        nats_url=nats_server.url_for("admin"),
        read_db=str(tmp_path / "read.db"),
        step_seconds=0.05,
        failure_rate=0.0,
        ack_wait=2.0,
        lease_seconds=3.0,
        fault_injection=True,
        request_timeout=1.0,
        admin_token=TEST_ADMIN_TOKEN,
    )


@pytest.fixture
async def bare_broker(settings: Settings) -> AsyncIterator[Handles]:
    """The test's own handles on its broker, the order resources created, the shop empty."""
    async with broker_handles(settings, "tests") as handles:
        yield handles


@pytest.fixture
async def broker(bare_broker: Handles, settings: Settings) -> Handles:
    """``bare_broker`` with the shop's resources and the test catalog (tests.support.catalog),
    so every order a test submits names a product in stock."""
    await load_test_catalog(bare_broker, settings)
    return bare_broker


@pytest.fixture
def node_processes(tmp_path: Path, settings: Settings) -> Iterator[NodeProcesses]:
    """Start real ``orderflow node`` processes; all are killed at the end of the test."""
    procs = NodeProcesses(tmp_path / "nodes", settings)
    try:
        yield procs
    finally:
        procs.stop_all()
