"""Locust load on a running orderflow api: each user submits an order and follows it to its end.

Against the all-in-one (any free ports; steps shortened so orders finish within a run)::

    orderflow up --port 4333 --api-port 8000 --data-dir /tmp/of --step-seconds 0.2
    locust -f benchmarks/locustfile.py --headless -u 50 -r 10 -t 30s --host http://127.0.0.1:8000

Requests are grouped as "POST /orders" and "GET /orders/{id}"; two more rows time whole orders
from submit to the terminal state seen by polling ("order completed", "order failed"; a failed
order is a business outcome, not an error). An order not terminal within
``ORDERFLOW_LOCUST_DEADLINE`` seconds (default 60) is given up and counted as a failure of
"order deadline", so every user's loop ends by itself.
"""

from __future__ import annotations

import os
import random
import string
import time
from typing import Any, Final

from locust import HttpUser, between, task

ID_ALPHABET: Final = string.ascii_letters + string.digits + "._:-"  # ^[A-Za-z0-9._:-]{1,64}$
POLL_SECONDS: Final = float(os.environ.get("ORDERFLOW_LOCUST_POLL", "0.25"))
ORDER_DEADLINE: Final = float(os.environ.get("ORDERFLOW_LOCUST_DEADLINE", "60"))
TERMINAL: Final = frozenset({"completed", "failed"})


def random_id(rng: random.Random) -> str:
    """An id of 1-64 characters from the whole allowed alphabet, so validation is exercised."""
    return "".join(rng.choices(ID_ALPHABET, k=rng.randint(1, 64)))


def random_order(rng: random.Random) -> dict[str, Any]:
    items = [
        {"product_id": random_id(rng), "quantity": rng.randint(1, 10_000)}
        for _ in range(rng.randint(1, 5))
    ]
    order: dict[str, Any] = {"customer_id": random_id(rng), "items": items}
    if rng.random() < 0.5:
        order["amount"] = f"{rng.randint(0, 1_000_000)}.{rng.randint(0, 99):02d}"
    return order


class OrderUser(HttpUser):
    """Submit, then poll ``Location`` until the order is completed or failed (or the deadline)."""

    wait_time = between(0.0, 0.5)

    def on_start(self) -> None:
        self.rng = random.Random()

    @task
    def submit_and_follow(self) -> None:
        started = time.monotonic()
        order_id = self._submit()
        if order_id is None:
            return
        deadline = started + ORDER_DEADLINE
        while time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)  # locust runs on gevent: this yields to other users
            status = self._status(order_id)
            if status in TERMINAL:
                self._record(f"order {status}", started, None)
                return
        self._record("order deadline", started, TimeoutError(f"{order_id} not terminal"))

    def _submit(self) -> str | None:
        with self.client.post(
            "/orders", json=random_order(self.rng), name="POST /orders", catch_response=True
        ) as response:
            if response.status_code != 202:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return None
            order_id: str = response.json()["order_id"]
            return order_id

    def _status(self, order_id: str) -> str | None:
        with self.client.get(
            f"/orders/{order_id}", name="GET /orders/{id}", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return None
            status: str = response.json()["status"]
            return status

    def _record(self, name: str, started: float, error: Exception | None) -> None:
        """Time a whole order as its own row of locust's statistics."""
        self.environment.events.request.fire(
            request_type="ORDER",
            name=name,
            response_time=(time.monotonic() - started) * 1000,
            response_length=0,
            exception=error,
            context={},
        )
