"""Fixtures: a real nats-server per test (own port, own store), broker handles, node processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from nodeapp.broker import connect, jetstream
from nodeapp.intake import Intake
from nodeapp.natsserver import NatsServer
from nodeapp.resources import Buckets, ensure_resources
from nodeapp.settings import Settings, load_settings
from nodeapp.store import OrderStore
from tests.processes import NodeProcesses

pytest_plugins: list[str] = []


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server for each test: tests share no streams, so none sees another's work."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(nats_server: NatsServer) -> Settings:
    """Fast settings for tests: short steps, no random failures, short ack wait and lease."""
    return load_settings(
        {},
        nats_url=nats_server.url,
        step_seconds=0.05,
        failure_rate=0.0,
        ack_wait=2.0,
        lease_seconds=3.0,
        fault_injection=True,
        request_timeout=1.0,
    )


class Broker(msgspec.Struct):
    nc: NATS
    js: JetStreamContext
    buckets: Buckets
    store: OrderStore
    intake: Intake


@pytest.fixture
async def broker(settings: Settings) -> AsyncIterator[Broker]:
    nc = await connect(settings, "tests")
    js = jetstream(nc, settings)
    buckets = await ensure_resources(js, settings)
    store = OrderStore(buckets.orders)
    try:
        yield Broker(nc, js, buckets, store, Intake(js, store, buckets.idempotency))
    finally:
        await nc.close()


@pytest.fixture
def node_processes(tmp_path: Path, settings: Settings) -> Iterator[NodeProcesses]:
    """Start real ``orderflow node`` processes; all are killed at the end of the test."""
    procs = NodeProcesses(tmp_path / "nodes", settings)
    try:
        yield procs
    finally:
        procs.stop_all()
