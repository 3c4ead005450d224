"""``/dlq``: the dead letters in ``ORDERS_DLQ``, and replaying one order's.

An operator lists what was dead-lettered and why, removes the cause (a fix deployed, bad data
corrected), then replays: the order resumes from where it stood
(``nodeapp.cluster.dead_letter_admin``).
"""

from __future__ import annotations

from typing import Annotated

from litestar import Response, get, post
from litestar.params import Parameter

from api.auth import requires
from api.broker_link import broker_link
from api.paths import DEAD_LETTER_REPLAY, DEAD_LETTERS, order_location
from api.responses import AnyRequest, json_response
from api.routes.openapi import (
    BEARER,
    BROKER_DOWN,
    MALFORMED,
    OrderId,
    guarded,
    json_spec,
    problem_spec,
)
from nodeapp.cluster.dead_letter_admin import (
    MAX_PAGE,
    DeadLetterPage,
    Replayed,
    list_dead_letters,
    replay,
)
from nodeapp.security.scopes import OPS


@get(
    DEAD_LETTERS,
    guards=[requires(OPS)],
    security=BEARER,
    summary="Dead letters",
    description=(
        "Entries of the stream `ORDERS_DLQ`, newest first: the order, why it was dead-lettered "
        "(`max deliveries reached (N)`, `no order document`, `undecodable work message: ...`), "
        "how often it had been delivered, its sequence in `ORDERS` and when. Pass "
        "`next_before` back as `before` for the next page."
    ),
    responses=guarded(
        {
            200: json_spec(DeadLetterPage, "A page of dead letters"),
            400: problem_spec("A bad limit or before"),
            503: BROKER_DOWN,
        },
        OPS,
    ),
)
async def get_dead_letters(
    request: AnyRequest,
    limit: Annotated[int, Parameter(ge=1, le=MAX_PAGE, description="entries per page")] = 50,
    before: Annotated[
        int | None, Parameter(ge=1, description="only entries with a lower sequence")
    ] = None,
) -> Response[bytes]:
    return json_response(await list_dead_letters(broker_link(request).jetstream(), limit, before))


@post(
    DEAD_LETTER_REPLAY,
    guards=[requires(OPS)],
    security=BEARER,
    status_code=202,
    summary="Replay a dead-lettered order",
    description=(
        "Clears the order's `dead_letter` mark (nothing else: it resumes from where it stood), "
        "publishes a fresh work message and removes the order's dead letter. Remove the cause "
        "first, or it comes back after `max_deliver` more deliveries."
    ),
    responses=guarded(
        {
            202: json_spec(Replayed, "The order is queued again"),
            400: MALFORMED,
            404: problem_spec("No dead letter for that order"),
            409: problem_spec("The order is finished, or has no document: nothing to resume"),
            503: BROKER_DOWN,
        },
        OPS,
    ),
)
async def replay_dead_letter(request: AnyRequest, order_id: OrderId) -> Response[bytes]:
    link = broker_link(request)
    replayed = await replay(link.jetstream(), link.store(), order_id)
    return json_response(replayed, status_code=202, headers={"Location": order_location(order_id)})
