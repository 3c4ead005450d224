"""Child processes of the system under our control: spawned, signalled, stopped in order.

``orderflow up``, the test harness and the benchmarks all start the api, nodes and nats-server
through this module, so "stop the api (no new orders), then let the nodes drain, then kill
whatever is left" is written once. It is synchronous (``subprocess.Popen``) on purpose: stopping
must also work after the event loop is gone (Ctrl-C, SIGTERM, a failed run) and from plain
fixtures.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

from nodeapp.core.settings import Settings, settings_env

log = logging.getLogger("orderflow.supervisor")

# Who stops first: the api (no new orders come in), then the nodes (they drain); any other role
# after them. The broker is not a child here: its owner stops it last.
STOP_ORDER: Final = ("api", "node")


def python_module(module: str, *args: str) -> list[str]:
    """``python -m module args``, with this interpreter, so children run the same install."""
    return [sys.executable, "-m", module, *args]


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """This process's environment with ``settings`` (and ``extra``) in force for a child."""
    return {**os.environ, **settings_env(settings), **extra}


def exit_signal(code: int) -> str | None:
    """The signal that ended a process (``SIGKILL``; Popen reports it as a negative code), or
    None for a process that exited by itself."""
    if code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def describe_exit(code: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL``."""
    name = exit_signal(code)
    return f"exit code {code}" if name is None else f"killed by {name}"


class Child:
    """One process, started at construction, in a session of its own.

    Its own session keeps a terminal's Ctrl-C away from it: the supervisor decides the order in
    which children stop. Output goes to ``log_path`` (appended) or, when None, to ours.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        role: str | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.role = role or name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.log_path = log_path
        self.cwd = cwd
        self.started_at = time.monotonic()
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        if self.log_path is None:
            return subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, start_new_session=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def again(self) -> Child:
        """A new process with the same command, environment and log: a restart."""
        return Child(
            self.name,
            self.argv,
            role=self.role,
            env=self.env,
            log_path=self.log_path,
            cwd=self.cwd,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` if the process still runs (an exit racing the signal is not an error)."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code, or None if the process still runs after ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> int:
        """SIGKILL and reap: the crash an operator fears, or the end of a grace period."""
        self.signal(signal.SIGKILL)
        return self.proc.wait()

    def stop(self, grace: float) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds."""
        self.signal(signal.SIGTERM)
        code = self.wait(grace)
        return self.kill() if code is None else code

    def log_lines(self) -> list[str]:
        if self.log_path is None:
            return []
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_lines()[-lines:])

    def __repr__(self) -> str:
        return f"<Child {self.name} pid={self.pid} returncode={self.returncode}>"


class Supervisor:
    """Owns a set of children; stops them role by role (``STOP_ORDER``), each role bounded."""

    def __init__(self, log_folder: Path | None = None) -> None:
        """``log_folder``: each child logs to ``<folder>/<name>.log``; None: to our output."""
        self.log_folder = log_folder
        self.children: list[Child] = []

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        role: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        log_path = None if self.log_folder is None else self.log_folder / f"{name}.log"
        return self.add(Child(name, argv, role=role, env=env, log_path=log_path))

    def add(self, child: Child) -> Child:
        """Take ownership of a child started elsewhere (a subclass with its own wiring)."""
        self.children.append(child)
        return child

    def restart(self, child: Child) -> Child:
        """Replace an exited child by a new process with the same command."""
        fresh = child.again()
        self.children = [fresh if c is child else c for c in self.children]
        return fresh

    def alive(self) -> list[Child]:
        return [c for c in self.children if c.alive]

    def stop_all(self, grace: float) -> None:
        """SIGTERM role by role (api, then nodes, then the rest), each role given ``grace``
        seconds to exit before its stragglers are killed."""
        for members in self._by_stop_order():
            for child in members:
                child.signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            for child in members:
                if child.wait(max(0.0, deadline - time.monotonic())) is None:
                    log.warning(
                        "%s (pid %d) still running %gs after SIGTERM: killing it",
                        child.name,
                        child.pid,
                        grace,
                        extra={"event": "supervisor.killed", "child": child.name, "pid": child.pid},
                    )
                    child.kill()

    def kill_all(self) -> None:
        """SIGKILL every child still running and reap it: a test's teardown, no drain wanted."""
        for child in self.alive():
            child.kill()

    def _by_stop_order(self) -> Iterator[list[Child]]:
        others = sorted({c.role for c in self.children} - set(STOP_ORDER))
        roles: Iterable[str] = (*STOP_ORDER, *others)
        for role in roles:
            members = [c for c in self.children if c.role == role and c.alive]
            if members:
                yield members
