"""Accepting an order: store its document, then publish its work message.

The api and the benchmarks both submit through ``Intake``, with requests checked by
``nodeapp.orders.requests`` (and, on the api, priced by ``nodeapp.shop.checkout``). Order of
writes: (idempotency key), order document, its companion message (the api's: the order's
``order.delayed`` schedule), work message. A failure after the document is stored is undone
best-effort so a request answered with an error leaves nothing that is processed later (a
schedule left behind fires for an order with no document, which the notifier drops); what
cannot be undone (the broker vanished mid-request) is an order without a message, which the
reconciler re-drives.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Protocol

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from nodeapp.broker.connection import broker_errors
from nodeapp.broker.resources import WORK_SUBJECT
from nodeapp.core.errors import (
    BrokerUnavailable,
    IdempotencyConflict,
    OrderExists,
    OrderflowError,
    OrderNotFound,
)
from nodeapp.core.tracing import inject_headers, publish_span
from nodeapp.orders.model import (
    Contact,
    Item,
    Order,
    WorkMessage,
    encode,
    new_order,
    new_order_id,
)
from nodeapp.orders.requests import ContactRequest, OrderRequest
from nodeapp.orders.store import OrderStore

log = logging.getLogger("orderflow.intake")


class IdempotencyRecord(msgspec.Struct):
    order_id: str
    body_hash: str


_record_decoder = msgspec.json.Decoder(IdempotencyRecord)


def _body_hash(request: OrderRequest) -> str:
    return hashlib.sha256(encode(request)).hexdigest()


def idempotency_kv_key(customer_id: str, key: str) -> str:
    """The bucket key for a client's Idempotency-Key, scoped to the order's customer: two
    customers choosing the same key never meet (neither replays, blocks nor learns of the
    other's order). KV keys allow few characters, and the key is any visible ASCII: hashed."""
    return "k" + hashlib.sha256(f"{customer_id}\n{key}".encode()).hexdigest()


class SubmitResult(msgspec.Struct, frozen=True):
    order: Order
    created: bool


class PricedLines(Protocol):
    """The request's items at the catalog's prices and their total (``shop.checkout.Priced``)."""

    @property
    def items(self) -> list[Item]: ...

    @property
    def amount(self) -> Decimal: ...


# Published for each order before its work message, and as safe to repeat (the api's: the
# order's ``order.delayed`` schedule; this layer cannot import the shop that knows how).
Companion = Callable[[Order], Awaitable[None]]


class Intake:
    """Turns validated requests into stored, published orders."""

    def __init__(
        self,
        js: JetStreamContext,
        store: OrderStore,
        idempotency: KeyValue,
        companion: Companion | None = None,
    ) -> None:
        self.js = js
        self.store = store
        self.idempotency = idempotency
        self.companion = companion

    async def submit(
        self,
        request: OrderRequest,
        idempotency_key: str | None = None,
        *,
        priced: PricedLines | None = None,
    ) -> SubmitResult:
        """Store and publish the order ``request`` describes; ``priced`` (the api's) gives its
        items' unit prices and its amount, else the request's items and amount are stored."""
        if idempotency_key is None:
            order = await self._create(new_order_id(), request, None, priced)
            return SubmitResult(order=order, created=True)
        kv_key = idempotency_kv_key(request.customer_id, idempotency_key)
        record = IdempotencyRecord(order_id=new_order_id(), body_hash=_body_hash(request))
        with broker_errors("claiming Idempotency-Key"):
            try:
                revision = await self.idempotency.create(kv_key, encode(record))
            except nats.js.errors.KeyWrongLastSequenceError:
                revision = None
        if revision is None:
            return await self._replay(kv_key, record, request, idempotency_key, priced)
        # On failure the key stays bound to this order id: a store write that timed out may
        # still have been applied, and only a retry with the same key can then find the order
        # again (``_replay``) instead of storing a second one.
        order = await self._create(record.order_id, request, idempotency_key, priced)
        return SubmitResult(order=order, created=True)

    async def _replay(
        self,
        kv_key: str,
        mine: IdempotencyRecord,
        request: OrderRequest,
        key: str,
        priced: PricedLines | None,
    ) -> SubmitResult:
        with broker_errors("reading Idempotency-Key"):
            entry = await self.idempotency.get(kv_key)
        theirs = _record_decoder.decode(entry.value or b"{}")
        if theirs.body_hash != mine.body_hash:
            raise IdempotencyConflict(theirs.order_id)
        try:
            order = await self.store.get(theirs.order_id)
        except OrderNotFound:
            pass
        else:
            await self._publish_if_waiting(order)
            return SubmitResult(order=order, created=False)
        # The first request with this key is mid-way (or died after claiming it): finish its job.
        # Both writes are idempotent: create fails on an existing key, the publish is deduplicated.
        try:
            order = await self._create(theirs.order_id, request, key, priced)
        except OrderExists:
            order = await self.store.get(theirs.order_id)
            await self._publish_if_waiting(order)
        return SubmitResult(order=order, created=False)

    async def _publish_if_waiting(self, order: Order) -> None:
        """Publish again for an order no node has claimed yet: the first request may have
        stopped between storing it and publishing (or its publish failed and so did the
        withdraw), and its retry must not leave the order to the reconciler. When the first
        publish did get through, the broker drops this one (``Nats-Msg-Id``)."""
        if order.status == "accepted" and order.dead_letter is None:
            await self._send(order)

    async def _create(
        self, order_id: str, request: OrderRequest, key: str | None, priced: PricedLines | None
    ) -> Order:
        order = new_order(
            order_id,
            request.customer_id,
            priced.items if priced else [Item(i.product_id, i.quantity) for i in request.items],
            priced.amount if priced else request.amount,
            fail_at=request.fail_at,
            poison_at=request.poison_at,
            idempotency_key=key,
        )
        order.payment_token = request.payment_token
        order.contact = _contact(request.contact)
        revision = await self.store.create(order)
        try:
            await self._send(order)
        except BrokerUnavailable:
            await self._withdraw(order_id, revision)
            raise
        return order

    async def _send(self, order: Order) -> None:
        """The companion first: a work message must not go out for an order whose schedule
        could not be published (the document is withdrawn then, and nothing runs it)."""
        if self.companion is not None:
            await self.companion(order)
        await self.publish(order.order_id)

    async def publish(self, order_id: str, message_id: str | None = None) -> None:
        """Publish the order's work message; the broker drops a duplicate within its window
        (``Nats-Msg-Id`` the order id, or ``message_id`` for a deliberate second one)."""
        with publish_span(WORK_SUBJECT, order_id):
            headers = inject_headers({"Nats-Msg-Id": message_id or order_id})
            with broker_errors(f"publishing order {order_id}"):
                await self.js.publish(WORK_SUBJECT, encode(WorkMessage(order_id)), headers=headers)

    async def _withdraw(self, order_id: str, revision: int) -> None:
        try:
            await self.store.delete(order_id, revision)
        except OrderflowError as exc:
            log.warning(
                "could not withdraw order after failed publish; the reconciler will re-drive it",
                extra={"event": "order.withdraw_failed", "order_id": order_id, "error": str(exc)},
            )


def _contact(contact: ContactRequest | None) -> Contact | None:
    if contact is None or (contact.email is None and contact.phone is None):
        return None
    return Contact(email=contact.email, phone=contact.phone)
