"""``orderflow init``: create the JetStream resources once, from any machine."""

from __future__ import annotations

from nodeapp.broker import connection, jetstream
from nodeapp.resources import ensure_resources_patiently
from nodeapp.settings import Settings


async def init_resources(settings: Settings) -> None:
    async with connection(settings, "orderflow-init", within=10.0) as nc:
        await ensure_resources_patiently(jetstream(nc, settings), settings)
