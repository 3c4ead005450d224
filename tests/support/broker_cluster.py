"""The 3-server loopback JetStream cluster (``nodeapp.local.natscluster``) as a pytest fixture."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodeapp.local.natscluster import NatsCluster


@pytest.fixture(name="nats_cluster")
async def nats_cluster_fixture(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    """A fresh 3-server cluster per test, ready (meta leader elected); stopped at the end."""
    cluster = NatsCluster(tmp_path / "cluster")
    try:
        await cluster.start()
        yield cluster
    finally:
        cluster.stop_all()
