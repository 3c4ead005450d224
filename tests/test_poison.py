"""A real poison order: every node that reaches its step dies (``poison_at``, exit 70), a
supervisor restarts them, and after ``max_deliver`` deliveries the order is dead-lettered; once
the cause is removed, a replay (over the api, and with the CLI) completes it. Real processes
throughout: nats-server, ``python -m api``, ``orderflow node`` and the ``orderflow`` CLI."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from nodeapp.broker.resources import DLQ_PREFIX, DLQ_STREAM, ORDERS_STREAM
from nodeapp.core.settings import Settings, settings_env
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import DeadLetterMark, Order
from nodeapp.worker.steps import POISON_EXIT_CODE
from tests.support.api_fixtures import order_body
from tests.support.cli import Cli
from tests.support.invariants import assert_history_sane
from tests.support.orders import wait_terminal
from tests.support.processes import NodeProcess, NodeProcesses
from tests.support.services import ApiProcess
from tests.support.waiting import wait_for

MAX_DELIVER = 3
NODES = 2


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The lease (1.5 s) ends before the ack wait (2 s): each redelivery is taken over at once
    and crashes its node, rather than deferred to a dead node's lease."""
    return msgspec.structs.replace(
        settings,
        ack_wait=2.0,
        lease_seconds=1.5,
        max_deliver=MAX_DELIVER,
        payment_secret="poison-test-payment-secret",  # the api's gateway signs its callbacks
    )


class Supervisor:
    """Keeps ``NODES`` node processes running, as systemd or compose would; records exits."""

    def __init__(self, procs: NodeProcesses) -> None:
        self.procs = procs
        self.exits: list[int] = []
        self.current: dict[int, NodeProcess] = {}
        self._stopping = False

    async def _keep(self, slot: int) -> None:
        generation = 0
        while not self._stopping:
            node = self.procs.start(f"node-{slot}-{generation}")
            self.current[slot] = node
            code = await asyncio.to_thread(node.proc.wait)
            if not self._stopping:
                self.exits.append(code)
            generation += 1

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Supervisor]:
        tasks = [asyncio.create_task(self._keep(slot)) for slot in range(NODES)]
        try:
            yield self
        finally:
            self._stopping = True
            for node in self.current.values():
                node.signal(signal.SIGKILL)
            await asyncio.gather(*tasks)


@pytest.fixture
async def api(settings: Settings, broker: Handles, tmp_path: Path) -> AsyncIterator[ApiProcess]:
    process = ApiProcess(settings, tmp_path / "api.log")
    try:
        await process.wait_ready()
        yield process
    finally:
        process.stop()


async def wait_parked(broker: Handles, order_id: str, within: float) -> Order:
    async def probe() -> Order | None:
        order = await broker.store.get(order_id)
        return order if order.dead_letter is not None else None

    return await wait_for(probe, within)


async def test_poison_orders_are_dead_lettered_then_replayed(
    settings: Settings, broker: Handles, node_processes: NodeProcesses, api: ApiProcess
) -> None:
    cli = Cli({**os.environ, **settings_env(settings), "ORDERFLOW_API_URL": api.url})
    # The nodes pay at the gateway this api hosts.
    node_processes.settings = msgspec.structs.replace(settings, api_url=api.url)
    async with (
        api.client() as http,  # the settings' admin token, as the CLI's environment carries
        Supervisor(node_processes).running() as supervisor,
    ):
        response = await http.post("/orders", json=order_body(poison_at="Scheduling"))
        assert response.status_code == 202, response.text
        submitted = await cli(
            "order", "submit", "--customer", "c-1", "--item", "sku-1:1",
            "--poison-at", "Processing", "--json",
        )  # fmt: skip
        assert submitted.code == 0, submitted.err
        by_api, by_cli = response.json()["order_id"], submitted.json()["order_id"]
        ids = [by_api, by_cli]

        # Every delivery kills a node; the supervisor brings one back; JetStream gives up.
        for order_id in ids:
            parked = await wait_parked(broker, order_id, within=30)
            assert isinstance(parked.dead_letter, DeadLetterMark)
            assert parked.dead_letter.reason == f"max deliveries reached ({MAX_DELIVER})"
            assert parked.dead_letter.deliveries == MAX_DELIVER
            assert not parked.terminal
        assert supervisor.exits.count(POISON_EXIT_CODE) >= MAX_DELIVER
        assert set(supervisor.exits) == {POISON_EXIT_CODE}
        assert (await broker.js.stream_info(ORDERS_STREAM)).state.messages == 0
        for order_id in ids:
            entry = await broker.js.get_msg(DLQ_STREAM, subject=DLQ_PREFIX + order_id)
            assert entry.headers is not None
            assert entry.headers["Orderflow-Deliveries"] == str(MAX_DELIVER)

        listed = (await http.get("/dlq")).json()
        assert {d["order_id"] for d in listed["dead_letters"]} == set(ids)
        assert {d["deliveries"] for d in listed["dead_letters"]} == {MAX_DELIVER}
        table = await cli("dlq", "ls")
        assert table.code == 0, table.err
        assert table.out.splitlines()[0].split() == [
            "SEQ", "TIME", "ORDER", "DELIVERIES", "ORDERS", "SEQ", "REASON",
        ]  # fmt: skip
        assert all(order_id in table.out for order_id in ids)
        assert f"max deliveries reached ({MAX_DELIVER})" in table.out
        as_json = (await cli("dlq", "ls", "--json", "--limit", "1")).json()
        assert len(as_json["dead_letters"]) == 1
        assert as_json["next_before"] is not None

        # The cause is removed (a fix for the data), then each order is replayed.
        crashes = len(supervisor.exits)
        for order_id in ids:
            await broker.store.modify(order_id, _cure)
        replayed = await http.post(f"/dlq/{by_api}/replay")
        assert replayed.status_code == 202, replayed.text
        by_command = await cli("dlq", "replay", by_cli)
        assert by_command.code == 0, by_command.err
        assert by_command.out.startswith(f"order {by_cli} replayed: ")
        for order_id in ids:
            done = await wait_terminal(broker.store, order_id, within=20)
            assert done.status == "completed"
            assert done.dead_letter is None
            assert_history_sane(await broker.store.history(order_id))
        assert len(supervisor.exits) == crashes  # nothing crashed any more

        again = await cli("dlq", "replay", by_cli)
        assert again.code == 1
        assert again.err == f"orderflow dlq replay: no dead letter for order {by_cli}\n"
        empty = await cli("dlq", "ls")
        assert empty.out.strip().endswith("(no dead letters)")


def _cure(order: Order) -> bool:
    order.poison_at = None
    return True
