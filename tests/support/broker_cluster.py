"""The 3-server loopback JetStream cluster (``nodeapp.local.natscluster``) as a pytest fixture."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodeapp.local.natscluster import NatsCluster
from tests.support.broker_users import TEST_BROKER_USERS, violations


@pytest.fixture(name="nats_cluster")
async def nats_cluster_fixture(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    """A fresh 3-server cluster per test, ready (meta leader elected); stopped at the end.
    Authentication is on, as for ``nats_server`` (``cluster.url_for(role)``), and so is the
    check that no member refused a permission the code needed."""
    cluster = NatsCluster(tmp_path / "cluster", users=TEST_BROKER_USERS)
    try:
        await cluster.start()
        yield cluster
    finally:
        cluster.stop_all()
    refused = [line for m in cluster.members.values() for line in violations(m.server.log_file)]
    assert not refused, "nats-auth.conf refused:\n" + "\n".join(refused)
