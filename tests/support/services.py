"""Real ``python -m api`` processes, and finding a node process's ops listener.

Cross-process tests (traces across api and node, the ops endpoints of a node process) need the
real entry points: tracing is configured per process, and ``POST /stop`` must end a process.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec
import nats.js.errors

from nodeapp.cluster.membership import Heartbeat
from nodeapp.core.settings import Settings
from nodeapp.local.natsserver import free_port
from nodeapp.local.supervisor import Child, child_env, python_module
from nodeapp.orders.handles import Handles
from tests.support.broker_users import as_role
from tests.support.waiting import wait_for


class ApiProcess(Child):
    """One ``python -m api`` process on a free port; ``stop()`` sends SIGTERM and waits.

    ``settings`` reach it as environment variables, ``ORDERFLOW_ADMIN_TOKEN`` among them, and
    ``NATS_URL`` as the broker's ``api`` user; ``client()`` talks to it as that admin token
    (``client(None)``: with no token). Its read model is ``<log_path>.read.db`` (each api
    process keeps its own), unless ``ORDERFLOW_READ_DB`` is given in ``env``: a restart with
    the same one resumes from that file's checkpoint.
    """

    def __init__(self, settings: Settings, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = settings.admin_token
        self.read_db = Path(env.get("ORDERFLOW_READ_DB") or f"{log_path}.read.db")
        own = {
            "ORDERFLOW_API_PORT": str(self.port),
            "ORDERFLOW_LOG_FORMAT": "json",
            "ORDERFLOW_READ_DB": str(self.read_db),
        }
        full_env = child_env(as_role(settings, "api"), **{**own, **env})
        super().__init__("api", python_module("api"), env=full_env, log_path=log_path)

    async def wait_ready(self, within: float = 20.0) -> None:
        async def ready() -> bool:
            if not self.alive:
                raise AssertionError(f"api exited {self.returncode}: {self.log_path}")
            try:
                async with httpx.AsyncClient(timeout=1.0) as client:
                    return (await client.get(f"{self.url}/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(ready, within, interval=0.1)

    def client(self, token: str | None = "", timeout: float = 5.0) -> httpx.AsyncClient:
        """A client for this api presenting ``token``; by default the settings' admin token,
        None for no token at all."""
        token = self.admin_token if token == "" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, timeout=timeout, headers=headers)

    def stop(self, grace: float = 15.0) -> int:
        return super().stop(grace)


async def wait_ops_url(broker: Handles, node_id: str, within: float = 20.0) -> str:
    """The ops URL a node advertises in its heartbeat, once it has written one."""

    async def probe() -> str | None:
        try:
            entry = await broker.buckets.nodes.get(node_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        return msgspec.json.decode(entry.value or b"", type=Heartbeat).ops_url

    return await wait_for(probe, within, interval=0.1)
