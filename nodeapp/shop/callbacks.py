"""The api's payment inbox: verify a gateway callback, then record it in KV bucket ``payments``.

The record is written with ``create`` keyed by order id, so it is write-once: a valid duplicate
(the gateway retrying, or re-sending after a re-authorization) finds the key taken, says the
same thing, and changes nothing; a callback contradicting the recorded one (approved vs
declined, another amount) is refused and logged, since only a forgery or a broken gateway
could send it. The api never writes the order document: the owner node reads this record
(``PaymentWaiter``) and stays the order's only writer (ADR 0010).

Order of checks: the signature first (``BadSignature``, 401) over the raw bytes, before the
body is even decoded; then the body (``InvalidPaymentMessage``, 422); then the bucket.
"""

from __future__ import annotations

import logging
from typing import Final

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

from nodeapp.broker.connection import broker_errors
from nodeapp.core.shop_errors import PaymentConflict
from nodeapp.core.signing import BadSignature, verify
from nodeapp.shop.payment_messages import PaymentCallback, decode_callback, encode
from nodeapp.shop.payment_resources import BucketSource

log = logging.getLogger("orderflow.payments")

CREATE_ATTEMPTS: Final = 3  # create, read back; again only if the record vanished in between


class Recorded(msgspec.Struct, frozen=True):
    """The record as stored, and whether this call stored it (False: a duplicate)."""

    callback: PaymentCallback
    created: bool


def verified(body: bytes, header: str | None, secret: bytes) -> PaymentCallback:
    """The callback in ``body`` once its signature holds; nothing is decoded before that."""
    if not secret:
        raise BadSignature("no payment secret is configured; callbacks cannot be verified")
    verify(secret, body, header)
    return decode_callback(body)


async def store(kv: KeyValue, callback: PaymentCallback) -> Recorded:
    """Write a verified callback once; a duplicate saying the same is a no-op."""
    order_id = callback.order_id
    for _ in range(CREATE_ATTEMPTS):
        with broker_errors(f"recording the payment callback of order {order_id}"):
            try:
                await kv.create(order_id, encode(callback))
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            else:
                return Recorded(callback, created=True)
            existing = await read(kv, order_id)
        if existing is not None:
            return _duplicate(existing, callback)
    raise PaymentConflict(order_id, "the callback record keeps changing; refusing to guess")


def _duplicate(existing: PaymentCallback, callback: PaymentCallback) -> Recorded:
    if existing.same_result(callback):
        log.info(
            "duplicate payment callback for order %s ignored", callback.order_id,
            extra={"event": "payment.callback_duplicate", "order_id": callback.order_id},
        )  # fmt: skip
        return Recorded(existing, created=False)
    log.warning(
        "payment callback for order %s contradicts the recorded one (%s %s, now %s %s); refused",
        callback.order_id, existing.status, existing.amount, callback.status, callback.amount,
        extra={"event": "payment.callback_conflict", "order_id": callback.order_id},
    )  # fmt: skip
    raise PaymentConflict(
        callback.order_id,
        f"{existing.status} was recorded; a {callback.status} callback is refused",
    )


async def read(kv: KeyValue, order_id: str) -> PaymentCallback | None:
    """The recorded callback of ``order_id``, None if there is none (or it was deleted)."""
    with broker_errors(f"reading the payment callback of order {order_id}"):
        try:
            entry = await kv.get(order_id)
        except nats.js.errors.KeyNotFoundError:
            return None
    return decode_callback(entry.value) if entry.value else None


class PaymentInbox:
    """What the api's ``POST /payments/callback`` calls: the bucket and the secret together."""

    def __init__(self, bucket: BucketSource, secret: str) -> None:
        self._bucket = bucket
        self._secret = secret.encode()

    async def record(self, body: bytes, header: str | None) -> Recorded:
        """Verified before the bucket is asked for: a forged callback gets its 401 even while
        the broker is away."""
        callback = verified(body, header, self._secret)
        return await store(await self._bucket(), callback)
