"""Screenshots of every console page for ``docs/console/``, from a real ``orderflow up``.

    .venv/bin/python -m tools.console_screenshots [--out docs/console]

Starts ``orderflow up`` (two nodes, 1 s steps, fault injection, a webhook receiver standing in
for e-mail) in a temporary folder on free ports, gives it something to show (orders of three
customers, one failed, one declined, one cancelled, one poisoned until it is dead-lettered, a
burst in flight), then opens the console URL the banner prints in headless Chromium, logs in
with the admin token ``up`` made, and saves ``login.png``, ``orders.png``, ``order.png``,
``cluster.png``, ``dead-letters.png`` and ``products.png``. ``up`` is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
from playwright.async_api import Page, ViewportSize, async_playwright

from nodeapp.local.natsserver import free_port
from nodeapp.local.supervisor import Child, python_module
from nodeapp.security.bootstrap import ADMIN_TOKEN_FILE

CHROMIUM: Final = os.environ.get("ORDERFLOW_CHROMIUM", "/usr/bin/chromium")
VIEWPORT: Final = ViewportSize(width=1360, height=760)
FINISHED: Final = frozenset({"completed", "failed", "cancelled"})
CONSOLE_LINE: Final = re.compile(r"^  console\s+(\S+)", re.MULTILINE)
UP_ENV: Final = {
    # A poisoned order reaches its dead letter in seconds: deliveries run out fast.
    "ORDERFLOW_ACK_WAIT": "2",
    "ORDERFLOW_LEASE_SECONDS": "1.5",
    "ORDERFLOW_MAX_DELIVER": "2",
    "ORDERFLOW_LOG_FORMAT": "json",
}
T = TypeVar("T")


class Receiver(BaseHTTPRequestHandler):
    """A webhook that takes every notification (204), so they show as delivered."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the script prints what it does."""


@contextlib.contextmanager
def webhook() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        thread.join()


async def eventually(probe: Callable[[], Awaitable[T | None]], within: float, what: str) -> T:
    """``probe``'s first truthy answer; ``SystemExit`` naming ``what`` after ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if found := await probe():
            return found
        await asyncio.sleep(0.2)
    raise SystemExit(f"console_screenshots: {what} not within {within:g}s")


@contextlib.asynccontextmanager
async def orderflow_up(data: Path, hook: str) -> AsyncIterator[tuple[str, str]]:
    """``orderflow up`` running; yields the console URL its banner prints and the token."""
    argv = python_module(
        "nodeapp", "up", "--nodes", "2", "--step-seconds", "1", "--fault-injection",
        "--data-dir", str(data / "data"), "--port", str(free_port()),
        "--api-port", str(free_port()),
    )  # fmt: skip
    env = {**os.environ, **UP_ENV, "ORDERFLOW_NOTIFY_WEBHOOK": hook}
    up = Child("up", argv, env=env, log_path=data / "up.log")
    try:

        async def banner() -> str | None:
            printed = "\n".join(up.log_lines())
            if not up.alive:
                raise SystemExit(f"orderflow up exited {up.returncode}:\n{up.log_tail()}")
            found = CONSOLE_LINE.search(printed)
            return found[1] if found else None

        url = await eventually(banner, 60, "orderflow up's banner")
        token = (data / "data" / ADMIN_TOKEN_FILE).read_text().strip()
        print(f"orderflow up: console at {url}")
        yield url, token
    finally:
        await asyncio.to_thread(up.stop, 60)


async def submit(http: httpx.AsyncClient, customer: str, *items: str, **extra: Any) -> str:
    lines = [{"product_id": p, "quantity": 1 + i % 3} for i, p in enumerate(items)]
    answer = await http.post("/orders", json={"customer_id": customer, "items": lines, **extra})
    answer.raise_for_status()
    order_id: str = answer.json()["order_id"]
    return order_id


async def status(http: httpx.AsyncClient, order_id: str) -> dict[str, Any]:
    order: dict[str, Any] = (await http.get(f"/orders/{order_id}")).json()
    return order


async def populate(http: httpx.AsyncClient) -> str:
    """Orders of three customers with every ending, all finished; the id of a completed one
    whose notification was delivered."""
    shown = await submit(http, "c-ada", "sku-1", "sku-2", contact={"email": "ada@example.com"})
    ids = [shown]
    for n in range(9):
        ids.append(await submit(http, ("c-ada", "c-bob", "c-cy")[n % 3], f"sku-{1 + n % 6}"))
    ids.append(await submit(http, "c-bob", "sku-3", fail_at="Processing"))
    ids.append(await submit(http, "c-cy", "sku-5", payment_token="tok_decline_demo"))
    ids.append(cancelled := await submit(http, "c-bob", "sku-4"))
    (await http.post(f"/orders/{cancelled}/cancel")).raise_for_status()

    async def all_done() -> bool:
        notes = (await http.get(f"/orders/{shown}/notifications")).json()["notifications"]
        delivered = any(n["state"] == "delivered" for n in notes)
        return delivered and await finished(http, ids)

    await eventually(all_done, 60, "the orders finishing")
    return shown


async def finished(http: httpx.AsyncClient, ids: list[str]) -> bool:
    return all([(await status(http, i))["status"] in FINISHED for i in ids])


async def in_flight(http: httpx.AsyncClient) -> list[str]:
    """A burst of orders, submitted once the cluster's nodes report some in flight."""
    burst = [await submit(http, ("c-ada", "c-bob")[n % 2], f"sku-{1 + n % 6}") for n in range(40)]

    async def busy() -> bool:
        return bool((await http.get("/cluster")).json()["in_flight"])

    await eventually(busy, 10, "nodes reporting orders in flight")
    return burst


async def poison(http: httpx.AsyncClient) -> None:
    """An order that kills every node reaching its first step, until it is dead-lettered
    (submitted alone, so no other order loses deliveries to the crashes)."""
    poisoned = await submit(http, "c-cy", "sku-6", poison_at="Scheduling")

    async def parked() -> bool:
        return bool((await status(http, poisoned)).get("dead_letter"))

    await eventually(parked, 90, "the poisoned order's dead letter")


async def shoot(page: Page, path: str, out: Path, name: str) -> None:
    await page.goto(path)
    await page.wait_for_load_state("networkidle")
    await page.screenshot(path=str(out / name), full_page=True)
    print(f"  {out / name}")


async def run(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="orderflow-shots-") as folder, webhook() as hook:
        async with orderflow_up(Path(folder), hook) as (url, token), async_playwright() as pw:
            base = url.removesuffix("/console/")
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as http:
                browser = await pw.chromium.launch(executable_path=CHROMIUM)
                context = await browser.new_context(base_url=base, viewport=VIEWPORT)
                page = await context.new_page()
                await shoot(page, "/console/login", out, "login.png")
                await page.fill("#token", token)
                await page.click("button[type=submit]")
                await page.wait_for_url("**/console/")
                shown = await populate(http)
                await shoot(page, "/console/orders", out, "orders.png")
                await shoot(page, f"/console/orders/{shown}", out, "order.png")
                await shoot(page, "/console/products", out, "products.png")
                burst = await in_flight(http)
                await shoot(page, "/console/cluster", out, "cluster.png")
                await eventually(lambda: finished(http, burst), 60, "the burst finishing")
                await poison(http)
                await shoot(page, "/console/dlq", out, "dead-letters.png")
                await browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("docs/console"), help="PNG folder")
    out: Path = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    asyncio.run(run(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
