"""``orderflow readmodel rebuild``: the api's read model file (``ORDERFLOW_READ_DB``) rebuilt
from the ``orders`` bucket, straight to the broker and the file (like ``catalog load``).

For a file that was deleted, damaged, or is simply suspect. Meant for when the api using the
file is stopped: with one running, both still end right (its projector finds the checkpoint
moved and resumes from the rebuilt one, ``nodeapp.readmodel.service``), but the lists it
serves are incomplete until the rebuild ends. A file another process keeps locked past
SQLite's busy timeout is refused with a message saying so, and left as it was.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
from typing import Final

import msgspec
import nats.js.errors
from nats.js import JetStreamContext

from nodeapp.broker.connection import Link, broker_errors, connection, jetstream
from nodeapp.core.errors import OrderflowError
from nodeapp.core.settings import Settings
from nodeapp.orders.model import encode
from nodeapp.readmodel.service import RebuildReport, rebuild_read_model
from nodeapp.readmodel.stream import KV_STREAM

CLIENT_NAME: Final = "orderflow-readmodel"
CONNECT_WITHIN: Final = 10.0  # seconds the command waits for the broker before it gives up


class Rebuilt(msgspec.Struct, frozen=True):
    """What ``--json`` prints."""

    path: str
    orders: int
    checkpoint: int
    seconds: float


def rebuild(args: argparse.Namespace, settings: Settings) -> int:
    path = settings.read_db
    report = asyncio.run(_rebuild(settings))
    rebuilt = Rebuilt(path, report.orders, report.checkpoint, round(report.seconds, 3))
    if args.json:
        print(encode(rebuilt).decode())
        return 0
    print(
        f"read model {path} rebuilt from {KV_STREAM}: {report.orders} orders, up to sequence "
        f"{report.checkpoint}, in {report.seconds:.2f}s\n"
        "an api using this file resumes from there"
    )
    return 0


async def _rebuild(settings: Settings) -> RebuildReport:
    path = settings.read_db
    async with connection(settings, CLIENT_NAME, within=CONNECT_WITHIN) as nc:
        js = jetstream(nc, settings)
        await _require_bucket(js)
        try:
            return await rebuild_read_model(path, Link(nc, js))
        except sqlite3.OperationalError as exc:
            hint = " (another process holds it: stop the api using it, or retry)"
            held = "locked" in str(exc) or "busy" in str(exc)
            raise OrderflowError(f"cannot write {path}: {exc}{hint if held else ''}") from None
        except sqlite3.DatabaseError as exc:  # not an SQLite file at all
            raise OrderflowError(
                f"{path} is not a read model file ({exc}); move it away and run again"
            ) from None


async def _require_bucket(js: JetStreamContext) -> None:
    """``OrderflowError`` when the broker has no ``orders`` bucket: nothing to rebuild from."""
    with broker_errors(f"reading stream {KV_STREAM}"):
        try:
            await js.stream_info(KV_STREAM)
        except nats.js.errors.NotFoundError:
            missing = f"the broker has no orders bucket (stream {KV_STREAM})"
            raise OrderflowError(f"{missing}; `orderflow init` creates it") from None
