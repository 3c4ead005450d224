"""Real ``orderflow node`` processes for multi-node and crash tests, through the one supervisor
(``nodeapp.local.supervisor``) that ``orderflow up`` and the benchmarks use too."""

from __future__ import annotations

from pathlib import Path

from nodeapp.broker.kv import live_keys
from nodeapp.core.settings import Settings
from nodeapp.local.supervisor import Child, Supervisor, child_env, python_module
from nodeapp.orders.handles import Handles
from tests.support.broker_users import as_role
from tests.support.waiting import wait_for


class NodeProcess(Child):
    """One ``orderflow node --node-id ID`` process logging JSON to ``<folder>/<ID>.log``."""

    def __init__(self, node_id: str, env: dict[str, str], log_path: Path) -> None:
        argv = python_module("nodeapp", "node", "--node-id", node_id)
        super().__init__(node_id, argv, role="node", env=env, log_path=log_path)

    @property
    def node_id(self) -> str:
        return self.name


class NodeProcesses:
    """Starts nodes with the test's settings, as the broker's ``node`` user; ``stop_all`` kills
    whatever is left."""

    def __init__(self, folder: Path, settings: Settings) -> None:
        self.folder = folder
        self.settings = settings
        self.supervisor = Supervisor(folder)
        self.nodes: list[NodeProcess] = []

    def start(self, node_id: str, **env: str) -> NodeProcess:
        node_settings = as_role(self.settings, "node")
        full_env = child_env(node_settings, **{"ORDERFLOW_LOG_FORMAT": "json", **env})
        node = NodeProcess(node_id, full_env, self.folder / f"{node_id}.log")
        self.supervisor.add(node)
        self.nodes.append(node)
        return node

    def stop_all(self) -> None:
        """SIGKILL: a test's teardown wants no drain, only no process left behind."""
        self.supervisor.kill_all()


async def wait_registered(broker: Handles, *nodes: NodeProcess, within: float = 30.0) -> None:
    """Wait until every node process heart-beats in the ``nodes`` bucket (fail if one died)."""

    async def probe() -> bool:
        for node in nodes:
            assert node.alive, "\n".join(node.log_lines()[-20:])
        keys = set(await live_keys(broker.js, broker.buckets.nodes))
        return all(node.node_id in keys for node in nodes)

    await wait_for(probe, within, interval=0.1)
