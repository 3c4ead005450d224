"""``orderflow up``: the embedded all-in-one. A local nats-server, the api and K nodes, each a
real process as in production.

The api hosts the simulated payment gateway (unless ``ORDERFLOW_PAYMENT_URL`` names another)
and the nodes reach it, and send its verdicts back, through the api's local URL. The signing
secrets for payments and notifications are generated once when unset and kept under the data
folder (``nodeapp.local.secret_files``); an empty catalog gets the demo one
(``nodeapp.local.demo``). So is the first admin API token (``ORDERFLOW_ADMIN_TOKEN``, unless the
environment sets one): ``<data>/admin-token``, mode 0600, printed in the banner the one time it
is created; later starts say where it is. The broker runs with authentication (ADR 0015): the
passwords of its users api, node and admin are kept under the data folder too, the api and the
nodes connect as their own user, ``up`` itself as admin, and the banner says how to use the
``nats`` CLI and ``orderflow`` commands as admin without printing the password. The api's read
model is kept there too (``<data>/orderflow-read.db``, unless ``ORDERFLOW_READ_DB`` names
another file).

A crashed api or node is restarted (``nodeapp.local.keeper``); only Ctrl-C or SIGTERM stops
everything, in order: the api (no new orders), the nodes (they drain), then the broker. The
stopping is synchronous and runs after the event loop is gone, so a failure anywhere still
leaves no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import signal
import sys
from collections.abc import Coroutine, Iterator
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec

from nodeapp.core.errors import OrderflowError
from nodeapp.core.settings import Settings
from nodeapp.local.broker_users import admin_lines, local_users
from nodeapp.local.demo import CatalogState, catalog_line, prepare_catalog, try_line
from nodeapp.local.keeper import Keeper
from nodeapp.local.natsserver import NatsServer, free_port, port_free
from nodeapp.local.secret_files import kept_secret
from nodeapp.local.supervisor import Child, Supervisor, child_env, python_module
from nodeapp.security.bootstrap import ADMIN_TOKEN_FILE, keep_admin_token
from nodeapp.shop.payment_messages import SIM_PREFIX

CONSOLE_PATH: Final = "/console/"  # the browser console the api serves (``api.paths``)
MONITOR_PORT: Final = 8222  # nats-server's usual monitoring port, kept when it is free
API_START_TIMEOUT: Final = 20.0
SECRETS_DIR: Final = "secrets"  # under the data folder: one file per secret, mode 0600
# Settings fields up fills in (the session secret keeps console forms valid across restarts).
KEPT_SECRETS: Final = ("payment_secret", "notify_secret", "session_secret")
DEFAULT_READ_DB: Final = Settings().read_db
READ_DB_FILE: Final = "orderflow-read.db"  # the api's read model, under the data folder
WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::"})
# ``http: 127.0.0.1:8222``, ``http_port = 8222``, ``monitor_port 8222`` (nats.conf syntax)
_MONITOR_SETTING: Final = re.compile(
    r"""^\s*(?:http|http_port|monitor_port)(?:\s*[:=]\s*|\s+)["']?([^"'\s#]+)""", re.MULTILINE
)


def broker_address(settings: Settings, port: int | None) -> tuple[str, int]:
    """Host and port of the local server: NATS_URL's first server, the port overridable."""
    parts = urlsplit(settings.nats_servers[0])
    host = parts.hostname or "127.0.0.1"
    return host, port or parts.port or 4222


class Monitor(msgspec.Struct, frozen=True):
    """Where nats-server's monitoring listens, and the port the config asked for."""

    host: str
    port: int
    wanted: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def monitor_address(config: Path, host: str) -> Monitor:
    """The config's ``http`` host and port (else ``host`` and 8222), or a free port when that
    one is taken (a second ``up``, a local NATS): ``-m`` then overrides the config."""
    found = _MONITOR_SETTING.search(config.read_text(encoding="utf-8"))
    value = found.group(1) if found else str(MONITOR_PORT)
    monitor_host, _, port_text = value.rpartition(":")
    monitor_host = monitor_host or host
    wanted = int(port_text) if port_text.isdigit() else MONITOR_PORT
    port = wanted if port_free(monitor_host, wanted) else free_port(monitor_host)
    return Monitor(monitor_host, port, wanted)


