"""Everything a process needs to read and write orders, opened in one place.

Connect, take a JetStream context, make sure the streams, consumer and buckets exist, then build
the store and the intake on them: the api, the node, ``orderflow init``, the tests and the
benchmarks all open their broker handles through ``open_handles`` or ``broker_handles``. The
shop's resources come after (``nodeapp.shop.provisioning`` creates both).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Final

import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from nodeapp.broker.connection import broker_errors, connection, jetstream
from nodeapp.broker.requests import Replies
from nodeapp.broker.resources import Buckets, ensure_resources_patiently
from nodeapp.core.settings import Settings
from nodeapp.orders.intake import Intake
from nodeapp.orders.store import ORDERS_KV_STREAM, OrderStore

DIRECT_PROBE: Final = "$KV.orders.direct-get-probe"  # no order has this key (not a ULID)


class Handles(msgspec.Struct, frozen=True):
    """A connection and what is built on it; valid while the connection is open."""

    nc: NATS
    js: JetStreamContext
    buckets: Buckets
    store: OrderStore
    intake: Intake


async def open_handles(nc: NATS, settings: Settings, within: float = 30.0) -> Handles:
    """Handles on an open connection; resources are created if missing, retried for ``within``
    seconds while the broker is unreachable or a new cluster is still electing leaders."""
    js = jetstream(nc, settings)
    buckets = await ensure_resources_patiently(js, settings, within)
    with broker_errors("reading the orders bucket's configuration"):
        allowed = bool((await js.stream_info(ORDERS_KV_STREAM)).config.allow_direct)
        replies = await Replies(nc, settings.request_timeout).open()
    # A user whose permissions lack $JS.API.DIRECT.GET reads through the JSON API instead.
    direct = allowed and await replies.can_direct_get(ORDERS_KV_STREAM, DIRECT_PROBE)
    store = OrderStore(buckets.orders, replies, direct=direct)
    return Handles(nc, js, buckets, store, Intake(js, store, buckets.idempotency))


@contextlib.asynccontextmanager
async def broker_handles(
    settings: Settings, name: str, within: float | None = None, **options: Any
) -> AsyncIterator[Handles]:
    """``async with broker_handles(settings, "who") as h``: connect, open, drain on exit.

    ``within`` bounds the first connect; ``options`` go to ``nats.connect`` (tests pin a
    server with ``servers`` and ``dont_randomize``).
    """
    async with connection(settings, name, within, **options) as nc:
        yield await open_handles(nc, settings)
