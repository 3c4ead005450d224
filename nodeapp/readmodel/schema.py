"""The read model's SQLite file: its tables and indexes, its connections, its checkpoint.

The file is a cache of the ``orders`` bucket, never the source of truth: a file written by an
older schema (``PRAGMA user_version``) is emptied and rebuilt from the stream rather than
migrated. Times are stored as fixed-width UTC text (``2025-01-31T12:00:00.000000Z``) so they
sort and compare as text and stay readable in the ``sqlite3`` shell.

One writer connection (the projector) in WAL mode with ``synchronous=NORMAL``: a commit does not
wait for fsync, a power cut can only lose the last batches, and those are replayed from the
checkpoint that was lost with them. Readers use their own connections and never block it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import aiosqlite

from nodeapp.core.errors import OrderflowError

SCHEMA_VERSION: Final = 1
BUSY_TIMEOUT_MS: Final = 5000
# Five indexes take random writes: -20% CPU against SQLite's 2 MiB; 8 MiB projects as fast as
# 32 did (benchmarks.readmodel) and keeps the api under issue 11's 100 MB (ADR 0021).
WRITER_CACHE_KIB: Final = 8 * 1024
TIME_FORMAT: Final = "YYYY-MM-DDTHH:MM:SS.ffffffZ"  # UTC, always 27 characters

TABLES: Final = """
CREATE TABLE IF NOT EXISTS orders (
    order_id      TEXT PRIMARY KEY,
    status        TEXT NOT NULL,
    current_step  TEXT NOT NULL,
    customer_id   TEXT NOT NULL,
    amount        TEXT,             -- decimal as text: exact, as the document has it
    start_time    TEXT NOT NULL,    -- submit time, TIME_FORMAT
    complete_time TEXT,
    latency_us    INTEGER,          -- complete_time - start_time, for /stats
    products      TEXT NOT NULL,    -- JSON array of the items' distinct product ids
    revision      INTEGER NOT NULL  -- the KV revision, i.e. the KV_orders stream sequence
);
CREATE INDEX IF NOT EXISTS orders_newest ON orders (start_time DESC, order_id DESC);
CREATE INDEX IF NOT EXISTS orders_by_status ON orders (status, start_time DESC, order_id DESC);
CREATE INDEX IF NOT EXISTS orders_by_customer
    ON orders (customer_id, start_time DESC, order_id DESC);
CREATE INDEX IF NOT EXISTS orders_finished ON orders (complete_time, status, latency_us)
    WHERE complete_time IS NOT NULL;

