"""orderflow's errors: a small tree carrying fields; broker errors are translated into these.

::

    OrderflowError
    ├── SettingsError        a bad environment variable or flag (names it)
    ├── BrokerUnavailable    NATS unreachable or too slow to answer: retry later (HTTP 503)
    ├── OrderNotFound        no document for that order id (HTTP 404)
    ├── OrderExists          a create found the key taken
    ├── RevisionConflict     a compare-and-set lost: someone else wrote the order first
    ├── IdempotencyConflict  an Idempotency-Key reused with a different body (HTTP 422)
    ├── InvalidOrder         input that cannot become an order; carries per-field errors (4xx)
    │   ├── InvalidProduct   ... or a product, a catalog file, a catalog page request
    │   ├── InvalidPaymentMessage  ... or a gateway request or callback body (422)
    │   ├── InvalidTokenRequest  ... or an API token request: name, scopes, customer, ttl (422)
    │   └── InvalidQuery     ... or a query parameter the route does not read (422)
    ├── ResourceMissing      a stream, consumer or bucket is gone (HTTP 503 until recreated)
    ├── NodeNotFound         no live node with that id in the registry (HTTP 404)
    ├── NodeUnresponsive     a registered node did not answer a control request (HTTP 502-504)
    ├── DeadLetterNotFound   no dead letter in ORDERS_DLQ for that order id (HTTP 404)
    ├── NotReplayable        a dead letter whose order cannot resume: terminal, no document (409)
    ├── DeliveryFailed       a notification webhook answered non-2xx or not at all: retry later
    ├── ProductNotFound      no product with that id in the catalog (HTTP 404)
    ├── StockConflict        a stock change refused: on_hand would drop below reserved or 0 (409)
    ├── OutOfStock           a reservation larger than what is available (fails the step)
    ├── HoldConflict         an order's stock hold is in a state the operation cannot move
    ├── StockContention      compare-and-set kept losing on a hot product: retry later (503)
    ├── Fenced               an epoch lower than the effect's: the caller lost the order
    │   └── PaymentFenced    ... the gateway saw a higher epoch for that payment (HTTP 409)
    ├── GatewayUnavailable   the payment gateway unreachable, slow or failing: retry later
    ├── PaymentNotFound      no payment with that id at the gateway (HTTP 404)
    ├── PaymentConflict      a payment cannot move that way (capture a declined one) (409)
    ├── Unauthenticated      API token missing, malformed, unknown, expired or revoked (HTTP 401)
    ├── Forbidden            a valid token not allowed to do that: scope or customer (403)
    ├── RateLimited          a token over its request rate; ``retry_after`` seconds (429)
    └── TokenNotFound        no API token with that id (HTTP 404)

Callers catch meaning, not library types; ``api.problems`` is the one place mapping these to HTTP.
"""

from __future__ import annotations


class OrderflowError(Exception):
    """Base of every error orderflow raises on purpose."""


class SettingsError(OrderflowError):
    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"{variable}: {reason}")
        self.variable = variable
        self.reason = reason


class BrokerUnavailable(OrderflowError):
    """The broker cannot be reached or did not answer in time; nothing was changed by us."""


class OrderNotFound(OrderflowError):
    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id} not found")
        self.order_id = order_id


class OrderExists(OrderflowError):
    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id} already exists")
        self.order_id = order_id


class RevisionConflict(OrderflowError):
    def __init__(self, order_id: str, expected: int) -> None:
        super().__init__(f"order {order_id} changed since revision {expected}")
        self.order_id = order_id
        self.expected = expected


class IdempotencyConflict(OrderflowError):
    def __init__(self, order_id: str) -> None:
        super().__init__(
            "Idempotency-Key was already used with a different request body "
            f"(it created order {order_id})"
        )
        self.order_id = order_id


class FieldError:
    """One invalid input field, as problem+json's ``errors`` lists it."""

    __slots__ = ("field", "message")

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message


class InvalidOrder(OrderflowError):
    def __init__(self, errors: list[FieldError], status: int = 422) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors
        self.status = status


class ResourceMissing(OrderflowError):
    """A JetStream resource orderflow relies on does not exist (deleted by hand?)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is missing; `orderflow init` recreates it")
        self.what = what


class NodeNotFound(OrderflowError):
    def __init__(self, node_id: str) -> None:
        super().__init__(f"no live node {node_id}")
        self.node_id = node_id


class NodeUnresponsive(OrderflowError):
    """The node is in the registry but its control request failed; ``status`` says how:
    503 nobody subscribed, 504 no answer in time, 502 an answer we cannot use."""

    def __init__(self, node_id: str, reason: str, status: int) -> None:
        super().__init__(f"node {node_id} {reason}")
        self.node_id = node_id
        self.reason = reason
        self.status = status


class DeadLetterNotFound(OrderflowError):
    def __init__(self, order_id: str) -> None:
        super().__init__(f"no dead letter for order {order_id}")
        self.order_id = order_id


class NotReplayable(OrderflowError):
    """The dead letter stays where it is: replaying it could not make the order progress."""

    def __init__(self, order_id: str, reason: str) -> None:
        super().__init__(f"order {order_id} cannot be replayed: {reason}")
        self.order_id = order_id
        self.reason = reason


class DeliveryFailed(OrderflowError):
    """One POST of a notification did not succeed; ``status`` is the HTTP answer, None when
    there was none (timeout, refused). ``reason`` never holds the webhook's URL or secret."""

    def __init__(self, notification_id: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"notification {notification_id} not delivered: {reason}")
        self.notification_id = notification_id
        self.reason = reason
        self.status = status


