"""What the benchmarks share: a throwaway broker, real child processes, /proc sampling, and
reading the order documents back once a run is over.

The system under test runs as in production (a nats-server, ``python -m nodeapp node`` and
``python -m api`` processes) so the numbers include every process boundary; the load generator
only measures what the documents themselves record.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Final

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

from nodeapp.broker.kv import latest_values
from nodeapp.broker.resources import Buckets
from nodeapp.core.errors import OrderflowError
from nodeapp.core.http import HttpClient, HttpFailed
from nodeapp.core.settings import Settings
from nodeapp.local import supervisor
from nodeapp.local.natsserver import NatsServer
from nodeapp.local.supervisor import child_env

LOOPBACK: Final = "127.0.0.1"
STOP_GRACE: Final = 10.0
READY_TIMEOUT: Final = 30.0
SNAPSHOT_STALL: Final = 10.0
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


class BenchError(OrderflowError):
    """A benchmark could not run (a process died, a deadline passed); the message says which."""


# -- child processes -------------------------------------------------------------------------


class Child(supervisor.Child):
    """One real process of the system under test, its output in a log file."""

    def check_alive(self) -> None:
        if not self.alive:
            raise BenchError(
                f"{self.name} exited with status {self.returncode}:\n{self.log_tail()}"
            )


REPO: Final = Path(__file__).resolve().parent.parent


class Processes:
    """Owns every process a run starts and stops them all, synchronously and bounded in time.

    Stopping is synchronous so it also runs after the event loop is gone (Ctrl-C, SIGTERM).
    ``tree``: the checkout whose ``nodeapp`` and ``api`` the children run (default this one).
    """

    def __init__(self, folder: Path, tree: Path | None = None) -> None:
        self.folder = folder
        self.tree = tree or REPO
        self.supervisor = supervisor.Supervisor(folder)
        self.server: NatsServer | None = None

    def start_server(self) -> NatsServer:
        self.server = NatsServer(self.folder / "broker", host=LOOPBACK)
        self.server.start()
        return self.server

    def spawn(self, name: str, role: str, args: Sequence[str], env: dict[str, str]) -> Child:
        """``python args`` as ``name`` in ``tree``, logging to ``<folder>/<name>.log``."""
        child = Child(
            name,
            [sys.executable, *args],
            role=role,
            env={**env, "PYTHONPATH": str(self.tree)},
            log_path=self.folder / f"{name}.log",
            cwd=self.tree,
        )
        self.supervisor.add(child)
        return child

    def stop_all(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM the api, then the nodes (they drain), kill stragglers, then stop the broker."""
        self.supervisor.stop_all(grace)
        if self.server is not None:
            self.server.stop()


@contextlib.contextmanager
def bench_folder(keep: bool) -> Iterator[Path]:
    """A temporary folder for the broker's store and the children's logs, removed unless kept."""
    folder = Path(tempfile.mkdtemp(prefix="orderflow-bench-"))
    try:
        yield folder
    finally:
        if keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Let cleanup finish: a second Ctrl-C must not leave orphaned processes behind."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# -- the cluster under test ------------------------------------------------------------------


async def wait_until(
    what: str, probe: Callable[[], Awaitable[bool]], children: list[Child]
) -> None:
    """Poll ``probe`` until true; fail at the deadline or as soon as a child dies."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not await probe():
        for child in children:
            child.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not ready within {READY_TIMEOUT:.0f}s")
        await asyncio.sleep(0.05)


def node_command(node_id: str) -> list[str]:
    return ["-m", "nodeapp", "node", "--node-id", node_id]


def bare_node_command(node_id: str) -> list[str]:
    """A node without the shop's effects (``benchmarks/bare_node.py``, run as a script so that
    the ``nodeapp`` it imports is the tree's)."""
    return [str(REPO / "benchmarks" / "bare_node.py"), "--node-id", node_id]


