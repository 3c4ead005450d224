"""What a process opens of the read side: the api's read model, the CLI's rebuild.

The api enters ``open_read_model`` in its lifespan: the projector keeps the file current while a
separate reader connection answers ``GET /orders`` and ``GET /stats`` (WAL: a read never waits
for the projector's writes, and never sees half a batch).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Final

import aiosqlite
import msgspec

from nodeapp.readmodel.params import list_query
from nodeapp.readmodel.projector import BrokerSource, Projector
from nodeapp.readmodel.queries import OrderPage, list_orders
from nodeapp.readmodel.schema import connect
from nodeapp.readmodel.stats import Stats, order_stats, stats_window

REBUILD_WITHIN: Final = 600.0


class ReadModel:
    """Queries on the read model; ``projector`` for its lag, status and rebuild."""

    def __init__(self, projector: Projector, reader: aiosqlite.Connection) -> None:
        self.projector = projector
        self._reader = reader

    async def list_orders(
        self,
        *,
        status: str | None = None,
        customer_id: str | None = None,
        product_id: str | None = None,
        created_after: str | datetime | None = None,
        created_before: str | datetime | None = None,
        limit: str | int | None = None,
        cursor: str | None = None,
    ) -> OrderPage:
        """``GET /orders``; ``InvalidOrder`` naming each bad parameter (``None`` = absent).

        For a customer's token, pass its customer as ``customer_id`` (refuse or empty a
        request naming another one before calling).
        """
        query = list_query(
            status=status,
            customer_id=customer_id,
            product_id=product_id,
            created_after=created_after,
            created_before=created_before,
            limit=limit,
            cursor=cursor,
        )
        return await list_orders(self._reader, query)

    async def stats(self, window: str | float | None = None, now: datetime | None = None) -> Stats:
        """``GET /stats?window=``; ``InvalidOrder`` naming ``window`` when it is bad."""
        return await order_stats(self._reader, stats_window(window), now)


@contextlib.asynccontextmanager
async def open_read_model(path: str | Path, broker: BrokerSource) -> AsyncIterator[ReadModel]:
    """``async with open_read_model(settings.read_db, link.handles) as read_model``."""
    async with Projector(path, broker) as projector, connect(path, writer=False) as reader:
        yield ReadModel(projector, reader)


class RebuildReport(msgspec.Struct, frozen=True):
    orders: int  # rows in the rebuilt model
    checkpoint: int  # the stream sequence it was rebuilt up to
    seconds: float


async def rebuild_read_model(
    path: str | Path, broker: BrokerSource, within: float = REBUILD_WITHIN
) -> RebuildReport:
    """``orderflow readmodel rebuild``: empty the file's tables and replay ``KV_orders`` from
    sequence 1 up to its last sequence when called. A running api projecting into the same
    file notices (its next batch finds the checkpoint moved) and resumes from the new one."""
    started = time.monotonic()
    async with Projector(path, broker) as projector:
        await projector.rebuild()
        checkpoint = await projector.caught_up(within)
    async with (
        connect(path, writer=False) as reader,
        reader.execute("SELECT count(*) FROM orders") as cursor,
    ):
        row = await cursor.fetchone()
    return RebuildReport(row[0] if row else 0, checkpoint, time.monotonic() - started)
