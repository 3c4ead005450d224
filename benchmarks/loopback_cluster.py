"""A 3-server JetStream cluster on loopback ports for the benchmarks (``docs/deploy.md``'s recipe).

Each member is a ``NatsServer`` with cluster flags: its own client, route and monitoring port and
store folder, ``-cluster_name orderflow -n nats-N`` and routes to all three. A member can be
killed (SIGKILL) and started again on the same ports and store, as a crashed server restarts.
Stopping is synchronous so it also runs after the event loop is gone.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Final

import httpx

from nodeapp.local.natsserver import NatsServer, free_port

CLUSTER_NAME: Final = "orderflow"
HOST: Final = "127.0.0.1"


def _distinct_ports(count: int) -> list[int]:
    """``count`` free ports, no two alike (the kernel may hand a just-closed port out again)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(HOST)
        if port not in ports:
            ports.append(port)
    return ports


class LoopbackCluster:
    """Servers ``nats-1``..``nats-N`` routed to each other; ``url`` names them all."""

    def __init__(self, folder: Path, size: int = 3) -> None:
        ports = _distinct_ports(3 * size)
        client, route, monitor = ports[:size], ports[size : 2 * size], ports[2 * size :]
        routes = ",".join(f"nats://{HOST}:{p}" for p in route)
        self.names = [f"nats-{i}" for i in range(1, size + 1)]
        self.servers: dict[str, NatsServer] = {}
        self.monitors: dict[str, str] = {}
        for name, client_port, route_port, monitor_port in zip(
            self.names, client, route, monitor, strict=True
        ):
            flags = ["-cluster_name", CLUSTER_NAME, "-cluster", f"nats://{HOST}:{route_port}"]
            flags += ["-routes", routes, "-n", name, "-m", str(monitor_port)]
            self.servers[name] = NatsServer(
                folder / name,
                port=client_port,
                host=HOST,
                extra_args=flags,
                log_file=folder / f"{name}.log",
            )
            self.monitors[name] = f"http://{HOST}:{monitor_port}"

    @property
    def url(self) -> str:
        """The comma-separated ``NATS_URL`` naming every member."""
        return ",".join(s.url for s in self.servers.values())

    def pids(self) -> dict[str, int]:
        return {n: s.proc.pid for n, s in self.servers.items() if s.proc is not None}

    async def start(self, within: float = 60.0) -> None:
        """Start every member, then wait until each reports healthy (a meta leader exists)."""
        for server in self.servers.values():
            await asyncio.to_thread(server.start)
        await self.wait_healthy(self.names, within)

    async def kill(self, name: str) -> None:
        """SIGKILL one member: a crash, with whatever it had not flushed."""
        await asyncio.to_thread(self.servers[name].kill)

    async def restart(self, name: str, within: float = 60.0) -> float:
        """Start a killed member on its ports and store; return seconds until it is healthy
        (caught up with its peers)."""
        started = time.monotonic()
        await asyncio.to_thread(self.servers[name].start)
        await self.wait_healthy([name], within)
        return time.monotonic() - started

    async def wait_healthy(self, names: list[str], within: float) -> None:
        """Wait until ``/healthz`` answers 200 on each named member; ``TimeoutError`` if not."""
        async with httpx.AsyncClient(timeout=2.0) as client, asyncio.timeout(within):
            for name in names:
                while True:  # bounded by ``within``; monitoring has no event to wait on
                    if await _healthy(client, self.monitors[name]):
                        break
                    await asyncio.sleep(0.2)

    async def leads(self, name: str) -> list[str]:
        """The streams whose raft leader is ``name``, per the first member that answers
        ``/jsz?streams=true`` (empty if none does)."""
        async with httpx.AsyncClient(timeout=2.0) as client:
            for monitor in self.monitors.values():
                try:
                    response = await client.get(monitor + "/jsz?streams=true")
                except httpx.TransportError:
                    continue
                if response.status_code != 200:
                    continue
                return sorted(
                    str(detail.get("name"))
                    for account in response.json().get("account_details") or []
                    for detail in account.get("stream_detail") or []
                    if (detail.get("cluster") or {}).get("leader") == name
                )
        return []

    def stop_all(self) -> None:
        for server in self.servers.values():
            server.stop()


async def _healthy(client: httpx.AsyncClient, monitor: str) -> bool:
    try:
        return (await client.get(monitor + "/healthz")).status_code == 200
    except httpx.TransportError:
        return False
