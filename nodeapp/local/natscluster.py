"""A JetStream cluster of nats-servers on loopback ports, for tests and benchmarks that lose one.

Each member is a ``NatsServer`` with cluster flags, as ``docs/deploy.md`` runs it by hand: its
own client, route and monitoring ports and store folder, ``-cluster_name orderflow -n nats-N``
and routes to every member. A member can be stopped (SIGTERM), killed (SIGKILL) and started again
on the same ports and store, as a crashed server restarts. Health and stream leaders come from
the members' monitoring endpoints, which need no client connection and so answer while clients
reconnect. Stopping is synchronous so it also runs after the event loop is gone. Given
``users``, every member runs with the same authentication as ``orderflow up``'s server
(``nodeapp.local.broker_users``); routes between members need none (loopback).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
from nats.aio.client import Client as NATS

from nodeapp.broker.connection import ANY_NATS_ERROR
from nodeapp.local.broker_users import BrokerUsers, Role
from nodeapp.local.natsserver import NatsServer, free_port

CLUSTER_NAME: Final = "orderflow"
HOST: Final = "127.0.0.1"
POLL: Final = 0.1  # seconds between monitoring reads
MONITOR_TIMEOUT: Final = 2.0

T = TypeVar("T")


def distinct_ports(count: int) -> list[int]:
    """``count`` free ports, no two alike (the kernel may hand a just-closed port out again)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(HOST)
        if port not in ports:
            ports.append(port)
    return ports


async def poll_until(
    what: str, probe: Callable[[], Awaitable[T | None]], within: float, interval: float = POLL
) -> T:
    """Call ``probe`` every ``interval`` seconds until it returns something truthy;
    ``TimeoutError`` naming ``what`` once ``within`` seconds have passed."""
    try:
        async with asyncio.timeout(within):
            while True:  # monitoring has no event to wait on
                if found := await probe():
                    return found
                await asyncio.sleep(interval)
    except TimeoutError:
        raise TimeoutError(f"{what} not within {within:g}s") from None


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

    async def monitor(self, path: str) -> dict[str, Any] | None:
        """GET a monitoring endpoint's JSON; None when the member does not answer 200."""
        if not self.running:
            return None
        try:
            async with httpx.AsyncClient(timeout=MONITOR_TIMEOUT) as client:
                response = await client.get(self.monitor_url + path)
        except httpx.TransportError:
            return None
        if response.status_code != 200:  # /healthz answers 503 while JetStream catches up
            return None
        data: dict[str, Any] = response.json()
        return data


