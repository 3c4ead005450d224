"""Payments end to end over real HTTP and a real nats-server: the simulated gateway (mounted as
the api mounts it), its signed callbacks into the api's ``POST /payments/callback`` route, the
``payments`` bucket, the node's ``PaymentClient`` and ``PaymentWaiter``.

One uvicorn server per test, in the test's event loop, serves a Litestar app with the gateway
router under ``/sim/payments`` and the callback route, with the api's own exception handlers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import msgspec
import pytest
from litestar import Litestar
from nats.js.kv import KeyValue

from api.problems import EXCEPTION_HANDLERS
from api.routes.payments import inbox_dependency, payment_callback
from nodeapp.core.errors import BrokerUnavailable
from nodeapp.core.settings import Settings
from nodeapp.core.shop_errors import (
    GatewayUnavailable,
    PaymentConflict,
    PaymentFenced,
    PaymentNotFound,
)
from nodeapp.core.signing import SIGNATURE_HEADER, sign
from nodeapp.local.natsserver import NatsServer, free_port
from nodeapp.orders.handles import Handles
from nodeapp.orders.model import Item, new_order, new_order_id, utcnow
from nodeapp.shop.callbacks import PaymentInbox, read
from nodeapp.shop.gateway import Gateway
from nodeapp.shop.gateway_app import create_gateway_app, gateway_router
from nodeapp.shop.gateway_ledger import LedgerEntry
from nodeapp.shop.payment_messages import (
    CALLBACK_PATH,
    AuthorizeRequest,
    CallbackStatus,
    PaymentCallback,
    encode,
)
from nodeapp.shop.payment_resources import (
    ensure_gateway_bucket,
    ensure_payments_bucket,
    fixed_bucket,
)
from nodeapp.shop.payments import PaymentClient
from nodeapp.shop.verdicts import PaymentWaiter
from nodeapp.worker.charges import Charges
from tests.support.serving import serving
from tests.support.waiting import wait_for

SECRET = "test-payment-secret"
AMOUNT = Decimal("12.50")
VERDICT_WITHIN = 10.0  # seconds a verdict may take on a loaded machine (it takes ~0.05 s)


class Shop(msgspec.Struct):
    """What a test drives: the client and waiter a node would hold, plus raw access."""

    settings: Settings
    url: str
    gateway: Gateway
    client: PaymentClient
    waiter: PaymentWaiter
    http: httpx.AsyncClient
    ledger: KeyValue
    payments: KeyValue


@pytest.fixture
async def shop(settings: Settings, broker: Handles) -> AsyncIterator[Shop]:
    """The api's payment half on a free port: the gateway under /sim/payments calling back the
    callback route, which records into ``payments``; a verdict takes 0.05 s."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    shop_settings = msgspec.structs.replace(
        settings, api_url=url, payment_secret=SECRET, payment_delay=0.05, payment_timeout=5.0
    )
    ledger = await ensure_gateway_bucket(broker.js, shop_settings)
    payments = await ensure_payments_bucket(broker.js, shop_settings)
    gateway = Gateway(shop_settings, fixed_bucket(ledger))
    inbox = PaymentInbox(fixed_bucket(payments), shop_settings.payment_secret)
    app = Litestar(
        route_handlers=[gateway_router(gateway), payment_callback],
        dependencies=inbox_dependency(inbox),
        lifespan=[gateway.lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        logging_config=None,
    )
    async with (
        serving(app, port),
        PaymentClient(shop_settings) as client,
        PaymentWaiter(broker.js, payments, shop_settings) as waiter,
        httpx.AsyncClient(base_url=url) as http,
    ):
        yield Shop(shop_settings, url, gateway, client, waiter, http, ledger, payments)


async def delivered(shop: Shop, order_id: str) -> LedgerEntry:
    """The ledger entry once its verdict's delivery is recorded (written after the POST)."""

    async def probe() -> LedgerEntry | None:
        entry = await shop.client.get(order_id)
        return entry if entry.delivered_at is not None else None

    return await wait_for(probe, within=VERDICT_WITHIN)


async def approved(shop: Shop, epoch: int = 1) -> str:
    """An order whose payment is authorized and whose verdict has been delivered."""
    order_id = new_order_id()
    await shop.client.authorize(order_id, AMOUNT, "tok_ok", epoch)
    verdict = await shop.waiter.wait(order_id, VERDICT_WITHIN)
    assert verdict is not None
    assert verdict.status == "approved"
    await delivered(shop, order_id)
    return order_id


async def test_approved_payment_end_to_end(shop: Shop) -> None:
    order_id = new_order_id()
    entry = await shop.client.authorize(order_id, AMOUNT, "tok_visa", epoch=1)
    assert (entry.status, entry.payment_id, entry.amount) == ("pending", order_id, AMOUNT)

    verdict = await shop.waiter.wait(order_id, VERDICT_WITHIN)
    assert verdict is not None
    assert (verdict.payment_id, verdict.order_id) == (order_id, order_id)
    assert (verdict.status, verdict.amount) == ("approved", AMOUNT)
    assert await read(shop.payments, order_id) == verdict  # recorded in bucket `payments`

    entry = await delivered(shop, order_id)
    assert (entry.status, entry.decision, entry.authorizations, entry.callbacks) == (
        "authorized", "approved", 1, 1,
    )  # fmt: skip
    captured = await shop.client.capture(order_id, epoch=1)
    assert (captured.status, captured.captures) == ("captured", 1)
    assert captured.captured_at is not None


async def test_declined_token_gets_a_declined_verdict_and_cannot_be_captured(shop: Shop) -> None:
    order_id = new_order_id()
    await shop.client.authorize(order_id, AMOUNT, "tok_decline_insufficient_funds", epoch=1)
    verdict = await shop.waiter.wait(order_id, VERDICT_WITHIN)
    assert verdict is not None
    assert verdict.status == "declined"
    entry = await delivered(shop, order_id)
    assert entry.status == "declined"

    with pytest.raises(PaymentConflict, match="cannot capture a declined payment"):
        await shop.client.capture(order_id, epoch=1)
    voided = await shop.client.void(order_id, epoch=1)  # the compensation: nothing held
    assert (voided.status, voided.voids, voided.captures) == ("declined", 0, 0)


async def test_silent_token_never_answers_so_the_waiter_times_out(shop: Shop) -> None:
    order_id = new_order_id()
    entry = await shop.client.authorize(order_id, AMOUNT, "tok_silent_network", epoch=1)
    assert entry.status == "pending"
    assert shop.gateway.pending == 0  # no verdict was even scheduled

    assert await shop.waiter.wait(order_id, 0.3) is None
    assert await read(shop.payments, order_id) is None
    assert shop.waiter.waiting == 0  # the timed-out wait left nothing behind

    voided = await shop.client.void(order_id, epoch=1)  # payment_timeout's compensation
    assert (voided.status, voided.voids, voided.callbacks) == ("voided", 1, 0)


async def test_repeated_authorize_charges_and_calls_back_once(shop: Shop) -> None:
    order_id = new_order_id()
    first, again = await asyncio.gather(
        shop.client.authorize(order_id, AMOUNT, "tok_ok", epoch=1),
        shop.client.authorize(order_id, AMOUNT, "tok_ok", epoch=1),
    )
    assert first.payment_id == again.payment_id == order_id
    assert await shop.waiter.wait(order_id, VERDICT_WITHIN) is not None
    entry = await delivered(shop, order_id)

    # A re-run of the step (a takeover: higher epoch) after the verdict: same payment.
    rerun = await shop.client.authorize(order_id, AMOUNT, "tok_ok", epoch=2)
    assert (rerun.status, rerun.authorizations, rerun.epoch) == ("authorized", 1, 2)
    assert shop.gateway.pending == 0  # nothing due, nothing scheduled
    assert (await shop.client.get(order_id)).callbacks == entry.callbacks == 1

    with pytest.raises(PaymentConflict, match=r"already authorized for 12\.50"):
        await shop.client.authorize(order_id, Decimal("99.00"), "tok_ok", epoch=2)


async def test_capture_void_refund_are_idempotent(shop: Shop) -> None:
    order_id = await approved(shop)
    for _ in range(3):
        entry = await shop.client.capture(order_id, epoch=1)
    assert (entry.status, entry.captures) == ("captured", 1)
    with pytest.raises(PaymentConflict, match="cannot void a captured payment"):
        await shop.client.void(order_id, epoch=1)
    for _ in range(3):
        entry = await shop.client.refund(order_id, epoch=1)
    assert (entry.status, entry.captures, entry.refunds) == ("refunded", 1, 1)
    with pytest.raises(PaymentConflict, match="cannot capture a refunded payment"):
        await shop.client.capture(order_id, epoch=1)

    other = await approved(shop)
    with pytest.raises(PaymentConflict, match="cannot refund a authorized payment"):
        await shop.client.refund(other, epoch=1)
    for _ in range(3):
        entry = await shop.client.void(other, epoch=1)
    assert (entry.status, entry.voids, entry.captures) == ("voided", 1, 0)
    with pytest.raises(PaymentConflict, match="cannot capture a voided payment"):
        await shop.client.capture(other, epoch=1)


async def test_a_lower_epoch_is_fenced(shop: Shop) -> None:
    order_id = await approved(shop, epoch=3)
    with pytest.raises(PaymentFenced) as fenced:
        await shop.client.capture(order_id, epoch=2)
    assert (fenced.value.epoch, fenced.value.current) == (2, 3)
    assert (await shop.client.get(order_id)).status == "authorized"  # nothing changed

    await shop.client.capture(order_id, epoch=4)  # a new owner raises the bar
    for stale in (shop.client.capture, shop.client.void, shop.client.refund):
        with pytest.raises(PaymentFenced):
            await stale(order_id, 3)  # even a no-op is refused to a stale owner
    with pytest.raises(PaymentFenced):
        await shop.client.authorize(order_id, AMOUNT, "tok_ok", epoch=3)
    entry = await shop.client.get(order_id)
    assert (entry.status, entry.epoch, entry.captures) == ("captured", 4, 1)

    answer = await shop.http.post(f"/sim/payments/{order_id}/refund", json={"epoch": 1})
    assert answer.status_code == 409
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["type"].endswith("/payment-fenced")


async def test_gateway_http_errors_are_problems(shop: Shop) -> None:
    missing = new_order_id()
    with pytest.raises(PaymentNotFound):
        await shop.client.capture(missing, epoch=1)
    for path in (f"/sim/payments/{missing}", "/sim/payments/not-an-order-id"):
        answer = await shop.http.get(path)
        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("application/problem+json")
    answer = await shop.http.post("/sim/payments/authorize", json={"order_id": missing})
    assert answer.status_code == 422
    assert {e["field"] for e in answer.json()["errors"]} == {"amount"}


async def test_unreachable_gateway_is_gateway_unavailable(settings: Settings) -> None:
    nowhere = msgspec.structs.replace(settings, payment_url=f"http://127.0.0.1:{free_port()}")
    async with PaymentClient(nowhere) as client:
        with pytest.raises(GatewayUnavailable) as caught:
            await client.authorize(new_order_id(), AMOUNT, "tok_ok", epoch=1)
    assert "127.0.0.1" not in str(caught.value)  # the path, never the URL


def signed_callback(
    order_id: str, status: CallbackStatus = "approved", *, now: float | None = None
) -> tuple[bytes, dict[str, str]]:
    """A callback body for ``order_id`` and its headers, signed as the gateway signs."""
    callback = PaymentCallback(
        payment_id=order_id, order_id=order_id, status=status, amount=AMOUNT, time=utcnow()
    )
    body = encode(callback)
    return body, {SIGNATURE_HEADER: sign(SECRET.encode(), body, now=now)}


async def test_bad_signatures_are_401_and_change_nothing(shop: Shop) -> None:
    order_id = new_order_id()
    body, good = signed_callback(order_id)
    stale = signed_callback(order_id, now=time.time() - 600)[1]
    wrong = {SIGNATURE_HEADER: sign(b"not-the-secret", body)}
    for headers in ({}, wrong, stale, {SIGNATURE_HEADER: "t=1,v1=zz"}):
        answer = await shop.http.post(CALLBACK_PATH, content=body, headers=headers)
        assert answer.status_code == 401, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert "www-authenticate" not in answer.headers
    assert (await shop.payments.status()).values == 0  # the bucket is untouched

    answer = await shop.http.post(CALLBACK_PATH, content=body + b" ", headers=good)
    assert answer.status_code == 401  # the body changed after signing
    assert await read(shop.payments, order_id) is None


async def test_valid_duplicate_is_harmless_and_a_contradiction_is_refused(shop: Shop) -> None:
    order_id = new_order_id()
    body, headers = signed_callback(order_id)
    first = await shop.http.post(CALLBACK_PATH, content=body, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json() == {"order_id": order_id, "status": "approved", "duplicate": False}
    revision = (await shop.payments.get(order_id)).revision

    again_body, again_headers = signed_callback(order_id)  # re-sent: a new time, re-signed
    again = await shop.http.post(CALLBACK_PATH, content=again_body, headers=again_headers)
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    replay = await shop.http.post(CALLBACK_PATH, content=body, headers=headers)
    assert replay.status_code == 200  # a replay inside the tolerance: harmless too

    contra_body, contra_headers = signed_callback(order_id, "declined")
    contra = await shop.http.post(CALLBACK_PATH, content=contra_body, headers=contra_headers)
    assert contra.status_code == 409
    assert (await shop.payments.get(order_id)).revision == revision  # never rewritten

    junk = b'{"order_id": "nope"}'
    answer = await shop.http.post(
        CALLBACK_PATH, content=junk, headers={SIGNATURE_HEADER: sign(SECRET.encode(), junk)}
    )
    assert answer.status_code == 422  # signed, but not a callback


async def test_waiter_sees_a_verdict_recorded_before_the_wait(shop: Shop) -> None:
    order_id = new_order_id()
    body, headers = signed_callback(order_id)
    assert (await shop.http.post(CALLBACK_PATH, content=body, headers=headers)).is_success
    verdict = await shop.waiter.wait(order_id, 0.01)
    assert verdict is not None
    assert verdict.status == "approved"


async def test_a_verdict_recorded_before_the_wait_starts_reaches_a_wait_listening_since(
    shop: Shop,
) -> None:
    """Pre-Processing listens before it authorizes (ADR 0020): the gateway answered "pending",
    so the verdict comes after the listening began; recorded before the wait itself starts, it
    is kept, found without a read of the key and without the deadline's last look."""
    order_id = new_order_id()
    with shop.waiter.expecting(order_id) as expected:
        entry = await shop.client.authorize(order_id, AMOUNT, "tok_ok", epoch=1)
        assert entry.status == "pending"
        await delivered(shop, order_id)  # recorded in `payments` before the wait starts
        verdict = await expected.verdict(VERDICT_WITHIN, maybe_recorded=False)
    assert verdict is not None
    assert verdict.status == "approved"
    assert (shop.waiter.found_late, shop.waiter.waiting) == (0, 0)


async def test_a_wait_told_nothing_was_recorded_reads_only_at_its_deadline(shop: Shop) -> None:
    """``maybe_recorded=False`` skips the first read: a verdict recorded before the listening
    began (which a "pending" answer rules out) is found only by the deadline's look, logged."""
    order_id = new_order_id()
    body, headers = signed_callback(order_id)
    assert (await shop.http.post(CALLBACK_PATH, content=body, headers=headers)).is_success
    with shop.waiter.expecting(order_id) as expected:
        verdict = await expected.verdict(0.2, maybe_recorded=False)
    assert verdict is not None
    assert verdict.status == "approved"
    assert shop.waiter.found_late == 1


async def test_a_rerun_of_pre_processing_reads_the_verdict_recorded_before_it(shop: Shop) -> None:
    """The step listens, then authorizes: a first run hears its verdict; a re-run (a takeover,
    a higher epoch) gets the decided payment from the gateway, so the verdict was recorded
    before it listened and is read at once, not found at the deadline (ADR 0020)."""
    order = new_order(new_order_id(), "c-1", [Item("p-1", 1, AMOUNT)], AMOUNT)
    order.payment_token = "tok_ok"
    charges = Charges(shop.client, shop.waiter, VERDICT_WITHIN)
    assert await charges.authorize(order, epoch=1) is None  # approved
    assert await charges.authorize(order, epoch=2) is None
    assert order.payment is not None
    assert order.payment.status == "authorized"
    assert (shop.waiter.found_late, shop.waiter.waiting) == (0, 0)


async def test_waiters_resolve_only_for_their_own_order(shop: Shop) -> None:
    mine, other = new_order_id(), new_order_id()
    waits = [asyncio.create_task(shop.waiter.wait(mine, VERDICT_WITHIN)) for _ in range(2)]

    async def both_waiting() -> bool:
        return shop.waiter.waiting == 1 and all(not w.done() for w in waits)

    await wait_for(both_waiting, within=5)
    await shop.client.authorize(other, AMOUNT, "tok_decline", epoch=1)
    await shop.client.authorize(mine, AMOUNT, "tok_ok", epoch=1)
    verdicts = await asyncio.gather(*waits)
    assert [v.status if v else None for v in verdicts] == ["approved", "approved"]
    assert (await shop.waiter.wait(other, VERDICT_WITHIN)) is not None


async def test_a_verdict_lost_with_its_process_is_sent_on_reauthorization(shop: Shop) -> None:
    """The gateway's tasks die with its process; the order's re-run re-authorizes and the
    gateway that answers it sends the verdict."""
    slow = msgspec.structs.replace(shop.settings, payment_delay=3600.0)
    order_id = new_order_id()
    async with Gateway(slow, fixed_bucket(shop.ledger)) as doomed:
        request = AuthorizeRequest(
            order_id=order_id, amount=AMOUNT, token="tok_ok", epoch=1,
            callback_url=shop.client.callback_url,
        )  # fmt: skip
        await doomed.authorize(request)
        assert doomed.pending == 1
    assert (await shop.client.get(order_id)).status == "pending"  # its verdict was lost

    await shop.client.authorize(order_id, AMOUNT, "tok_ok", epoch=2)
    verdict = await shop.waiter.wait(order_id, VERDICT_WITHIN)
    assert verdict is not None
    assert verdict.status == "approved"
    entry = await delivered(shop, order_id)
    assert (entry.authorizations, entry.callbacks) == (1, 1)


async def test_standalone_gateway_app_serves_the_same_contract(shop: Shop) -> None:
    """``orderflow payments``: the gateway alone at the root of its URL, its own connection."""
    port = free_port()
    standalone = msgspec.structs.replace(shop.settings, payment_url=f"http://127.0.0.1:{port}")
    async with serving(create_gateway_app(standalone), port), PaymentClient(standalone) as client:
        order_id = new_order_id()
        await client.authorize(order_id, AMOUNT, "tok_ok", epoch=1)
        verdict = await shop.waiter.wait(order_id, VERDICT_WITHIN)
        assert verdict is not None
        assert verdict.status == "approved"
        with pytest.raises(PaymentNotFound):
            await client.void(new_order_id(), epoch=1)


async def test_waiter_keeps_hearing_verdicts_across_a_broker_restart(
    shop: Shop, nats_server: NatsServer, broker: Handles
) -> None:
    """The waiter's consumer is gone with the restarted server's memory; nats-py re-creates it
    after missed heartbeats, and the verdict arrives through it, not through the last look."""
    await asyncio.to_thread(nats_server.stop)
    await asyncio.to_thread(nats_server.start)

    async def bucket_readable() -> bool:
        try:
            await read(shop.payments, new_order_id())
        except BrokerUnavailable:
            return False
        return True

    await wait_for(bucket_readable, within=30, interval=0.2)
    order_id = new_order_id()
    waiting = asyncio.create_task(shop.waiter.wait(order_id, 60))

    async def registered() -> bool:
        return shop.waiter.waiting == 1

    await wait_for(registered, within=10)
    body, headers = signed_callback(order_id)

    async def recorded() -> bool:
        answer = await shop.http.post(CALLBACK_PATH, content=body, headers=headers)
        return answer.status_code == 200

    await wait_for(recorded, within=30, interval=0.2)
    verdict = await waiting
    assert verdict is not None
    assert verdict.status == "approved"
    assert shop.waiter.found_late == 0


async def test_gateways_sharing_the_ledger_never_answer_from_a_stale_copy(shop: Shop) -> None:
    """Two processes hosting the gateway: each writes a payment's next change from the entry it
    wrote last, but only a landed write proves that copy current, so a higher epoch or a refund
    the other one recorded is always seen."""
    order_id = await approved(shop)  # authorized through the fixture's gateway, at epoch 1
    async with Gateway(shop.settings, fixed_bucket(shop.ledger)) as other:
        await other.capture(order_id, epoch=3)
        with pytest.raises(PaymentFenced) as fenced:  # its copy: authorized at epoch 1
            await shop.gateway.capture(order_id, epoch=2)
        assert (fenced.value.epoch, fenced.value.current) == (2, 3)
        await other.refund(order_id, epoch=3)
        with pytest.raises(PaymentConflict, match="cannot capture a refunded payment"):
            await shop.gateway.capture(order_id, epoch=3)  # its copy: captured, a no-op
    entry = await shop.client.get(order_id)
    assert (entry.status, entry.captures, entry.refunds) == ("refunded", 1, 1)


def approvable(order_id: str, api: Settings) -> AuthorizeRequest:
    """An authorization the gateway approves, its verdict for ``api``'s callback route."""
    return AuthorizeRequest(
        order_id=order_id, amount=AMOUNT, token="tok_ok", epoch=1,
        callback_url=api.api_url + CALLBACK_PATH,
    )  # fmt: skip


async def test_a_verdict_for_the_hosting_api_is_recorded_in_process(shop: Shop) -> None:
    """The api hosting the gateway hands verdicts for its own callback URL to its inbox: no
    server listens at that URL here, and the verdict is recorded all the same, through the
    inbox's signature check."""
    nowhere = msgspec.structs.replace(shop.settings, api_url=f"http://127.0.0.1:{free_port()}")
    inbox = PaymentInbox(fixed_bucket(shop.payments), SECRET)
    order_id = new_order_id()
    async with Gateway(nowhere, fixed_bucket(shop.ledger), inbox) as hosting:
        assert (await hosting.authorize(approvable(order_id, nowhere))).status == "pending"
        verdict = await shop.waiter.wait(order_id, VERDICT_WITHIN)
        assert verdict is not None
        assert (verdict.status, verdict.amount) == ("approved", AMOUNT)
        entry = await delivered(shop, order_id)
        assert (entry.status, entry.callbacks) == ("authorized", 1)
        assert (hosting.handed_over, hosting.callbacks_failed) == (1, 0)


async def test_an_in_process_verdict_the_inbox_refuses_is_not_retried(shop: Shop) -> None:
    """The hand-over meets the same checks as the route: signed with another secret than the
    inbox's, it is refused (the route's 401), recorded nowhere and given up at once."""
    nowhere = msgspec.structs.replace(shop.settings, api_url=f"http://127.0.0.1:{free_port()}")
    inbox = PaymentInbox(fixed_bucket(shop.payments), "not-the-gateway-secret")
    order_id = new_order_id()
    async with Gateway(nowhere, fixed_bucket(shop.ledger), inbox) as hosting:
        await hosting.authorize(approvable(order_id, nowhere))

        async def given_up() -> bool:
            return hosting.callbacks_failed == 1 and hosting.pending == 0

        await wait_for(given_up, within=VERDICT_WITHIN)
        assert hosting.handed_over == 0
    assert await read(shop.payments, order_id) is None
    entry = await shop.client.get(order_id)
    assert (entry.status, entry.callbacks, entry.delivered_at) == ("authorized", 0, None)
