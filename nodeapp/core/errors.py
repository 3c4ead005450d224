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
    ├── ResourceMissing      a stream, consumer or bucket is gone (HTTP 503 until recreated)
    ├── NodeNotFound         no live node with that id in the registry (HTTP 404)
    ├── NodeUnresponsive     a registered node did not answer a control request (HTTP 502-504)
    ├── DeadLetterNotFound   no dead letter in ORDERS_DLQ for that order id (HTTP 404)
    └── NotReplayable        a dead letter whose order cannot resume: terminal, no document (409)

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
