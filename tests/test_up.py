"""``orderflow up`` as a new user runs it: ``python -m nodeapp up`` from an empty folder (so the
packaged nats.conf is found), with a real nats-server, api and nodes as its children.

It loads the demo catalog into the empty one and suggests an order that completes, paid at the
gateway the api hosts; it keeps serving when a node is SIGKILLed (the node is restarted and the
cluster heals), it moves monitoring off a taken 8222, it keeps its generated secrets private,
and SIGTERM stops everything and exits 0. It makes the first admin token (``<data>/admin-token``,
mode 0600), shows it once, and its suggested ``curl`` works as printed. Its broker refuses
anonymous clients; the broker users' passwords are kept private and never printed, and the
banner's ``export NATS_URL=...`` line works as printed for ``orderflow inspect``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from nodeapp.core.settings import load_settings
from nodeapp.local.broker_users import CONTEXT_FILE, ROLES
from nodeapp.local.natsserver import free_port
from nodeapp.local.secret_files import kept_secret
from nodeapp.local.supervisor import Child, python_module
from nodeapp.local.up import (
    KEPT_SECRETS,
    SECRETS_DIR,
    Monitor,
    admin_token,
    local_settings,
    monitor_address,
)
from nodeapp.security.bootstrap import ADMIN_TOKEN_FILE
from nodeapp.shop.products import DEMO_CATALOG
from tests.support.waiting import wait_for

MONITOR_PORT = 8222
SOURCE = Path(__file__).resolve().parents[1]  # this checkout, not whatever is installed
START_WITHIN = 60.0  # two shared cores: interpreters, nats-server, api and nodes all start
_BANNER_LINE = re.compile(r"^  (api|console|broker|monitor|nodes|catalog|payments|token)\s+(\S+)")
_CURL_BODY = re.compile(r"-d '(\{.*\})'")


def pids_alive(pids: set[int]) -> set[int]:
    """The ``pids`` that still run (a zombie has finished)."""
    alive = set()
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            alive.add(pid)
    return alive


def children_of(parent: int) -> set[int]:
    """Pids whose parent is ``parent``, from ``/proc``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # gone while we looked
        if int(fields[1]) == parent:
            found.add(int(entry.name))
    return found


class Up:
    """One ``orderflow up`` subprocess run from ``folder``, its output in ``folder/up.log``."""

    def __init__(self, folder: Path, nodes: int, *flags: str) -> None:
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.data_dir = folder / "data"
        argv = python_module(
            "nodeapp", "up", "--nodes", str(nodes), "--port", str(free_port()),
            "--api-port", str(self.api_port), "--data-dir", str(self.data_dir), *flags,
        )  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ORDERFLOW_", "NATS_"))}
        # Run from an empty folder, ``python -m nodeapp`` must still import the code under test.
        path = os.pathsep.join(p for p in (str(SOURCE), os.environ.get("PYTHONPATH")) if p)
        env |= {
            "PYTHONPATH": path,
            "ORDERFLOW_STEP_SECONDS": "0.05",
            "ORDERFLOW_FAILURE_RATE": "0",
            "ORDERFLOW_ACK_WAIT": "2",
            "ORDERFLOW_LEASE_SECONDS": "3",
        }
        self.env = env
        self.child = Child("up", argv, env=env, log_path=folder / "up.log", cwd=folder)
        self.descendants: set[int] = set()

    def output(self) -> str:
        return "\n".join(self.child.log_lines())

    def admin_token(self) -> str:
        return (self.data_dir / ADMIN_TOKEN_FILE).read_text().strip()

    def client(self) -> httpx.AsyncClient:
        """A client of up's api presenting the admin token up keeps."""
        headers = {"Authorization": f"Bearer {self.admin_token()}"}
        return httpx.AsyncClient(base_url=self.api_url, timeout=5.0, headers=headers)

    async def wait_output(self, pattern: str, within: float = 30.0) -> re.Match[str]:
        """The first match of ``pattern`` in what up printed; fail early if up exited."""

        async def probe() -> re.Match[str] | None:
            found = re.search(pattern, self.output())
            if found is None:
                assert self.child.alive, f"up exited {self.child.returncode}:\n{self.output()}"
            return found

        return await wait_for(probe, within, interval=0.1)

    async def banner(self) -> dict[str, str]:
        """``api``, ``console``, ``broker``, ``monitor``, ``nodes``, ``catalog``, ``payments`` and
        ``token`` (each line's first word), ``catalog line``, ``token line`` and ``try`` (whole
        lines), and ``body`` (the suggested order's, when there is one)."""
        await self.wait_output("Ctrl-C stops everything", START_WITHIN)
        lines = self.output().splitlines()
        start = lines.index("orderflow is up")
        found = {m[1]: m[2] for line in lines[start:] if (m := _BANNER_LINE.match(line))}
        found["catalog line"] = next(line for line in lines if line.startswith("  catalog"))
        found["token line"] = next(line for line in lines[start:] if line.startswith("  token"))
        found["try"] = next(line for line in lines[start:] if line.startswith("try: "))
        found["admin line"] = next(line for line in lines[start:] if line.startswith("  admin"))
        body = _CURL_BODY.search(self.output())
        return {**found, "body": body[1] if body else ""}

    def remember_children(self) -> None:
        """Note up's child pids (broker, api, nodes) to check none outlives it."""
        self.descendants |= children_of(self.child.pid)

    def stop(self) -> int:
        """SIGTERM up; whatever it leaves behind is killed (and reported by the caller)."""
        self.remember_children()
        code = self.child.stop(grace=60.0)
        for pid in pids_alive(self.descendants):
            os.kill(pid, signal.SIGKILL)
        return code


