"""orderflow's errors: a small tree carrying fields; broker errors are translated into these.

::

    OrderflowError
    ├── SettingsError        a bad environment variable or flag (names it)
    ├── BrokerUnavailable    NATS unreachable or too slow to answer: retry later (HTTP 503)
    ├── OrderNotFound        no document for that order id (HTTP 404)
    ├── OrderExists          a create found the key taken
    ├── RevisionConflict     a compare-and-set lost: someone else wrote the order first
    ├── OrderFinished        a cancel of an order already completed, failed or cancelled (409)
    ├── IdempotencyConflict  an Idempotency-Key reused with a different body (HTTP 422)
    ├── InvalidOrder         input that cannot become an order; carries per-field errors (4xx)
    │   ├── InvalidTokenRequest  ... or an API token request: name, scopes, customer, ttl (422)
    │   └── InvalidQuery     ... or a query parameter the route does not read (422)
    ├── ResourceMissing      a stream, consumer or bucket is gone (HTTP 503 until recreated)
    ├── ReadModelUnavailable the api's read model is not open (yet), so no list or stats (503)
    ├── NodeNotFound         no live node with that id in the registry (HTTP 404)
    ├── NodeUnresponsive     a registered node did not answer a control request (HTTP 502-504)
    ├── DeadLetterNotFound   no dead letter in ORDERS_DLQ for that order id (HTTP 404)
    ├── NotReplayable        a dead letter whose order cannot resume: terminal, no document (409)
    ├── DeliveryFailed       a notification webhook answered non-2xx or not at all: retry later
    ├── Fenced               an epoch lower than the effect's: the caller lost the order
    ├── Unauthenticated      API token missing, malformed, unknown, expired or revoked (HTTP 401)
    ├── Forbidden            a valid token not allowed to do that: scope or customer (403)
    ├── RateLimited          a token over its request rate; ``retry_after`` seconds (429)
    └── TokenNotFound        no API token with that id (HTTP 404)

The shop's errors (products, stock, payments) branch off this tree in ``core/shop_errors.py``.
Callers catch meaning, not library types; ``api.problems`` is the one place mapping these to
HTTP.
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


class OrderFinished(OrderflowError):
    def __init__(self, order_id: str, status: str) -> None:
        super().__init__(f"order {order_id} is already {status}: nothing to cancel")
        self.order_id = order_id
        self.status = status


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


class ReadModelUnavailable(OrderflowError):
    """The api's read model (``ORDERFLOW_READ_DB``) is not open: it opens once the broker is
    reachable, or its file could not be opened (the message says why)."""


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


class Fenced(OrderflowError):
    """The caller's epoch is lower than the one recorded on the effect (``where``): another
    owner has taken the order since, so this caller must stop working it."""

    def __init__(self, order_id: str, epoch: int, current: int, where: str) -> None:
        super().__init__(f"order {order_id}: epoch {epoch} fenced by {current} on {where}")
        self.order_id = order_id
        self.epoch = epoch
        self.current = current
        self.where = where


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