@contextlib.contextmanager
def config_file(config: Path | None) -> Iterator[Path]:
    """``--config``, else the nats.conf shipped in this package, whatever the current folder."""
    if config is not None:
        if not config.is_file():
            raise OrderflowError(f"--config {config}: no such file")
        yield config.absolute()
        return
    with as_file(files("nodeapp.local").joinpath("nats.conf")) as packaged:
        yield packaged


def local_settings(settings: Settings, data_dir: Path) -> Settings:
    """``settings`` for the children: the api's local URL (nodes reach the gateway and send
    callbacks there), every signing secret, kept under ``data_dir`` when the environment sets
    none, and the api's read model in ``data_dir`` unless ``ORDERFLOW_READ_DB`` names a file."""
    host = "127.0.0.1" if settings.api_host in WILDCARD_HOSTS else settings.api_host
    host = f"[{host}]" if ":" in host else host
    secrets = {
        field: getattr(settings, field) or _kept(data_dir / SECRETS_DIR, field)
        for field in KEPT_SECRETS
    }
    api_url = f"http://{host}:{settings.api_port}"
    read_db = settings.read_db
    if read_db == DEFAULT_READ_DB:  # not the current folder's: the data folder's
        read_db = str(data_dir / READ_DB_FILE)
    return msgspec.structs.replace(settings, api_url=api_url, read_db=read_db, **secrets)


class AdminToken(msgspec.Struct, frozen=True):
    """Where the admin token came from, for the banner: ``path`` None when the environment set
    it; ``created`` when it was made just now (the one time the banner shows it)."""

    token: str
    path: Path | None
    created: bool

    def __repr__(self) -> str:
        return f"AdminToken(path={self.path!r}, created={self.created})"  # never the token

    def curl_header(self) -> str:
        """curl arguments that send it, working as printed in a POSIX shell."""
        kept = "$ORDERFLOW_ADMIN_TOKEN"
        source = kept if self.path is None else f"$(cat {shlex.quote(str(self.path))})"
        return f'-H "Authorization: Bearer {source}"'

    def banner_line(self) -> str:
        if self.path is None:
            return "  token    the admin token is ORDERFLOW_ADMIN_TOKEN's (from the environment)"
        where = shlex.quote(str(self.path))
        if self.created:
            return f"  token    {self.token}  (admin; shown this once, kept in {where}, mode 0600)"
        return f"  token    in {where}  (admin; CLI: export ORDERFLOW_TOKEN=$(cat {where}))"


def admin_token(settings: Settings, data_dir: Path) -> tuple[Settings, AdminToken]:
    """``settings`` with the admin token in force: the environment's, else the one kept in
    ``data_dir`` (made on first start)."""
    if settings.admin_token:
        return settings, AdminToken(settings.admin_token, None, created=False)
    try:
        token, created = keep_admin_token(data_dir)
    except OSError as exc:
        raise OrderflowError(f"cannot keep the admin token in {data_dir}: {exc.strerror}") from None
    path = data_dir / ADMIN_TOKEN_FILE
    return (
        msgspec.structs.replace(settings, admin_token=token),
        AdminToken(token, path, created),
    )


def _kept(folder: Path, name: str) -> str:
    try:
        return kept_secret(folder, name)
    except OSError as exc:
        raise OrderflowError(f"cannot keep {name} under {folder}: {exc.strerror}") from None


