"""API tokens for tests: the bootstrap admin every test's settings carry, and minting others.

``conftest.settings`` sets ``TEST_ADMIN_TOKEN`` as ``ORDERFLOW_ADMIN_TOKEN``; the api clients of
``tests.support.api_fixtures`` send it unless told otherwise, and ``ApiProcess`` gets it through
the environment ``settings`` export.
"""

from __future__ import annotations

from typing import Final

from nodeapp.core.settings import Settings
from nodeapp.orders.handles import Handles
from nodeapp.security.bucket import ensure_tokens_bucket
from nodeapp.security.store import TokenStore

TEST_ADMIN_TOKEN: Final = "of_admin_tests_" + "A1b2C3d4E5" * 4  # >= 32 printable, no spaces


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header presenting ``token``."""
    return {"Authorization": f"Bearer {token}"}


async def token_store(broker: Handles, settings: Settings) -> TokenStore:
    """A store on the test broker's ``tokens`` bucket (created if missing)."""
    return TokenStore(await ensure_tokens_bucket(broker.js, settings))


async def mint_token(
    broker: Handles,
    settings: Settings,
    *scopes: str,
    customer: str | None = None,
    ttl: float | None = None,
    name: str = "test",
) -> str:
    """The text of a new token with ``scopes`` (bound to ``customer``, expiring after ``ttl``)."""
    store = await token_store(broker, settings)
    _, text = await store.create(name, scopes, customer, ttl)
    return text