async def start_nodes(
    procs: Processes,
    settings: Settings,
    buckets: Buckets,
    k: int,
    command: Callable[[str], list[str]] = node_command,
) -> list[Child]:
    """K node processes (``python <command(node id)>``: by default ``orderflow node``); ready
    when each one's heartbeat is in the ``nodes`` bucket."""
    env = child_env(settings)
    ids = [f"bench-node-{n}" for n in range(k)]
    nodes = [procs.spawn(f"node-{n}", "node", command(i), env) for n, i in enumerate(ids)]
    pending = set(ids)

    async def all_beating() -> bool:
        for node_id in list(pending):
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                await buckets.nodes.get(node_id)
                pending.discard(node_id)
        return not pending

    await wait_until("node heartbeats", all_beating, nodes)
    return nodes


async def start_api(procs: Processes, settings: Settings) -> Child:
    """One api process; ready when ``/readyz`` answers 200 (broker linked, resources there)."""
    api = procs.spawn("api", "api", ["-m", "api"], child_env(settings))

    async def ready() -> bool:
        async with HttpClient(timeout=2) as client:
            try:
                answer = await client.request("GET", f"{settings.api_url}/readyz")
            except HttpFailed:
                return False
        return answer.status == 200

    await wait_until("api", ready, [api])
    return api


class ReadModelState(msgspec.Struct, frozen=True):
    """The api's read model as ``/readyz`` tells it (its ``read_model``)."""

    lag_messages: int
    applied: int


class _Readiness(msgspec.Struct):
    read_model: ReadModelState | None = None


async def read_model_state(settings: Settings) -> ReadModelState | None:
    """How far the api's projector is behind right now (None if it does not say)."""
    async with HttpClient(timeout=5) as client:
        try:
            answer = await client.request("GET", f"{settings.api_url}/readyz")
        except HttpFailed:
            return None
    try:
        return msgspec.json.decode(answer.body, type=_Readiness).read_model
    except msgspec.DecodeError:
        return None


# -- /proc sampling --------------------------------------------------------------------------


def rss_bytes(pid: int) -> int | None:
    """Resident set size from ``/proc/<pid>/status`` (``VmRSS``), or None once the pid is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` so far, from ``/proc/<pid>/stat``."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class RssSampler:
    """Peak RSS per labelled pid, sampled every ``interval`` seconds until stopped."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.pids: dict[str, int] = {}
        self.peaks: dict[str, int] = {}
        self._stop = asyncio.Event()

    def watch(self, label: str, pid: int) -> None:
        self.pids[label] = pid

    def sample(self) -> None:
        for label, pid in self.pids.items():
            rss = rss_bytes(pid)
            if rss is not None and rss > self.peaks.get(label, 0):
                self.peaks[label] = rss

    async def run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    def stop(self) -> None:
        self._stop.set()

    def peak_mib(self, prefix: str) -> float | None:
        """The largest peak among labels starting with ``prefix`` (e.g. every ``node-*``)."""
        values = [v for label, v in self.peaks.items() if label.startswith(prefix)]
        return max(values) / 2**20 if values else None


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``, idle and iowait out)."""
    with open("/proc/stat", encoding="ascii") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _CLK_TCK


def wait_for_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Block until the rest of the machine keeps under ``threshold`` cores busy for a second,
    or ``max_wait`` seconds pass; return what was busy last. The cores are shared (other
    people's test runs), and a benchmark started next to them measures them too."""
    deadline = time.monotonic() + max_wait
    busy = 0.0
    while True:
        before = machine_busy_seconds()
        time.sleep(1.0)
        busy = machine_busy_seconds() - before
        if busy < threshold or time.monotonic() >= deadline:
            return busy
        print(f"  waiting for a quiet machine: {busy:.2f} cores busy", file=sys.stderr)


