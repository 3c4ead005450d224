"""The child-process supervisor that ``up``, the tests and the benchmarks share, with real
(tiny) Python children: stop order, grace then kill, restarts with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

import pytest

from nodeapp.local.keeper import Backoff, Keeper
from nodeapp.local.supervisor import Child, Supervisor, describe_exit
from tests.support.waiting import wait_for

# Records its name in ``out`` on SIGTERM and exits 0; "stubborn" ignores SIGTERM.
CHILD = """
import signal, sys
name, out = sys.argv[1], sys.argv[2]
def stop(*_):
    with open(out, "a") as f:
        f.write(name + "\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if name == "stubborn" else stop)
print("ready", flush=True)
while True:
    signal.pause()
"""


async def ready(*children: Child) -> None:
    async def probe() -> bool:
        for child in children:
            assert child.alive, child.log_tail()
        return all("ready" in child.log_lines() for child in children)

    await wait_for(probe, 20.0)


async def test_stop_all_stops_the_api_before_the_nodes_and_kills_stragglers(
    tmp_path: Path,
) -> None:
    supervisor = Supervisor(tmp_path)
    out = tmp_path / "stopped.txt"

    def spawn(name: str, role: str) -> Child:
        return supervisor.spawn(name, [sys.executable, "-c", CHILD, name, str(out)], role=role)

    # Spawned nodes first: the order of stopping must come from the roles, not the list.
    nodes = [spawn("node-1", "node"), spawn("node-2", "node")]
    api = spawn("api", "api")
    stubborn = spawn("stubborn", "other")
    await ready(*nodes, api, stubborn)

    await asyncio.to_thread(supervisor.stop_all, 0.5)

    lines = out.read_text().splitlines()
    assert lines[0] == "api"
    assert sorted(lines[1:]) == ["node-1", "node-2"]
    assert [c.returncode for c in (api, *nodes)] == [0, 0, 0]
    assert stubborn.returncode == -signal.SIGKILL
    assert supervisor.alive() == []


async def test_restart_runs_the_same_command_as_a_new_process(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path)
    first = supervisor.spawn("one", [sys.executable, "-c", "print('hello')"])
    assert await asyncio.to_thread(first.wait, 20.0) == 0
    second = supervisor.restart(first)
    assert await asyncio.to_thread(second.wait, 20.0) == 0
    assert second.pid != first.pid
    assert supervisor.children == [second]
    assert second.log_lines() == ["hello", "hello"]  # one log, appended


def test_exits_are_described_with_their_code_or_signal() -> None:
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-9) == "killed by SIGKILL"


def test_backoff_doubles_to_its_ceiling_and_resets_after_a_stable_run() -> None:
    backoff = Backoff(first=0.5, ceiling=10.0, stable=30.0)
    assert [backoff.delay(ran_for=1.0) for _ in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert backoff.delay(ran_for=31.0) == 0.5
    assert backoff.delay(ran_for=1.0) == 1.0


async def test_keeper_restarts_a_crash_and_lets_a_drained_node_go(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="orderflow.up")
    supervisor = Supervisor(tmp_path)
    crashing = supervisor.spawn("api", [sys.executable, "-c", "raise SystemExit(3)"])
    drained = supervisor.spawn("node-1", [sys.executable, "-c", "pass"], role="node")
    running = asyncio.create_task(Keeper(supervisor, final_clean_exit={"node"}).run())

    def events(name: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "event", None) == name]

    async def restarted_and_left() -> bool:
        assert not running.done(), running
        return bool(events("up.child_restarted")) and bool(events("up.child_left"))

    try:
        await wait_for(restarted_and_left, 20.0)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        supervisor.kill_all()
    crash = events("up.child_exited")[0]
    assert (crash.child, crash.exit_code) == ("api", 3)  # type: ignore[attr-defined]
    assert supervisor.children[0] is not crashing
    assert supervisor.children[1] is drained  # exit 0 of a node: left on purpose
