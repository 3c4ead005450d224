"""The shop's documents as msgspec Structs: a product, its stock with the orders' holds, the
views the api shows, and what a product body or a catalog file may say (ADR 0010).

Stored documents are what ``nats kv get catalog|stock <key>`` shows, so their field names are
public; they get defaults for new fields and their decoders ignore unknown ones (rolling
deploys). Input is strict: unknown fields are refused, every rule names its field.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Final, Literal, Protocol, TypeVar

import msgspec

from nodeapp.core.errors import FieldError
from nodeapp.core.shop_errors import InvalidProduct
from nodeapp.orders.requests import Money, amount_problem, field_error
from nodeapp.shop.keys import MAX_PRODUCT_ID, is_product_id

CENT: Final = Decimal("0.01")
MAX_NAME: Final = 200
# Checked by ``product_problems`` (its message names the rule); the schema only documents it.
ProductName = Annotated[
    str, msgspec.Meta(extra_json_schema={"minLength": 1, "maxLength": MAX_NAME})
]

HoldState = Literal["reserved", "sold", "released"]  # released: a tombstone (nodeapp.shop.holds)
T = TypeVar("T")


class Product(msgspec.Struct, frozen=True):
    """A catalog entry; ``price`` is a decimal with at most 2 fractional digits (a JSON string)."""

    product_id: str
    name: str
    price: Decimal
    active: bool = True


class Line(Protocol):
    """An order line as the shop sees it (``Item`` and ``ItemRequest`` both fit)."""

    @property
    def product_id(self) -> str: ...

    @property
    def quantity(self) -> int: ...


class Hold(msgspec.Struct):
    """One order's claim on a product's stock; ``epoch`` is the owner's when it last moved it."""

    quantity: int
    state: HoldState
    epoch: int


class StockLevel(msgspec.Struct):
    """A product's stock document; ``reserved`` is the sum of the holds in state ``reserved``,
    kept in the same document so one compare-and-set moves the counters and the hold together."""

    product_id: str
    on_hand: int = 0
    reserved: int = 0
    holds: dict[str, Hold] = {}

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


class StockView(msgspec.Struct, frozen=True):
    """What the api shows of a product's stock (``available`` is computed, never stored)."""

    on_hand: int
    reserved: int
    available: int

    @classmethod
    def of(cls, level: StockLevel) -> StockView:
        return cls(on_hand=level.on_hand, reserved=level.reserved, available=level.available)


class ProductView(msgspec.Struct, frozen=True):
    """``GET /products/{id}``: the product with its stock."""

    product_id: str
    name: str
    price: Decimal
    active: bool
    stock: StockView


class ProductBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``PUT /products/{id}``'s body; the id comes from the path."""

    name: ProductName
    price: Money
    active: bool = True


class CatalogItem(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One entry of a catalog file (``orderflow catalog load``): a product, maybe its stock."""

    product_id: str
    name: str
    price: Decimal
    active: bool = True
    on_hand: int | None = None

    def product(self) -> Product:
        return Product(self.product_id, self.name, self.price, self.active)


_encoder: Final = msgspec.json.Encoder(decimal_format="string")
_product_decoder: Final = msgspec.json.Decoder(Product)
_stock_decoder: Final = msgspec.json.Decoder(StockLevel)
_body_decoder: Final = msgspec.json.Decoder(ProductBody)
_file_decoder: Final = msgspec.json.Decoder(list[CatalogItem])


def encode(obj: object) -> bytes:
    return _encoder.encode(obj)


def decode_product(data: bytes) -> Product:
    return _product_decoder.decode(data)


def decode_stock(data: bytes) -> StockLevel:
    return _stock_decoder.decode(data)


def product_problems(product: Product, prefix: str = "") -> list[FieldError]:
    """Every rule ``product`` breaks, fields named with ``prefix`` (``[3].`` in a file)."""
    errors = []
    if not is_product_id(product.product_id):
        why = f"must be 1-{MAX_PRODUCT_ID} of A-Z a-z 0-9 . _ : -"
        errors.append(FieldError(f"{prefix}product_id", why))
    if not 1 <= len(product.name) <= MAX_NAME:
        errors.append(FieldError(f"{prefix}name", f"must be 1-{MAX_NAME} characters"))
    if (problem := amount_problem(product.price)) is not None:
        errors.append(FieldError(f"{prefix}price", problem))
    return errors


def checked(product: Product) -> Product:
    """``product`` with its price written with 2 decimals (``5`` -> ``5.00``), or
    ``InvalidProduct`` naming every field that breaks a rule."""
    if errors := product_problems(product):
        raise InvalidProduct(errors)
    return msgspec.structs.replace(product, price=product.price.quantize(CENT))


def decode_product_body(product_id: str, body: bytes) -> Product:
    """``PUT /products/{id}``: the product that ``body`` describes, checked; ``InvalidProduct``
    (400 for a body that is not a JSON object, 422 naming the field otherwise)."""
    body_of = decode_strict(_body_decoder, body)
    return checked(Product(product_id, body_of.name, body_of.price, body_of.active))


def decode_catalog_file(data: bytes) -> list[CatalogItem]:
    """A catalog file's entries, every one checked before any is loaded; fields are named by
    position (``[3].price``) and a product id listed twice is refused."""
    items = decode_strict(_file_decoder, data)
    errors: list[FieldError] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        errors += product_problems(item.product(), prefix=f"[{i}].")
        if item.on_hand is not None and item.on_hand < 0:
            errors.append(FieldError(f"[{i}].on_hand", "must be >= 0"))
        if item.product_id in seen:
            errors.append(FieldError(f"[{i}].product_id", "is listed twice"))
        seen.add(item.product_id)
    if errors:
        raise InvalidProduct(errors)
    return [msgspec.structs.replace(i, price=i.price.quantize(CENT)) for i in items]


def decode_strict(decoder: msgspec.json.Decoder[T], data: bytes) -> T:
    """Any product-side body (a product, a catalog file, a stock change) decoded, or
    ``InvalidProduct``: 400 if the JSON is broken or of the wrong shape as a
    whole, 422 naming the field otherwise."""
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        error = field_error(str(exc))
        raise InvalidProduct([error], status=400 if error.field == "body" else 422) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        error = FieldError("body", f"is not valid JSON: {exc}")
        raise InvalidProduct([error], status=400) from None


def _demo(n: int, name: str, price: str) -> CatalogItem:
    return CatalogItem(f"sku-{n}", name, Decimal(price), on_hand=100)


# What `orderflow up` loads into an empty catalog, so a first order has something to buy.
DEMO_CATALOG: Final = (
    _demo(1, "Espresso beans, 1 kg", "24.90"),
    _demo(2, "Ceramic mug", "9.50"),
    _demo(3, "Pour-over kettle", "39.00"),
    _demo(4, "Paper filters, 100", "4.20"),
    _demo(5, "Hand grinder", "59.99"),
    _demo(6, "Milk frother", "19.75"),
)