def run_up(
    settings: Settings,
    nodes: int,
    port: int | None,
    data_dir: Path,
    config: Path | None,
    *,
    demo: bool = True,
) -> int:
    """Run until Ctrl-C or SIGTERM (exit 0); a start-up failure raises ``OrderflowError``.
    ``demo`` loads the demo catalog into an empty catalog."""
    if nodes < 0:
        raise OrderflowError("--nodes must be >= 0")
    host, nats_port = broker_address(settings, port)
    if not port_free(host, nats_port):
        raise OrderflowError(f"{host}:{nats_port} is in use: stop that server or pass --port")
    if not port_free(settings.api_host, settings.api_port):
        where = f"{settings.api_host}:{settings.api_port}"
        raise OrderflowError(f"{where} is in use: stop that process or pass --api-port")
    data_dir = data_dir.absolute()
    settings, admin = admin_token(local_settings(settings, data_dir), data_dir)
    users = local_users(data_dir / SECRETS_DIR, f"nats://{host}:{nats_port}")
    with config_file(config) as conf:
        monitor = monitor_address(conf, host)
        server = NatsServer(data_dir, nats_port, host, conf, monitor_port=monitor.port, users=users)
        supervisor = Supervisor()  # children write to our terminal, as one program would
        try:
            server.start()
            _run(_up(settings, server, supervisor, nodes, Shown(monitor, admin), demo))
        except asyncio.CancelledError:  # Ctrl-C or SIGTERM: the stop that was asked for
            print("orderflow: stopping (api, then nodes, then the broker)", file=sys.stderr)
        finally:
            with _signals_ignored():  # a second Ctrl-C must not orphan the children
                supervisor.stop_all(settings.step_seconds + settings.ack_wait + 5)
                server.stop()
            print("orderflow stopped", file=sys.stderr)
    return 0


def _run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where up runs
        asyncio.run(coro)
    else:
        uvloop.run(coro)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def _up(
    settings: Settings,
    server: NatsServer,
    supervisor: Supervisor,
    nodes: int,
    shown: Shown,
    demo: bool,
) -> None:
    """Start the api and nodes, then keep them running; Ctrl-C or SIGTERM cancels this."""
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main.cancel)
    settings = msgspec.structs.replace(settings, nats_url=server.url_for("admin"))
    catalog = await prepare_catalog(settings, demo)  # every resource is created here too
    api_env = child_env(settings, NATS_URL=server.url_for("api"))
    node_env = child_env(settings, NATS_URL=server.url_for("node"))
    api = supervisor.spawn("api", python_module("api"), env=api_env)
    for n in range(1, nodes + 1):
        supervisor.spawn(f"node-{n}", python_module("nodeapp", "node"), role="node", env=node_env)
    if not await _wait_http(settings.api_host, settings.api_port, api, API_START_TIMEOUT):
        raise OrderflowError("the api did not start; see its log above")
    _banner(settings, server, shown, nodes, catalog)
    await Keeper(supervisor, final_clean_exit={"node"}).run()


async def _wait_http(host: str, port: int, child: Child, within: float) -> bool:
    """Whether ``GET /healthz`` answers 200 within ``within`` seconds (while the child runs)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline and child.alive:
        with contextlib.suppress(OSError):  # not listening yet
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            status = await reader.readline()
            writer.close()
            if b" 200 " in status:
                return True
        await asyncio.sleep(0.1)
    return False


class Shown(msgspec.Struct, frozen=True):
    """What the banner tells beyond the settings: monitoring's address and the admin token."""

    monitor: Monitor
    admin: AdminToken


def _banner(
    s: Settings, server: NatsServer, shown: Shown, nodes: int, catalog: CatalogState
) -> None:
    monitor = shown.monitor
    moved = "" if monitor.port == monitor.wanted else f"; {monitor.wanted} was in use"
    kept = server.data_dir / SECRETS_DIR
    print(
        f"orderflow is up\n"
        f"  api      {s.api_url}  (OpenAPI: {s.api_url}/schema)\n"
        f"  console  {s.api_url}{CONSOLE_PATH}  (log in with the admin token)\n"
        f"  broker   {server.url}  (data in {server.data_dir}; users api, node, admin)\n"
        f"{admin_lines(kept, server.url)}\n"
        f"  monitor  {monitor.url}  (/healthz /varz /jsz{moved})\n"
        f"  nodes    {nodes} x {s.concurrency} orders in flight, steps of {s.step_seconds:g}s\n"
        f"  catalog  {catalog_line(catalog)}\n"
        f"  payments {s.payment_url or s.api_url + SIM_PREFIX}  "
        f"(signing secrets in {kept} unless set)\n"
        f"{shown.admin.banner_line()}\n"
        f"{try_line(s.api_url, catalog, shown.admin.curl_header())}\n"
        f"A crashed api or node is restarted; Ctrl-C stops everything.",
        flush=True,
    )
