"""``orderflow token create|list|revoke``: API tokens, straight to the broker (like ``catalog
load``), the ``tokens`` bucket created when missing.

``create`` prints the token once: the bucket keeps only its hash, so nothing can show it again.
``list`` shows each token's public record (id, name, scopes, customer, times), never the token
or its hash. ``revoke`` marks a token revoked; every api process stops accepting it within
milliseconds (DESIGN, docs/SECURITY.md).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from nodeapp.broker.connection import connection, jetstream
from nodeapp.cli.render import fields, stamp, table
from nodeapp.core.errors import InvalidTokenRequest, OrderflowError, TokenNotFound
from nodeapp.core.settings import Settings
from nodeapp.orders.model import encode
from nodeapp.security.bucket import ensure_tokens_bucket
from nodeapp.security.store import TokenStore
from nodeapp.security.tokens import TokenRecord, token_request

T = TypeVar("T")
CONNECT_WITHIN: Final = 10.0  # seconds a command waits for the broker before it gives up
EXIT_NOT_FOUND: Final = 1


def run(args: argparse.Namespace, settings: Settings) -> int:
    action: str = args.token_action
    if action == "create":
        return _create(args, settings)
    if action == "list":
        return _list(args, settings)
    return _revoke(args, settings)


async def _with_store(settings: Settings, use: Callable[[TokenStore], Awaitable[T]]) -> T:
    async with connection(settings, "orderflow-token", within=CONNECT_WITHIN) as nc:
        kv = await ensure_tokens_bucket(jetstream(nc, settings), settings)
        return await use(TokenStore(kv))


def _create(args: argparse.Namespace, settings: Settings) -> int:
    try:  # checked before the broker is asked: a typo fails at once, broker or not
        token_request(args.name, args.scopes, args.customer, args.ttl)
    except InvalidTokenRequest as exc:
        raise OrderflowError(_named(exc)) from None
    record, text = asyncio.run(
        _with_store(settings, lambda s: s.create(args.name, args.scopes, args.customer, args.ttl))
    )
    if args.json:
        print(encode({"token": text, **_public(record)}).decode())
        return 0
    print(
        fields(
            [
                ("token", text),
                ("id", record.token_id),
                ("name", record.name),
                ("scopes", ",".join(record.scopes)),
                ("customer", record.customer_id),
                ("expires", stamp(record.expires_at) if record.expires_at else None),
            ]
        )
    )
    print("shown once: only its hash is kept. Use it as `Authorization: Bearer <token>`.")
    return 0


def _named(exc: InvalidTokenRequest) -> str:
    """``--scopes: unknown scope 'x' (known: ...); --ttl: must be ...``: the flag to fix."""
    flag = {"customer_id": "customer"}
    return "; ".join(f"--{flag.get(e.field, e.field)}: {e.message}" for e in exc.errors)


def _list(args: argparse.Namespace, settings: Settings) -> int:
    records = asyncio.run(_with_store(settings, lambda s: s.list()))
    if args.json:
        print(encode([_public(r) for r in records]).decode())
        return 0
    if not records:
        print("(no tokens; create one with orderflow token create --name N --scopes A,B)")
        return 0
    print(
        table(
            ["ID", "NAME", "SCOPES", "CUSTOMER", "CREATED", "EXPIRES", "REVOKED"],
            (
                (
                    r.token_id,
                    r.name,
                    ",".join(r.scopes),
                    r.customer_id,
                    stamp(r.created_at),
                    stamp(r.expires_at),
                    stamp(r.revoked_at),
                )
                for r in records
            ),
        )
    )
    return 0


def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    try:
        record = asyncio.run(_with_store(settings, lambda s: s.revoke(args.token_id)))
    except TokenNotFound as exc:
        print(f"orderflow token revoke: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.json:
        print(encode(_public(record)).decode())
    else:
        print(f"token {record.token_id} ({record.name}) revoked at {stamp(record.revoked_at)}")
    return 0


def _public(record: TokenRecord) -> dict[str, object]:
    """The record as JSON fields (it never holds the hash: ``StoredToken.public``)."""
    return {f: getattr(record, f) for f in TokenRecord.__struct_fields__}
