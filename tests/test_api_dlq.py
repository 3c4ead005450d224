"""``GET /dlq`` and ``POST /dlq/{order_id}/replay`` over dead letters written the way nodes write
them (no node runs here, so nothing moves unless a test says so), and ``poison_at`` on submit."""

from __future__ import annotations

import httpx
import msgspec

from nodeapp.broker.resources import DLQ_STREAM, ORDERS_STREAM
from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import Order, WorkMessage, encode
from tests.support.api_fixtures import (
    assert_problem,
    order_body,
    running_api,
    wait_ready,
)
from tests.support.dead_letters import dead_letter
from tests.support.orders import submit

NO_DOCUMENT = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


async def test_list_pages_newest_first_and_replay_resumes_the_order(
    api: httpx.AsyncClient, broker: Handles
) -> None:
    first, second, third = [await submit(broker.intake) for _ in range(3)]
    await broker.js.purge_stream(ORDERS_STREAM)  # as the advisory handler deletes them
    for seq, order_id in enumerate((first, second, third), start=1):
        await dead_letter(broker, order_id, seq, mark=True)
    await dead_letter(broker, NO_DOCUMENT, 4, mark=False)

    page = (await api.get("/dlq", params={"limit": 3})).json()
    assert [d["order_id"] for d in page["dead_letters"]] == [NO_DOCUMENT, third, second]
    assert page["total"] == 4
    assert page["next_before"] == 2
    newest = page["dead_letters"][1]
    assert newest["reason"] == "max deliveries reached (3)"
    assert (newest["deliveries"], newest["stream_seq"], newest["seq"]) == (3, 3, 3)
    assert newest["subject"] == f"orders.dlq.{third}"
    assert newest["time"].endswith("Z")
    rest = (await api.get("/dlq", params={"limit": 3, "before": 2})).json()
    assert [d["order_id"] for d in rest["dead_letters"]] == [first]
    assert rest["next_before"] is None

    response = await api.post(f"/dlq/{second}/replay")
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/orders/{second}"
    assert response.json() == {
        "order_id": second,
        "status": "accepted",
        "current_step": "Scheduling",
        "dead_letter_seq": 2,
    }
    order = await broker.store.get(second)
    assert order.dead_letter is None
    work = await broker.js.get_msg(ORDERS_STREAM, subject="orders.work")
    assert work.data == encode(WorkMessage(second))
    assert work.headers is not None
    assert work.headers["Nats-Msg-Id"] == f"{second}:replay:2"
    # Its entry is gone; the page walks over the gap.
    listed = (await api.get("/dlq")).json()
    assert [d["order_id"] for d in listed["dead_letters"]] == [NO_DOCUMENT, third, first]
    assert listed["total"] == 3
    assert_problem(await api.post(f"/dlq/{second}/replay"), 404)


async def test_replay_refuses_what_cannot_resume(api: httpx.AsyncClient, broker: Handles) -> None:
    finished = await submit(broker.intake)
    await dead_letter(broker, finished, 1, mark=True)

    def complete(order: Order) -> bool:
        order.status = "completed"
        return True

    await broker.store.modify(finished, complete)
    await dead_letter(broker, NO_DOCUMENT, 2, mark=False)

    problem = assert_problem(await api.post(f"/dlq/{finished}/replay"), 409)
    assert problem["detail"] == f"order {finished} cannot be replayed: it is already completed"
    assert problem["type"].endswith("/not-replayable")
    problem = assert_problem(await api.post(f"/dlq/{NO_DOCUMENT}/replay"), 409)
    assert "it has no order document" in problem["detail"]
    never = "01BX5ZZKBKACTAV9WEVGEMMVRY"
    problem = assert_problem(await api.post(f"/dlq/{never}/replay"), 404)
    assert problem["detail"] == f"no dead letter for order {never}"
    assert_problem(await api.post("/dlq/not-an-order/replay"), 404)
    # Refused replays change nothing.
    assert (await broker.js.stream_info(DLQ_STREAM)).state.messages == 2

    for bad in ({"limit": 0}, {"limit": 501}, {"limit": "x"}, {"before": 0}):
        problem = assert_problem(await api.get("/dlq", params=bad), 400)
        assert [e["field"] for e in problem["errors"]] == list(bad)


async def test_poison_at_is_checked_like_fail_at(
    api: httpx.AsyncClient, settings: Settings, broker: Handles
) -> None:
    accepted = await api.post("/orders", json=order_body(poison_at="Processing"))
    assert accepted.status_code == 202, accepted.text
    order = (await api.get(accepted.headers["location"])).json()
    assert order["poison_at"] == "Processing"
    nowhere = await api.post("/orders", json=order_body(poison_at="Nowhere"))
    assert_problem(nowhere, 422, "poison_at")

    off = msgspec.structs.replace(settings, fault_injection=False)
    async with running_api(off) as client:
        await wait_ready(client)
        problem = assert_problem(
            await client.post("/orders", json=order_body(poison_at="Processing")), 422, "poison_at"
        )
    assert "fault injection is disabled" in problem["detail"]


async def test_openapi_documents_the_dlq_routes(api: httpx.AsyncClient) -> None:
    paths = (await api.get("/schema/openapi.json")).json()["paths"]
    assert set(paths["/dlq/{order_id}/replay"]["post"]["responses"]) >= {"202", "404", "409"}
    parameters = {p["name"] for p in paths["/dlq"]["get"]["parameters"]}
    assert parameters == {"limit", "before"}