@pytest.fixture
def monitor_port_taken() -> Iterator[None]:
    """A listener on 8222, as a second ``up`` or a local NATS would hold it (if nothing else
    already does)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", MONITOR_PORT))
            sock.listen()
        except OSError:
            pass  # taken already: the condition under test holds anyway
        yield


@pytest.fixture
async def up(tmp_path: Path, monitor_port_taken: None) -> AsyncIterator[Up]:
    process = Up(tmp_path, nodes=2)
    try:
        yield process
    finally:
        await asyncio.to_thread(process.stop)


async def cluster_pids(http: httpx.AsyncClient) -> set[int]:
    """Node pids from ``GET /cluster`` (heartbeats carry them); the api must answer."""
    response = await http.get("/cluster")
    assert response.status_code == 200, response.text
    return {node["pid"] for node in response.json()["nodes"]}


async def order_completes(http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """Submit ``body`` (once the api's broker link is up); the order's final document."""

    async def submitted() -> str | None:
        response = await http.post("/orders", json=body)
        if response.status_code == 503:  # the api's broker link is still coming up
            return None
        assert response.status_code == 202, response.text
        order_id: str = response.json()["order_id"]
        return order_id

    order_id = await wait_for(submitted, 20.0, interval=0.2)

    async def completed() -> dict[str, Any] | None:
        order: dict[str, Any] = (await http.get(f"/orders/{order_id}")).json()
        assert order["status"] != "failed", order["failure"]
        return order if order["status"] == "completed" else None

    return await wait_for(completed, 30.0, interval=0.1)


async def test_up_serves_and_restarts_a_killed_node(up: Up) -> None:
    banner = await up.banner()
    assert banner["api"] == up.api_url
    assert banner["console"] == f"{up.api_url}/console/"
    assert banner["broker"].startswith("nats://127.0.0.1:")
    assert banner["nodes"] == "2"
    monitor = banner["monitor"]
    assert not monitor.endswith(f":{MONITOR_PORT}"), "8222 is taken: up must pick another"
    async with httpx.AsyncClient(timeout=5.0) as plain:
        assert (await plain.get(f"{monitor}/healthz")).status_code == 200

    assert banner["catalog line"] == (
        f"  catalog  {len(DEMO_CATALOG)} demo products loaded into the empty catalog "
        "(--no-demo skips)"
    )
    assert banner["payments"] == f"{up.api_url}/sim/payments"
    # The first admin token: made now, shown this once, kept private.
    kept = up.data_dir / ADMIN_TOKEN_FILE
    assert (kept.stat().st_mode & 0o777) == 0o600
    assert banner["token"] == up.admin_token()
    assert banner["token line"].endswith(f"(admin; shown this once, kept in {kept}, mode 0600)")
    assert up.output().count(up.admin_token()) == 1  # in no log line of the api or the nodes
    async with httpx.AsyncClient(base_url=up.api_url, timeout=5.0) as anonymous:
        assert (await anonymous.get("/cluster")).status_code == 401
        console = await anonymous.get(banner["console"])  # the console asks for a login
        assert (console.status_code, console.headers["location"]) == (303, "/console/login")
    # The suggested curl works as printed, in a shell.
    command = banner["try"].removeprefix("try: ")
    assert f'-H "Authorization: Bearer $(cat {kept})"' in command

    async def curl_accepted() -> dict[str, Any] | None:
        done = await asyncio.to_thread(
            subprocess.run, ["bash", "-c", command], capture_output=True, text=True, check=False
        )
        answer: dict[str, Any] = json.loads(done.stdout) if done.stdout.startswith("{") else {}
        return answer if answer.get("status") == "accepted" else None

    await wait_for(curl_accepted, 20.0, interval=0.2)
    body = json.loads(banner["body"])
    demo = {item.product_id: item for item in DEMO_CATALOG}
    [line] = body["items"]
    assert body["amount"] == str(demo[line["product_id"]].price * line["quantity"])
    async with up.client() as http:
        order = await order_completes(http, body)
        # Paid at the gateway the api hosts, its verdict signed with the secret up generated.
        assert (order["payment"]["status"], order["payment"]["amount"]) == (
            "captured", body["amount"],
        )  # fmt: skip
        assert order["items"][0]["unit_price"] == body["amount"]
        products = (await http.get("/products", params={"limit": 500})).json()["products"]
        assert {p["product_id"] for p in products} == set(demo)
        pids = await wait_for(lambda: _exactly(http, 2), 30.0, interval=0.2)
        up.remember_children()
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)

        crash = rf"node-\d \(pid {victim}\) exited unexpectedly \(killed by SIGKILL\)"
        await up.wait_output(crash)
        await up.wait_output(r"node-\d restarted \(pid \d+\)")

        async def healed() -> set[int] | None:
            now = await cluster_pids(http)  # the api answers throughout
            return now if len(now) == 2 and victim not in now else None

        after = await wait_for(healed, 40.0, interval=0.2)
        assert len(after - pids) == 1, (pids, after)
        await order_completes(http, body)


async def _exactly(http: httpx.AsyncClient, count: int) -> set[int] | None:
    pids = await cluster_pids(http)
    return pids if len(pids) == count else None


async def test_sigterm_stops_everything_and_exits_0(tmp_path: Path) -> None:
    process = Up(tmp_path, 1, "--no-demo")
    try:
        banner = await process.banner()
        assert banner["catalog line"].split() == ["catalog", "empty:", *CATALOG_HINT.split()]
        assert banner["try"].startswith("try: load products")
        assert banner["body"] == ""
        async with process.client() as http:
            await wait_for(lambda: _exactly(http, 1), 30.0, interval=0.2)
        await _broker_is_locked(process, banner)
        process.remember_children()
        assert len(process.descendants) == 3, process.descendants  # broker, api, node
        process.child.signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.child.wait, 60.0)
        assert code == 0, process.output()
        assert pids_alive(process.descendants) == set()
        assert "orderflow stopped" in process.output()
        kept = process.data_dir / SECRETS_DIR
        assert (kept.stat().st_mode & 0o777) == 0o700
        for name in (*KEPT_SECRETS, *(f"nats-{role}" for role in ROLES), CONTEXT_FILE):
            secret = (kept / name).read_text().strip()
            assert ((kept / name).stat().st_mode & 0o777) == 0o600
            assert len(secret) >= 40
            assert secret not in process.output()  # never printed or logged
        context = json.loads((kept / CONTEXT_FILE).read_text())
        admin_password = (kept / "nats-admin").read_text().strip()
        assert (context["user"], context["password"]) == ("admin", admin_password)
        assert context["url"] == banner["broker"]
    finally:
        await asyncio.to_thread(process.stop)


CATALOG_HINT = "add products with orderflow catalog load FILE.json"


async def _broker_is_locked(process: Up, banner: dict[str, str]) -> None:
    """up's broker refuses an anonymous client; the banner's admin line works as printed."""
    anonymous = NATS()
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await anonymous.connect(banner["broker"], allow_reconnect=False, max_reconnect_attempts=1)
    await anonymous.close()
    export = re.search(r'export NATS_URL="[^"]+"', banner["admin line"])
    assert export is not None, banner["admin line"]
    assert "$(cat " in export[0]  # the password is read by the shell, never printed
    inspect = f"{export[0]}; {sys.executable} -m nodeapp inspect"
    done = await asyncio.to_thread(
        subprocess.run, ["bash", "-c", inspect], env=process.env, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ORDERS" in done.stdout


def test_secrets_are_generated_once_kept_private_and_the_environments_win(
    tmp_path: Path,
) -> None:
    folder = tmp_path / SECRETS_DIR
    first = kept_secret(folder, "payment_secret")
    assert kept_secret(folder, "payment_secret") == first  # a restart keeps it
    assert kept_secret(folder, "notify_secret") != first
    path = folder / "payment_secret"
    path.chmod(0o644)  # copied around by hand
    assert kept_secret(folder, "payment_secret") == first
    assert (path.stat().st_mode & 0o777) == 0o600

    given = load_settings({"ORDERFLOW_PAYMENT_SECRET": "from-the-env", "ORDERFLOW_API_PORT": "9"})
    settings = local_settings(given, tmp_path)
    assert settings.payment_secret == "from-the-env"
    assert settings.notify_secret == kept_secret(folder, "notify_secret")
    assert settings.api_url == "http://127.0.0.1:9"  # where nodes pay and verdicts go
    wildcard = local_settings(load_settings({"ORDERFLOW_API_HOST": "0.0.0.0"}), tmp_path)
    assert wildcard.api_url == "http://127.0.0.1:8000"


def test_the_monitor_port_follows_the_config_unless_it_is_taken(tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    port = free_port()
    conf.write_text(f"# http: 1234 (a comment)\nhttp_port: {port}\n")
    assert monitor_address(conf, "127.0.0.1") == Monitor("127.0.0.1", port, wanted=port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        moved = monitor_address(conf, "127.0.0.1")
    assert (moved.wanted, moved.port != port) == (port, True)
    conf.write_text("server_name: no-monitoring-line\n")
    assert monitor_address(conf, "127.0.0.1").wanted == MONITOR_PORT


def test_the_admin_token_is_made_once_and_the_environments_wins(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings, first = admin_token(load_settings({}), data)
    path = data / ADMIN_TOKEN_FILE
    assert (first.created, first.path, settings.admin_token) == (True, path, first.token)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert first.token in first.banner_line()
    assert first.token not in repr(first)
    again_settings, again = admin_token(load_settings({}), data)  # a later start
    assert (again.created, again_settings.admin_token) == (False, first.token)
    assert first.token not in again.banner_line()
    assert again.banner_line() == (
        f"  token    in {path}  (admin; CLI: export ORDERFLOW_TOKEN=$(cat {path}))"
    )
    assert again.curl_header() == f'-H "Authorization: Bearer $(cat {path})"'

    given = load_settings({"ORDERFLOW_ADMIN_TOKEN": "e" * 40})
    kept, from_env = admin_token(given, tmp_path / "other")
    assert (kept.admin_token, from_env.path, from_env.created) == ("e" * 40, None, False)
    assert not (tmp_path / "other" / ADMIN_TOKEN_FILE).exists()
    assert from_env.curl_header() == '-H "Authorization: Bearer $ORDERFLOW_ADMIN_TOKEN"'
    assert "e" * 40 not in from_env.banner_line()
