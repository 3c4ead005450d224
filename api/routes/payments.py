"""``POST /payments/callback``: the payment gateway's signed verdicts, recorded once.

The body is read raw: the signature covers the exact bytes (``nodeapp.core.signing``), so
nothing parses it before ``PaymentInbox`` has verified it. A missing, wrong or stale
(> 300 s) signature answers 401 problem+json and changes nothing; a valid duplicate answers
200 and changes nothing; a callback contradicting the recorded one answers 409. The route needs
no API token (the signature is its authentication). ``api.problems`` maps ``BadSignature``
and ``PaymentConflict`` as it maps every error.

The app provides the inbox as the dependency ``payment_inbox``; ``inbox_dependency`` builds it::

    inbox = PaymentInbox(LazyBucket(link.jetstream, payments_bucket_config(s)).get,
                         s.payment_secret)
    Litestar(..., dependencies=inbox_dependency(inbox))
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec
from litestar import Response, post
from litestar.di import NamedDependency, Provide
from litestar.params import HeaderParameter

from api.responses import AnyRequest, json_response
from api.routes.openapi import (
    BROKER_DOWN,
    MALFORMED,
    OPTIONAL_STRING,
    checked_query,
    json_spec,
    problem_spec,
    raw_json_body,
)
from nodeapp.core.signing import SIGNATURE_HEADER
from nodeapp.shop.callbacks import PaymentInbox
from nodeapp.shop.payment_messages import CALLBACK_PATH, MAX_BODY_BYTES, PaymentCallback

PAYMENT_INBOX: Final = "payment_inbox"
# Optional to Litestar: a missing signature is the inbox's 401, like a wrong one.
Signature = Annotated[
    str | None,
    HeaderParameter(
        name=SIGNATURE_HEADER,
        description="`t=<unix seconds>,v1=<hex HMAC-SHA256>`; without it the answer is 401",
        schema_extra=OPTIONAL_STRING,
    ),
]


class CallbackAnswer(msgspec.Struct, frozen=True):
    """What the gateway gets back: the verdict as recorded, and whether this was a repeat."""

    order_id: str
    status: str
    duplicate: bool


def inbox_dependency(inbox: PaymentInbox) -> dict[str, Provide]:
    """``Litestar(dependencies=...)`` entry providing ``inbox`` to the callback route."""

    def provide() -> PaymentInbox:
        return inbox

    return {PAYMENT_INBOX: Provide(provide, sync_to_thread=False)}


@post(
    CALLBACK_PATH,
    status_code=200,
    request_max_body_size=MAX_BODY_BYTES,
    operation_class=raw_json_body(PaymentCallback, "The gateway's verdict, as signed"),
    summary="Payment gateway callback",
    description=(
        f"The gateway's verdict on an authorization, signed in the {SIGNATURE_HEADER} header "
        '(`t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`, at most 300 s '
        "away from now). Recorded once per order; a repeat saying the same is answered 200."
    ),
    responses=checked_query(
        {
            200: json_spec(CallbackAnswer, "Recorded (or already recorded with the same verdict)"),
            400: MALFORMED,
            401: problem_spec("Missing, malformed, wrong or stale signature; nothing recorded"),
            409: problem_spec("Contradicts the verdict already recorded for that order"),
            413: problem_spec("Body over 8 KiB"),
            422: problem_spec("Signed, but not a callback body"),
            503: BROKER_DOWN,
        }
    ),
)
async def payment_callback(
    request: AnyRequest,
    payment_inbox: NamedDependency[PaymentInbox],
    signature: Signature = None,
) -> Response[bytes]:
    body = await request.body()
    recorded = await payment_inbox.record(body, signature)
    verdict = recorded.callback
    return json_response(CallbackAnswer(verdict.order_id, verdict.status, not recorded.created))
