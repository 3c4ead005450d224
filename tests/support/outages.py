"""Helpers for tests that lose a broker server under load: a submitter that rides through the
outage, a tracker of terminal orders, and the wait for every work message to be acked."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from nodeapp.core.errors import BrokerUnavailable, OrderNotFound
from nodeapp.orders.handles import Handles
from nodeapp.orders.intake import Intake
from nodeapp.orders.model import Order
from nodeapp.orders.store import OrderStore
from tests.support.orders import order_request
from tests.support.waiting import wait_for

T = TypeVar("T")


@contextlib.asynccontextmanager
async def running(work: Coroutine[Any, Any, T]) -> AsyncIterator[asyncio.Task[T]]:
    """Run ``work`` as a task during the body; cancel it (and wait for it) if still running."""
    task = asyncio.create_task(work)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: the body's own error, if any, is what the test shows


class Submitter:
    """Submits ``count`` orders, one every ``interval`` seconds, through ``intake``.

    Each order has its own Idempotency-Key; a submit refused with ``BrokerUnavailable`` is
    retried with the same key and body until accepted, so an outage neither loses an order nor
    makes a second one. ``accepted`` lists the order ids in submit order; ``retries`` counts the
    refused attempts.
    """

    def __init__(self, intake: Intake, count: int, interval: float, label: str = "o") -> None:
        self.intake = intake
        self.count = count
        self.interval = interval
        self.label = label
        self.accepted: list[str] = []
        self.retries = 0
        self.last_error: str | None = None

    async def run(self, within: float = 60.0) -> list[str]:
        deadline = time.monotonic() + within
        for index in range(self.count):
            self.accepted.append(await self._submit(index, deadline))
            await asyncio.sleep(self.interval)  # pacing the load, not waiting for a condition
        return self.accepted

    async def _submit(self, index: int, deadline: float) -> str:
        key = f"{self.label}-{index}"
        request = order_request(customer=f"c-{index}")
        while True:
            try:
                result = await self.intake.submit(request, idempotency_key=key)
            except BrokerUnavailable as exc:
                self.retries += 1
                self.last_error = f"{key}: {exc}"
                if time.monotonic() > deadline:
                    raise AssertionError(f"order {key} not accepted in time: {exc}") from exc
                await asyncio.sleep(0.2)  # retry pause while the broker recovers
                continue
            return result.order.order_id


class Terminals:
    """Tracks which orders have reached a terminal state, reading only those not yet there."""

    def __init__(self, store: OrderStore) -> None:
        self.store = store
        self.done: dict[str, Order] = {}

    async def poll(self, order_ids: Iterable[str]) -> int:
        """Read the orders not yet terminal; return how many are terminal now. An order or a
        read that the broker cannot serve right now counts as not terminal yet."""
        for order_id in [o for o in order_ids if o not in self.done]:
            try:
                order = await self.store.get(order_id)
            except (BrokerUnavailable, OrderNotFound):
                continue
            if order.terminal:
                self.done[order_id] = order
        return len(self.done)

    async def wait_count(
        self, order_ids: Callable[[], list[str]], at_least: int, within: float
    ) -> int:
        """Wait until ``at_least`` of the orders ``order_ids()`` names (a list that may grow
        meanwhile) are terminal."""

        async def probe() -> int | None:
            ids = order_ids()
            await self.poll(ids)
            count = sum(o in self.done for o in ids)
            return count if count >= at_least else None

        return await wait_for(probe, within, interval=0.25)

    async def wait_all(self, order_ids: list[str], within: float) -> list[Order]:
        async def probe() -> bool:
            return await self.poll(order_ids) == len(order_ids)

        try:
            await wait_for(probe, within, interval=0.25)
        except AssertionError as exc:
            stuck = {o: await _status(self.store, o) for o in order_ids if o not in self.done}
            raise AssertionError(f"{len(stuck)} orders not terminal: {stuck}") from exc
        return [self.done[o] for o in order_ids]


async def _status(store: OrderStore, order_id: str) -> str:
    try:
        order = await store.get(order_id)
    except (BrokerUnavailable, OrderNotFound) as exc:
        return type(exc).__name__
    owner = order.owner.node_id if order.owner else None
    return f"{order.status}/{order.current_step}/owner={owner}/dead_letter={order.dead_letter}"


async def wait_stream_empty(broker: Handles, stream: str, within: float = 30.0) -> None:
    """Wait until ``stream`` holds no message (for ``ORDERS``: every work message was acked)."""

    async def probe() -> bool:
        info = await broker.js.stream_info(stream)
        return info.state.messages == 0

    await wait_for(probe, within, interval=0.25)
