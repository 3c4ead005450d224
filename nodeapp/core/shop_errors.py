"""The shop's errors: products, stock holds, payments; under ``nodeapp.core.errors``' tree.

::

    InvalidOrder
    ├── InvalidProduct       input that cannot become a product, a catalog file or page request
    └── InvalidPaymentMessage  a gateway request or callback body that cannot be read (422)
    Fenced
    └── PaymentFenced        the gateway saw a higher epoch for that payment (HTTP 409)
    OrderflowError
    ├── ProductNotFound      no product with that id in the catalog (HTTP 404)
    ├── StockConflict        a stock change refused: on_hand would drop below reserved or 0 (409)
    ├── OutOfStock           a reservation larger than what is available (fails the step)
    ├── HoldConflict         an order's stock hold is in a state the operation cannot move
    ├── StockContention      compare-and-set kept losing on a hot product: retry later (503)
    ├── GatewayUnavailable   the payment gateway unreachable, slow or failing: retry later
    ├── PaymentNotFound      no payment with that id at the gateway (HTTP 404)
    └── PaymentConflict      a payment cannot move that way (capture a declined one) (409)
"""

from __future__ import annotations

from nodeapp.core.errors import Fenced, InvalidOrder, OrderflowError


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