class InvalidProduct(InvalidOrder):
    """Input that cannot become a product (or a catalog file, or a catalog page request).

    An ``InvalidOrder`` so the api answers it the same way: problem+json naming each field.
    """


class ProductNotFound(OrderflowError):
    def __init__(self, product_id: str) -> None:
        super().__init__(f"product {product_id} not found")
        self.product_id = product_id


class StockConflict(OrderflowError):
    """A stock adjustment that would leave ``on_hand`` below ``reserved`` or below 0."""

    def __init__(self, product_id: str, reason: str, on_hand: int, reserved: int) -> None:
        super().__init__(f"stock of {product_id} unchanged: {reason}")
        self.product_id = product_id
        self.reason = reason
        self.on_hand = on_hand
        self.reserved = reserved


class OutOfStock(OrderflowError):
    """A reservation asked for more than ``available``; ``reason`` is the step's failure."""

    def __init__(self, product_id: str, requested: int, available: int) -> None:
        super().__init__(
            f"out of stock: {product_id} (requested {requested}, available {available})"
        )
        self.product_id = product_id
        self.requested = requested
        self.available = available

    @property
    def reason(self) -> str:
        return f"out_of_stock: {self.product_id}"


class HoldConflict(OrderflowError):
    """An order's hold on a product is in a state the operation cannot move (a commit without a
    reservation, a reservation re-run with another quantity): a bug or a hand edit, not a race."""

    def __init__(self, product_id: str, order_id: str, reason: str) -> None:
        super().__init__(f"hold of order {order_id} on {product_id}: {reason}")
        self.product_id = product_id
        self.order_id = order_id
        self.reason = reason


class StockContention(OrderflowError):
    """Every compare-and-set attempt on a product's stock lost to another writer: nothing was
    changed by this call; retry later (HTTP 503, a step naks)."""

    def __init__(self, product_id: str, attempts: int) -> None:
        super().__init__(f"stock of {product_id} too contended: {attempts} attempts lost")
        self.product_id = product_id
        self.attempts = attempts


class Fenced(OrderflowError):
    """The caller's epoch is lower than the one recorded on the effect (``where``): another
    owner has taken the order since, so this caller must stop working it."""

    def __init__(self, order_id: str, epoch: int, current: int, where: str) -> None:
        super().__init__(f"order {order_id}: epoch {epoch} fenced by {current} on {where}")
        self.order_id = order_id
        self.epoch = epoch
        self.current = current
        self.where = where


class PaymentFenced(Fenced):
    """The gateway recorded a higher epoch for the payment (= order id): a newer owner has
    acted on it, so this caller must not capture, void or refund."""

    def __init__(self, payment_id: str, epoch: int, current: int) -> None:
        super().__init__(payment_id, epoch, current, f"payment {payment_id}")
        self.payment_id = payment_id


class GatewayUnavailable(OrderflowError):
    """The payment gateway did not answer usefully (refused, timed out, 5xx): nothing is known
    to have changed; retry later. ``status`` is its HTTP answer, None when there was none.
    ``reason`` never holds the gateway's URL credentials or the payment secret."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(f"payment gateway unavailable: {reason}")
        self.reason = reason
        self.status = status


class PaymentNotFound(OrderflowError):
    def __init__(self, payment_id: str) -> None:
        super().__init__(f"payment {payment_id} not found")
        self.payment_id = payment_id


class PaymentConflict(OrderflowError):
    """The payment is in a state the request cannot move (capture of a declined payment, refund
    of an uncaptured one, a second authorization for another amount, a callback contradicting
    the recorded one): a bug or a forgery, not a race; retrying will not help."""

    def __init__(self, payment_id: str, reason: str) -> None:
        super().__init__(f"payment {payment_id}: {reason}")
        self.payment_id = payment_id
        self.reason = reason


class InvalidPaymentMessage(InvalidOrder):
    """A gateway request or a callback body that cannot be used; carries per-field errors.

    An ``InvalidOrder`` so the api answers it the same way: 422 problem+json naming each field.
    """


class InvalidTokenRequest(InvalidOrder):
    """An API token request that cannot be granted (unknown scope, bad name, customer or ttl).

    An ``InvalidOrder`` so the api answers it the same way: 422 problem+json naming each field.
    """


class InvalidQuery(InvalidOrder):
    """Query parameters the route does not read (a typo would silently change nothing).

    An ``InvalidOrder`` so the api answers it the same way: 422 problem+json naming each one.
    """


class Unauthenticated(OrderflowError):
    """The request carries no usable API token. ``reason`` is one of ``missing``,
    ``malformed``, ``unknown``, ``expired``, ``revoked``; it goes to logs and the 401's detail,
    the presented token never does. ``token_id`` is the id part when one could be read (an id
    alone grants nothing)."""

    def __init__(self, reason: str, token_id: str | None = None) -> None:
        super().__init__(f"API token {reason}")
        self.reason = reason
        self.token_id = token_id


class Forbidden(OrderflowError):
    """A valid token that may not do this: a missing scope, or another customer's order."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RateLimited(OrderflowError):
    """A token over its request rate; ``retry_after`` is when the next request would pass."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"request rate limit exceeded; retry after {retry_after:.2f}s")
        self.retry_after = retry_after


class TokenNotFound(OrderflowError):
    def __init__(self, token_id: str) -> None:
        super().__init__(f"API token {token_id} not found")
        self.token_id = token_id
