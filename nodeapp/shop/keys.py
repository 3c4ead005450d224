"""Product id <-> KV key, one-to-one (ADR 0010).

A product id is 1-64 of ``A-Z a-z 0-9 . _ : -`` (the ``customer_id`` alphabet). KV keys cannot
hold ``:`` and cannot start or end with ``.``, so every character outside ``A-Z a-z 0-9 _ -``
is written ``=XX`` (its hex code): ``sku-1`` stays ``sku-1``, ``a:b`` becomes ``a=3Ab``. ``=``
is outside the id alphabet, so no two ids share a key and every key reads back to its id.
"""

from __future__ import annotations

import re
import string
from typing import Final

from nodeapp.core.errors import FieldError
from nodeapp.core.shop_errors import InvalidProduct
from nodeapp.orders.requests import NAME_PATTERN

PRODUCT_ID_PATTERN: Final = NAME_PATTERN
MAX_PRODUCT_ID: Final = 64
_PRODUCT_ID: Final = re.compile(PRODUCT_ID_PATTERN)
_PLAIN: Final = frozenset(string.ascii_letters + string.digits + "_-")
_ESCAPED: Final = re.compile(r"=([0-9A-F]{2})")
_KEY: Final = re.compile(r"^(?:[A-Za-z0-9_-]|=[0-9A-F]{2})+$")


def is_product_id(text: str) -> bool:
    """Whether ``text`` could name a product (so an api path naming anything else is a 4xx)."""
    return len(text) <= MAX_PRODUCT_ID and _PRODUCT_ID.fullmatch(text) is not None


def product_key(product_id: str) -> str:
    """The KV key of ``product_id``; ``InvalidProduct`` (field ``product_id``) for a bad id."""
    if not is_product_id(product_id):
        raise InvalidProduct(
            [FieldError("product_id", f"must be 1-{MAX_PRODUCT_ID} of A-Z a-z 0-9 . _ : -")]
        )
    return "".join(c if c in _PLAIN else f"={ord(c):02X}" for c in product_id)


def product_id_of(key: str) -> str:
    """The product id a KV key stands for; ``ValueError`` for a key this module did not make
    (a hand-written key in the bucket), so a listing can skip it rather than misname it."""
    if _KEY.fullmatch(key) is None:
        raise ValueError(f"not a product key: {key!r}")
    product_id = _ESCAPED.sub(lambda m: chr(int(m[1], 16)), key)
    if not is_product_id(product_id) or product_key(product_id) != key:
        raise ValueError(f"not a product key: {key!r}")
    return product_id
