"""``orderflow up``: the embedded all-in-one. A local nats-server, the api and K nodes, each a
real process as in production; Ctrl-C or SIGTERM stops them in order (api, nodes, broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from nodeapp.core.errors import OrderflowError
from nodeapp.core.settings import Settings, settings_env
from nodeapp.local.natsserver import NatsServer
from nodeapp.orders.handles import init_resources

Proc = asyncio.subprocess.Process


def broker_address(settings: Settings, port: int | None) -> tuple[str, int]:
    """Host and port of the local server: NATS_URL's first server, the port overridable."""
    parts = urlsplit(settings.nats_servers[0])
    host = parts.hostname or "127.0.0.1"
    return host, port or parts.port or 4222


def run_up(
    settings: Settings, nodes: int, port: int | None, data_dir: Path, config: Path | None
) -> int:
    if nodes < 0:
        raise OrderflowError("--nodes must be >= 0")
    if config is None and Path("nats.conf").is_file():
        config = Path("nats.conf")
    data_dir = data_dir.absolute()
    try:
        import uvloop

        return uvloop.run(_up(settings, nodes, port, data_dir, config))
    except ImportError:  # pragma: no cover
        return asyncio.run(_up(settings, nodes, port, data_dir, config))


async def _up(
    settings: Settings, nodes: int, port: int | None, data_dir: Path, config: Path | None
) -> int:
    host, nats_port = broker_address(settings, port)
    server = NatsServer(data_dir, port=nats_port, host=host, config=config)
    if server.port and _port_busy(host, nats_port):
        raise OrderflowError(f"{host}:{nats_port} is in use: stop that server or pass --port")
    await asyncio.to_thread(server.start)
    children: list[tuple[str, Proc]] = []
    try:
        settings = msgspec.structs.replace(settings, nats_url=server.url)
        await init_resources(settings)
        env = {**os.environ, **settings_env(settings)}
        children.append(("api", await _spawn([sys.executable, "-m", "api"], env)))
        for _ in range(nodes):
            node = await _spawn([sys.executable, "-m", "nodeapp", "node"], env)
            children.append(("node", node))
        api_url = f"http://{settings.api_host}:{settings.api_port}"
        if not await _wait_http(settings.api_host, settings.api_port, children[0][1], 20.0):
            raise OrderflowError("the api did not start; see its log above")
        _banner(api_url, server, data_dir, nodes, settings)
        return await _supervise(children)
    finally:
        await _stop_children(children, settings.step_seconds + settings.ack_wait + 5)
        await asyncio.to_thread(server.stop)
        print("orderflow stopped", file=sys.stderr)


def _port_busy(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


async def _spawn(cmd: list[str], env: dict[str, str]) -> Proc:
    return await asyncio.create_subprocess_exec(*cmd, env=env, start_new_session=True)


async def _wait_http(host: str, port: int, proc: Proc, within: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline and proc.returncode is None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            status = await reader.readline()
            writer.close()
            if b" 200 " in status:
                return True
        except OSError:
            pass
        await asyncio.sleep(0.1)
    return False


def _banner(api_url: str, server: NatsServer, data_dir: Path, nodes: int, s: Settings) -> None:
    print(
        f"orderflow is up\n"
        f"  api      {api_url}  (OpenAPI: {api_url}/schema)\n"
        f"  broker   {server.url}  (data in {data_dir})\n"
        f"  nodes    {nodes} x {s.concurrency} orders in flight, steps of {s.step_seconds:g}s\n"
        f"try: curl -s -XPOST {api_url}/orders -H 'content-type: application/json' "
        f"""-d '{{"customer_id":"c-1","items":[{{"product_id":"p-1","quantity":1}}]}}'\n"""
        f"Ctrl-C stops everything.",
        flush=True,
    )


async def _supervise(children: list[tuple[str, Proc]]) -> int:
    """Wait for Ctrl-C / SIGTERM (exit 0) or for a process to fail (exit 1).

    A node that exits 0 was drained (``orderflow node drain``, ``POST /stop``): it left on
    purpose, so the rest keeps running.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waits = {asyncio.ensure_future(proc.wait()): (name, proc) for name, proc in children}
    stopper = asyncio.ensure_future(stop.wait())
    try:
        while True:
            done, _ = await asyncio.wait({stopper, *waits}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                return 0
            for task in done:
                name, proc = waits.pop(task)
                if name == "node" and proc.returncode == 0:
                    print(f"orderflow up: node (pid {proc.pid}) drained and left", file=sys.stderr)
                    continue
                print(
                    f"orderflow up: the {name} process exited unexpectedly "
                    f"(code {proc.returncode})",
                    file=sys.stderr,
                )
                return 1
    finally:
        for task in (stopper, *waits):
            task.cancel()


async def _stop_children(children: list[tuple[str, Proc]], grace: float) -> None:
    """SIGTERM the api first (no new orders), then the nodes (they drain); kill stragglers."""
    for group in ("api", "node"):
        procs = [p for name, p in children if name == group and p.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