-- Kept by the triggers below from orders.products; start_time is copied so a product's orders
-- are read newest first from one index.
CREATE TABLE IF NOT EXISTS order_products (
    order_id   TEXT NOT NULL,
    product_id TEXT NOT NULL,
    start_time TEXT NOT NULL,
    PRIMARY KEY (order_id, product_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS order_products_newest
    ON order_products (product_id, start_time DESC, order_id DESC);

-- Orders by status and by step, kept by the triggers below: /stats reads a few rows instead
-- of counting every order.
CREATE TABLE IF NOT EXISTS counts (
    dimension TEXT NOT NULL,  -- 'status' or 'step'
    value     TEXT NOT NULL,
    orders    INTEGER NOT NULL,
    PRIMARY KEY (dimension, value)
) WITHOUT ROWID;

-- The triggers run inside the projector's transaction, only when a row really changes.
CREATE TRIGGER IF NOT EXISTS order_added AFTER INSERT ON orders BEGIN
    INSERT INTO counts VALUES ('status', NEW.status, 1), ('step', NEW.current_step, 1)
        ON CONFLICT DO UPDATE SET orders = orders + 1;
    INSERT OR IGNORE INTO order_products (order_id, product_id, start_time)
        SELECT NEW.order_id, value, NEW.start_time FROM json_each(NEW.products);
END;
CREATE TRIGGER IF NOT EXISTS order_removed AFTER DELETE ON orders BEGIN
    UPDATE counts SET orders = orders - 1 WHERE dimension = 'status' AND value = OLD.status;
    UPDATE counts SET orders = orders - 1 WHERE dimension = 'step' AND value = OLD.current_step;
    DELETE FROM order_products WHERE order_id = OLD.order_id;
END;
CREATE TRIGGER IF NOT EXISTS order_moved AFTER UPDATE OF status, current_step ON orders
    WHEN OLD.status IS NOT NEW.status OR OLD.current_step IS NOT NEW.current_step BEGIN
    UPDATE counts SET orders = orders - 1 WHERE dimension = 'status' AND value = OLD.status;
    UPDATE counts SET orders = orders - 1 WHERE dimension = 'step' AND value = OLD.current_step;
    INSERT INTO counts VALUES ('status', NEW.status, 1), ('step', NEW.current_step, 1)
        ON CONFLICT DO UPDATE SET orders = orders + 1;
END;
CREATE TRIGGER IF NOT EXISTS order_products_changed AFTER UPDATE OF products, start_time ON orders
    WHEN OLD.products IS NOT NEW.products OR OLD.start_time IS NOT NEW.start_time BEGIN
    DELETE FROM order_products WHERE order_id = OLD.order_id;
    INSERT OR IGNORE INTO order_products (order_id, product_id, start_time)
        SELECT NEW.order_id, value, NEW.start_time FROM json_each(NEW.products);
END;

-- The last KV_orders stream sequence applied, and which stream it counts in (a recreated
-- stream starts again at 1, so the rows must be rebuilt).
CREATE TABLE IF NOT EXISTS checkpoint (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    stream_seq     INTEGER NOT NULL,
    stream_created TEXT
);
INSERT OR IGNORE INTO checkpoint (id, stream_seq) VALUES (1, 0);
"""


class CheckpointMoved(OrderflowError):
    """Another writer changed the checkpoint (``orderflow readmodel rebuild`` on a file a
    running api projects into): the batch was rolled back; resume from the stored one."""

    def __init__(self, expected: int) -> None:
        super().__init__(f"read model checkpoint is no longer {expected}; another writer?")
        self.expected = expected


def db_time(moment: datetime) -> str:
    """``moment`` in the stored format; naive datetimes are taken as UTC."""
    if moment.utcoffset():
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")[:26] + "Z"  # strftime takes twice as long


def from_db_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


@contextlib.asynccontextmanager
async def connect(path: str | Path, *, writer: bool) -> AsyncIterator[aiosqlite.Connection]:
    """An open connection in autocommit mode (transactions are explicit, see ``transaction``).

    The writer creates the file and its schema; a reader is refused every write.
    """
    if writer:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    async with aiosqlite.connect(path, isolation_level=None) as db:
        await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if writer:
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
            await _ensure_schema(db)
        else:
            await db.execute("PRAGMA query_only = ON")
        yield db


async def _ensure_schema(db: aiosqlite.Connection) -> None:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    version = row[0] if row else 0
    if version not in (0, SCHEMA_VERSION):  # an older layout: a cache, so start again
        for table in ("orders", "order_products", "counts", "checkpoint"):
            await db.execute(f"DROP TABLE IF EXISTS {table}")
    await db.executescript(TABLES)
    await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextlib.asynccontextmanager
async def transaction(db: aiosqlite.Connection) -> AsyncIterator[None]:
    """``BEGIN IMMEDIATE`` .. ``COMMIT``, rolled back on any error.

    Callers shield it from cancellation (``writer``): a transaction cut between two
    statements would leave the connection inside it.
    """
    await db.execute("BEGIN IMMEDIATE")
    try:
        yield
        await db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            await db.execute("ROLLBACK")
        raise


async def load_checkpoint(db: aiosqlite.Connection) -> tuple[int, str | None]:
    """The last applied stream sequence and the stream's creation time it belongs to."""
    async with db.execute("SELECT stream_seq, stream_created FROM checkpoint") as cursor:
        row = await cursor.fetchone()
    if row is None:
        return 0, None
    return int(row[0]), row[1]


async def move_checkpoint(db: aiosqlite.Connection, expected: int, upto: int) -> None:
    """Inside a transaction: ``expected`` -> ``upto``, or ``CheckpointMoved``."""
    async with db.execute(
        "UPDATE checkpoint SET stream_seq = ? WHERE id = 1 AND stream_seq = ?", (upto, expected)
    ) as cursor:
        if cursor.rowcount != 1:
            raise CheckpointMoved(expected)


async def reset(db: aiosqlite.Connection, stream_created: str | None = None) -> None:
    """Empty the tables and set the checkpoint to 0, in one transaction (a rebuild's start)."""
    async with transaction(db):
        await db.execute("DELETE FROM orders")
        await db.execute("DELETE FROM order_products")
        await db.execute("DELETE FROM counts")
        await db.execute(
            "UPDATE checkpoint SET stream_seq = 0, stream_created = ? WHERE id = 1",
            (stream_created,),
        )


async def remember_stream(db: aiosqlite.Connection, stream_created: str) -> None:
    await db.execute("UPDATE checkpoint SET stream_created = ? WHERE id = 1", (stream_created,))