class NatsCluster:
    """``size`` routed nats-servers named ``nats-1``..``nats-N``; see the module docstring."""

    def __init__(self, folder: Path, size: int = 3, users: BrokerUsers | None = None) -> None:
        self.folder = folder
        self.users = users
        ports = distinct_ports(3 * size)
        client, route, monitor = ports[:size], ports[size : 2 * size], ports[2 * size :]
        routes = ",".join(f"nats://{HOST}:{p}" for p in route)
        self.members: dict[str, ClusterMember] = {}
        for index, (client_port, route_port, monitor_port) in enumerate(
            zip(client, route, monitor, strict=True), start=1
        ):
            name = f"nats-{index}"
            flags = ["-cluster_name", CLUSTER_NAME, "-cluster", f"nats://{HOST}:{route_port}"]
            flags += ["-routes", routes, "-n", name]
            server = NatsServer(
                folder / name,
                port=client_port,
                host=HOST,
                extra_args=flags,
                log_file=folder / f"{name}.log",
                monitor_port=monitor_port,
                users=users,
            )
            self.members[name] = ClusterMember(name, server, monitor_port)

    @property
    def names(self) -> list[str]:
        return list(self.members)

    @property
    def url(self) -> str:
        """The comma-separated ``NATS_URL`` naming every member."""
        return ",".join(m.url for m in self.members.values())

    def url_for(self, role: Role) -> str:
        """``url`` as ``role``'s user (unchanged when authentication is off)."""
        return self.url if self.users is None else self.users.url(role, self.url)

    def urls(self, first: str | None = None) -> list[str]:
        """Member URLs, ``first``'s at the head (for a client that must start on that server)."""
        order = sorted(self.members.values(), key=lambda m: m.name != first)
        return [m.url for m in order]

    def running_members(self) -> list[ClusterMember]:
        return [m for m in self.members.values() if m.running]

    async def start(self, within: float = 30.0) -> None:
        """Start every member and wait until each is healthy (a meta leader exists)."""
        for member in self.members.values():
            await asyncio.to_thread(member.server.start)
        await self.wait_healthy(within)

    async def wait_healthy(self, within: float = 30.0, names: Iterable[str] | None = None) -> None:
        """Wait until ``/healthz`` answers 200 on the named (default: all) members: a meta
        leader exists and their JetStream assets are current (a restarted one has caught up)."""
        chosen = list(self.members.values()) if names is None else [self.members[n] for n in names]

        async def sick() -> list[str]:
            return [m.name for m in chosen if await m.monitor("/healthz") is None]

        async def probe() -> bool:
            return not await sick()

        try:
            await poll_until("healthy members", probe, within)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; not healthy: {await sick()}") from None

    async def stream_leaders(self) -> dict[str, str]:
        """Stream name -> the member leading it, per ``/jsz?streams=true`` of the running
        members (each fills in what another did not know, e.g. one still catching up)."""
        leaders: dict[str, str] = {}
        for member in self.running_members():
            data = await member.monitor("/jsz?streams=true")
            for account in (data or {}).get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    leader = (detail.get("cluster") or {}).get("leader")
                    if leader in self.members:
                        leaders.setdefault(str(detail.get("name")), str(leader))
        return leaders

    async def leads(self, name: str) -> list[str]:
        """The streams whose leader is the member ``name``."""
        return sorted(s for s, leader in (await self.stream_leaders()).items() if leader == name)

    async def wait_stream_leader(
        self, stream: str, within: float = 30.0, not_on: str | None = None
    ) -> str:
        """Wait for ``stream`` to have a leader (other than ``not_on``); return its name."""

        async def probe() -> str | None:
            leader = (await self.stream_leaders()).get(stream)
            return leader if leader != not_on else None

        return await poll_until(f"a leader of {stream}", probe, within)

    async def move_stream_leader(
        self, nc: NATS, stream: str, to: str, within: float = 20.0
    ) -> None:
        """Ask the stream's leader to step down in favour of ``to``, and wait until it has."""
        subject = f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}"
        request = json.dumps({"placement": {"preferred": to}}).encode()

        async def probe() -> bool:
            if (await self.stream_leaders()).get(stream) == to:
                return True
            with contextlib.suppress(*ANY_NATS_ERROR):  # a refused step-down is asked again
                await nc.request(subject, request, timeout=2.0)
            return (await self.stream_leaders()).get(stream) == to

        await poll_until(f"{to} leading {stream}", probe, within, interval=0.5)

    async def client_names(self, name: str) -> list[str]:
        """Names of the client connections a member holds (``/connz``)."""
        data = await self.members[name].monitor("/connz?limit=1024")
        return [str(c.get("name") or "") for c in (data or {}).get("connections") or []]

    async def kill(self, name: str) -> None:
        """SIGKILL one member: a crash, with whatever it had not flushed."""
        await asyncio.to_thread(self.members[name].server.kill)

    async def stop(self, name: str) -> None:
        """SIGTERM one member (terminate-then-kill)."""
        await asyncio.to_thread(self.members[name].server.stop)

    async def restart(self, name: str, within: float = 30.0) -> float:
        """Start a stopped member on its ports and store; return the seconds until it was
        healthy again (caught up with its peers)."""
        started = time.monotonic()
        await asyncio.to_thread(self.members[name].server.start)
        await self.wait_healthy(within, names=[name])
        return time.monotonic() - started

    def stop_all(self) -> None:
        for member in self.members.values():
            member.server.stop()
