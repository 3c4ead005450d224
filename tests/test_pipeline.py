"""The order's life on one node: completion, forced failures and rollback, the failure rate."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import STEP_NAMES, Order
from tests.support.nodes import running_node
from tests.support.orders import submit, wait_all_terminal, wait_terminal


def assert_completed(order: Order) -> None:
    assert order.status == "completed"
    assert order.current_step == "Completed"
    assert order.failure is None
    assert order.complete_time is not None
    previous_complete = order.start_time
    for step in order.steps:
        assert step.status == "completed"
        assert step.start_time is not None
        assert step.complete_time is not None
        assert step.start_time <= step.complete_time
        assert step.start_time >= previous_complete
        assert step.rollback_time is None
        assert step.attempt == 1
        previous_complete = step.complete_time
    assert order.complete_time >= previous_complete


async def test_order_completes_with_every_step_timed(settings: Settings, broker: Handles) -> None:
    async with running_node(settings):
        order_id = await submit(broker.intake)
        order = await wait_terminal(broker.store, order_id)
    assert_completed(order)
    assert [s.name for s in order.steps] == list(STEP_NAMES)
    assert {s.node_id for s in order.steps} == {"test-node"}
    assert order.owner is not None
    assert order.owner.epoch == 1
    assert order.attempts == 1


@pytest.mark.parametrize("fail_at", STEP_NAMES)
async def test_forced_failure_rolls_back_in_reverse(
    settings: Settings, broker: Handles, fail_at: str
) -> None:
    async with running_node(settings):
        order_id = await submit(broker.intake, fail_at=fail_at)
        order = await wait_terminal(broker.store, order_id)
    failed_index = STEP_NAMES.index(fail_at)
    assert order.status == "failed"
    assert order.current_step == "Failed"
    assert order.failure is not None
    assert order.failure.step == fail_at
    assert "injected" in order.failure.reason
    done = order.steps[: failed_index + 1]
    for step in order.steps[:failed_index]:
        assert step.status == "rolled_back"
    assert order.steps[failed_index].status == "failed"
    for step in order.steps[failed_index + 1 :]:
        assert step.status == "pending"
        assert step.start_time is None
        assert step.rollback_time is None
    rollbacks = [s.rollback_time for s in done]
    assert all(t is not None for t in rollbacks)
    # Compensation runs latest first: rollback times descend with the step index.
    assert rollbacks == sorted(rollbacks, reverse=True)  # type: ignore[type-var]
    failed_rollback = order.steps[failed_index].rollback_time
    assert failed_rollback is not None
    assert failed_rollback >= order.failure.time
    assert order.complete_time is not None
    assert order.complete_time >= max(t for t in rollbacks if t is not None)


async def test_failure_rate_is_honoured(settings: Settings, broker: Handles) -> None:
    rate, count = 0.05, 2000
    fast = msgspec.structs.replace(settings, step_seconds=0.0, failure_rate=rate)
    order_ids = list(await asyncio.gather(*(submit(broker.intake) for _ in range(count))))
    async with running_node(fast):
        orders = await wait_all_terminal(broker.store, order_ids, within=120)
    failed = sum(o.status == "failed" for o in orders)
    expected = 1 - (1 - rate) ** 4  # ~0.185
    share = failed / count
    # Binomial sd at n=2000 is ~0.0087: five of them either side.
    assert expected - 0.045 < share < expected + 0.045, share
    for order in orders:
        if order.status == "failed":
            assert order.failure is not None
            assert "simulated" in order.failure.reason
        else:
            assert_completed(order)
