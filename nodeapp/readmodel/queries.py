"""``GET /orders`` from the read model: filtered, newest first, one keyset page at a time.

Each filter has an index that already holds its orders newest first (``schema``), so a page
costs a short index walk however many orders match; a product filter walks
``order_products``, which carries a copy of ``start_time`` for that reason.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import aiosqlite
import msgspec

from nodeapp.readmodel.params import ListQuery, Position, encode_cursor
from nodeapp.readmodel.schema import from_db_time

COLUMNS: Final = (
    "o.order_id, o.status, o.current_step, o.customer_id, o.amount, o.start_time, "
    "o.complete_time, o.revision"
)
HAS_PRODUCT: Final = (
    "EXISTS (SELECT 1 FROM order_products p WHERE p.order_id = o.order_id AND p.product_id = ?)"
)


class OrderSummary(msgspec.Struct, frozen=True):
    """One order as ``GET /orders`` lists it; ``revision`` is the KV revision shown."""

    order_id: str
    status: str
    current_step: str
    customer_id: str
    amount: Decimal | None
    start_time: datetime
    complete_time: datetime | None
    revision: int


class OrderPage(msgspec.Struct, frozen=True):
    """A page of orders; ``next_cursor`` is None on the last one."""

    orders: list[OrderSummary]
    next_cursor: str | None


def page_sql(query: ListQuery) -> tuple[str, list[Any]]:
    """The statement and parameters for ``query``: one more row than the limit, to know
    whether another page follows.

    The index that drives the walk is chosen here, not by the planner (the file may never have
    been analyzed): a customer's orders are few, a product's more, a status's many; the other
    filters are checked on the way (a leading ``+`` keeps SQLite from using their index).
    """
    params: list[Any] = []
    where: list[str] = []
    by_product = query.product_id is not None and query.customer_id is None
    if by_product:
        source, key = "order_products p CROSS JOIN orders o ON o.order_id = p.order_id", "p"
        where.append("p.product_id = ?")
        params.append(query.product_id)
    else:
        source, key = "orders o", "o"
    narrower = query.customer_id is not None or query.product_id is not None
    for clause, value in (
        ("o.customer_id = ?", query.customer_id),
        (HAS_PRODUCT, None if by_product else query.product_id),
        ("+o.status = ?" if narrower else "o.status = ?", query.status),
        (f"{key}.start_time > ?", query.created_after),
        (f"{key}.start_time < ?", query.created_before),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)
    if query.after is not None:
        where.append(f"({key}.start_time, {key}.order_id) < (?, ?)")
        params += [query.after.start_time, query.after.order_id]
    condition = f"WHERE {' AND '.join(where)}" if where else ""
    sql = (
        f"SELECT {COLUMNS} FROM {source} {condition} "
        f"ORDER BY {key}.start_time DESC, {key}.order_id DESC LIMIT ?"
    )
    return sql, [*params, query.limit + 1]


async def list_orders(db: aiosqlite.Connection, query: ListQuery) -> OrderPage:
    """One page of the orders ``query`` selects, newest first (ties by order id)."""
    sql, params = page_sql(query)
    async with db.execute(sql, params) as cursor:
        rows = list(await cursor.fetchall())
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    next_cursor = None
    if more:
        last = rows[-1]
        next_cursor = encode_cursor(Position(start_time=last[5], order_id=last[0]))
    return OrderPage([_summary(row) for row in rows], next_cursor)


def _summary(row: Any) -> OrderSummary:
    order_id, status, step, customer_id, amount, start, complete, revision = row
    return OrderSummary(
        order_id=order_id,
        status=status,
        current_step=step,
        customer_id=customer_id,
        amount=None if amount is None else Decimal(amount),
        start_time=from_db_time(start),
        complete_time=None if complete is None else from_db_time(complete),
        revision=revision,
    )