class CpuMeter:
    """CPU seconds each labelled pid spends between ``start()`` and ``stop()``, and what the
    rest of the machine spent meanwhile (other work on the shared cores skews a run)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[str, float] = {}
        self._machine_start = 0.0
        self._wall_start = 0.0
        self.used: dict[str, float] = {}
        self.elsewhere = 0.0
        self.seconds = 0.0

    def start(self) -> None:
        self._start = {k: v for k, p in self.pids.items() if (v := cpu_seconds(p)) is not None}
        self._machine_start = machine_busy_seconds()
        self._wall_start = time.monotonic()

    def stop(self) -> None:
        for label, pid in self.pids.items():
            now = cpu_seconds(pid)
            if now is not None and label in self._start:
                self.used[label] = now - self._start[label]
        machine = machine_busy_seconds() - self._machine_start
        self.elsewhere = max(0.0, machine - sum(self.used.values()))
        self.seconds = time.monotonic() - self._wall_start

    def cores(self) -> dict[str, float]:
        """Average cores each process kept busy over the metered interval."""
        return {k: v / self.seconds for k, v in self.used.items()} if self.seconds else {}


# -- the documents ---------------------------------------------------------------------------


class StepTimes(msgspec.Struct):
    start_time: datetime | None = None
    complete_time: datetime | None = None
    node_id: str | None = None


class OrderTimes(msgspec.Struct):
    """The few fields of an order document a benchmark reads; the rest is skipped unparsed."""

    order_id: str
    status: str
    start_time: datetime
    complete_time: datetime | None = None
    steps: list[StepTimes] = []

    @property
    def terminal(self) -> bool:
        return self.status in ("completed", "failed")


_times_decoder: Final = msgspec.json.Decoder(OrderTimes)


async def snapshot(kv: KeyValue, wanted: set[str]) -> dict[str, OrderTimes]:
    """The latest document of every wanted order, read once through a KV watcher.

    Read after the run rather than watched live: a live watcher would decode every revision
    (six per order) in the load generator, on the same two cores as the system under test.
    """
    return await latest_values(kv, _times_decoder, wanted, SNAPSHOT_STALL)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted ``values`` (``q`` in [0, 1])."""
    if not values:
        return math.nan
    rank = max(1, math.ceil(q * len(values)))
    return values[rank - 1]


# -- profiling -------------------------------------------------------------------------------


class Profiler:
    """``py-spy record`` on each watched process for the measurement window (``--profile``).

    Non-blocking sampling, so the process under test is not paused; the output is py-spy's raw
    collapsed stacks, one file per process, summarised by ``top_functions``.
    """

    def __init__(self, folder: Path, rate: int = 200) -> None:
        self.folder = folder
        self.rate = rate
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def output(self, label: str) -> Path:
        return self.folder / f"{label}.pyspy.txt"

    def start(self, label: str, pid: int) -> None:
        search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        py_spy = shutil.which("py-spy", path=search)
        if py_spy is None:
            raise BenchError("--profile needs py-spy: pip install py-spy")
        self.folder.mkdir(parents=True, exist_ok=True)
        cmd = [py_spy, "record", "--pid", str(pid), "--rate", str(self.rate), "--nonblocking"]
        cmd += ["--format", "raw", "--output", str(self.output(label))]
        self.running[label] = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )

    def stop(self, timeout: float = 15.0) -> list[Path]:
        """SIGINT makes py-spy write its file; wait for it, kill it if it hangs."""
        for proc in self.running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.running.values():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        written = [self.output(label) for label in self.running if self.output(label).exists()]
        self.running.clear()
        return written


def top_functions(
    path: Path, limit: int = 15, by_self: bool = False
) -> list[tuple[str, float, float]]:
    """(function, inclusive %, self %) of the hottest functions in a py-spy raw profile, by
    inclusive time (frames in nearly every sample, such as the event loop, left out) or self."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [
            frame.rsplit(":", 1)[0] + ")" if ":" in frame else frame for frame in stack.split(";")
        ]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    if total == 0:
        return []
    weight = own if by_self else inclusive
    # Frames on the path into the event loop appear in most samples and say nothing.
    ceiling = 0.98 * max(inclusive.values())
    candidates = [f for f in weight if by_self or inclusive[f] < ceiling]
    ranked = sorted(candidates, key=lambda f: weight[f], reverse=True)[:limit]
    return [(f, 100 * inclusive[f] / total, 100 * own.get(f, 0) / total) for f in ranked]
