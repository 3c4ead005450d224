"""Real ``orderflow node`` processes for multi-node and crash tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from nodeapp.core.settings import Settings, settings_env
from nodeapp.orders.handles import Handles
from nodeapp.orders.store import live_keys
from tests.support.waiting import wait_for


class NodeProcess:
    def __init__(self, node_id: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.node_id = node_id
        self.proc = proc
        self.log_path = log_path

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


class NodeProcesses:
    """Starts nodes with the test's settings; ``stop_all`` kills whatever is left."""

    def __init__(self, folder: Path, settings: Settings) -> None:
        self.folder = folder
        self.settings = settings
        self.nodes: list[NodeProcess] = []

    def start(self, node_id: str, **env: str) -> NodeProcess:
        self.folder.mkdir(parents=True, exist_ok=True)
        log_path = self.folder / f"{node_id}.log"
        full_env = {**os.environ, **settings_env(self.settings), "ORDERFLOW_LOG_FORMAT": "json"}
        full_env.update(env)
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "nodeapp", "node", "--node-id", node_id],
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        node = NodeProcess(node_id, proc, log_path)
        self.nodes.append(node)
        return node

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.alive:
                node.signal(signal.SIGKILL)
                node.proc.wait(10)


async def wait_registered(broker: Handles, *nodes: NodeProcess, within: float = 30.0) -> None:
    """Wait until every node process heart-beats in the ``nodes`` bucket (fail if one died)."""

    async def probe() -> bool:
        for node in nodes:
            assert node.alive, "\n".join(node.log_lines()[-20:])
        keys = set(await live_keys(broker.buckets.nodes))
        return all(node.node_id in keys for node in nodes)

    await wait_for(probe, within, interval=0.1)
