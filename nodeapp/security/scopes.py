"""Scopes and the principal a verified token becomes.

Scopes are flat on purpose: ``admin`` implies every other scope and nothing else implies
anything, so a catalog manager cannot read orders and an operator cannot submit them. The names
are public (``orderflow token create --scopes orders:read,ops``, DESIGN "Security").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import msgspec

from nodeapp.core.errors import FieldError, InvalidTokenRequest

ORDERS_WRITE: Final = "orders:write"  # submit, cancel
ORDERS_READ: Final = "orders:read"  # list, read, follow orders
CATALOG_WRITE: Final = "catalog:write"  # products and stock
OPS: Final = "ops"  # cluster, drain, dead letters, metrics, stats
ADMIN: Final = "admin"  # everything, tokens included
SCOPES: Final = frozenset({ORDERS_WRITE, ORDERS_READ, CATALOG_WRITE, OPS, ADMIN})

ADMIN_TOKEN_ID: Final = "ORDERFLOW_ADMIN_TOKEN"  # the principal of the bootstrap admin token


def parse_scopes(names: str | Iterable[str], field: str = "scopes") -> frozenset[str]:
    """Scope names from a comma-separated text (``--scopes a,b``) or a list of names.

    An unknown name is an ``InvalidTokenRequest`` naming it and listing the known ones: a typo
    must not silently grant less (or, in a guard, protect nothing).
    """
    items = names.split(",") if isinstance(names, str) else list(names)
    wanted = frozenset(n.strip() for n in items if n.strip())
    unknown = sorted(wanted - SCOPES)
    if unknown:
        known = ", ".join(sorted(SCOPES))
        raise InvalidTokenRequest(
            [FieldError(field, f"unknown scope {', '.join(map(repr, unknown))} (known: {known})")]
        )
    return wanted


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who a request acts as: a token's id (never its secret), name, scopes and customer."""

    token_id: str
    name: str
    scopes: frozenset[str]
    customer_id: str | None = None

    def allows(self, *needed: str) -> bool:
        """Any one of ``needed`` (none listed: any valid token), or ``admin``."""
        return not needed or ADMIN in self.scopes or not self.scopes.isdisjoint(needed)


ADMIN_PRINCIPAL: Final = Principal(
    token_id=ADMIN_TOKEN_ID, name="bootstrap admin", scopes=frozenset({ADMIN})
)
