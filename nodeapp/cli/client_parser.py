"""The command line of the operator's client commands (``nodeapp.cli.client`` runs them).

Kept apart and light: ``orderflow node`` builds this parser too, and should not pay for
importing the HTTP client to start a node.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Final

import msgspec

from nodeapp.orders.model import STEP_NAMES
from nodeapp.security.scopes import SCOPES

CLIENT_COMMANDS: Final = frozenset(
    {"order", "cluster", "inspect", "dlq", "catalog", "token", "readmodel"}
)
EPILOG: Final = (
    "exit codes: 0 ok, 1 no such order, node, dead letter or token, 2 bad arguments (or refused, "
    "token refused included), 3 api or broker unreachable, 4 timed out"
)


class ItemArg(msgspec.Struct, frozen=True):
    product_id: str
    quantity: int


def item(text: str) -> ItemArg:
    """``PRODUCT:QTY``; the product id may itself hold ``:``, so split on the last one."""
    product, sep, quantity = text.rpartition(":")
    if not sep or not product:
        raise argparse.ArgumentTypeError(f"{text!r} is not PRODUCT:QTY (e.g. sku-1:2)")
    try:
        count = int(quantity)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: quantity {quantity!r} is not a whole number"
        ) from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: quantity must be at least 1")
    return ItemArg(product, count)


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def _page_size(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 500:
        raise argparse.ArgumentTypeError(f"must be 1-500, not {text}")
    return value


def _client_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--api-url", default=None, help="the api [ORDERFLOW_API_URL]")
    parent.add_argument("--json", action="store_true", help="print raw JSON (for scripts)")
    return parent


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], node: argparse.ArgumentParser
) -> None:
    """Add the client commands to ``orderflow``'s parser; ``node`` gains an optional ``drain``."""
    client = _client_parent()
    order = sub.add_parser("order", help="submit and follow orders (via the api)", epilog=EPILOG)
    actions = order.add_subparsers(dest="order_action", required=True, metavar="ACTION")

    submit = actions.add_parser("submit", parents=[client], help="submit an order", epilog=EPILOG)
    submit.add_argument("--customer", required=True, help="customer id")
    submit.add_argument(
        "--item", dest="items", type=item, action="append", required=True,
        metavar="PRODUCT:QTY", help="an item; repeat for more",
    )  # fmt: skip
    submit.add_argument("--amount", default=None, help="decimal amount, e.g. 19.99")
    submit.add_argument("--fail-at", choices=STEP_NAMES, default=None, help="force a step to fail")
    submit.add_argument(
        "--poison-at", choices=STEP_NAMES, default=None,
        help="crash every node that reaches this step (fault injection; ends dead-lettered)",
    )  # fmt: skip
    submit.add_argument("--idempotency-key", default=None, help="retry-safe submit key")
    submit.add_argument(
        "--payment-token", default=None,
        help="card token (default tok_ok; tok_decline... is declined, tok_silent... never answers)",
    )  # fmt: skip
    submit.add_argument("--email", default=None, help="notify this e-mail address")
    submit.add_argument("--phone", default=None, help="notify this phone number (+49 30 1234567)")

    for name, text in (
        ("get", "show an order"),
        ("history", "every revision of an order"),
        ("cancel", "cancel an order: no step starts after it, the steps that ran are undone"),
    ):
        actions.add_parser(name, parents=[client], help=text, epilog=EPILOG).add_argument(
            "order_id"
        )
    watch = actions.add_parser(
        "watch", parents=[client], help="follow an order until it ends", epilog=EPILOG
    )
    watch.add_argument("order_id")
    watch.add_argument("--timeout", type=_positive, default=120.0, help="give up after (s)")
    watch.add_argument(
        "--interval", type=_positive, default=0.5, help="reconnect after (s) if the stream drops"
    )

    sub.add_parser(
        "cluster", parents=[client], help="nodes, backlog, buckets (via the api)", epilog=EPILOG
    )
    inspect_cmd = sub.add_parser(
        "inspect", help="streams, consumer, buckets straight from NATS", epilog=EPILOG
    )
    inspect_cmd.add_argument("--nats-url", dest="nats_url", default=None, help="[NATS_URL]")
    inspect_cmd.add_argument("--json", action="store_true", help="print raw JSON")

    _add_dlq(sub, client)
    _add_catalog(sub, client)
    _add_token(sub, EPILOG)
    _add_readmodel(sub, EPILOG)

    node_actions = node.add_subparsers(dest="node_action", metavar="ACTION")
    drain = node_actions.add_parser(
        "drain", parents=[client], help="drain a running node (via the api)", epilog=EPILOG
    )
    drain.add_argument("target_node_id", metavar="NODE_ID")
    drain.add_argument("--wait", action="store_true", help="return once it has left the cluster")
    drain.add_argument(
        "--timeout", type=_positive, default=60.0, help="with --wait: give up after (s)"
    )


def _add_dlq(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], client: argparse.ArgumentParser
) -> None:
    dlq = sub.add_parser("dlq", help="dead letters: list and replay (via the api)", epilog=EPILOG)
    actions = dlq.add_subparsers(dest="dlq_action", required=True, metavar="ACTION")
    ls = actions.add_parser(
        "ls", parents=[client], help="list dead letters, newest first", epilog=EPILOG
    )
    ls.add_argument("--limit", type=_page_size, default=50, help="entries per page (1-500)")
    ls.add_argument("--before", type=int, default=None, help="only entries below this SEQ")
    replay = actions.add_parser(
        "replay",
        parents=[client],
        help="resume a dead-lettered order from where it stood (remove the cause first)",
        epilog=EPILOG,
    )
    replay.add_argument("order_id")


def _add_catalog(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], client: argparse.ArgumentParser
) -> None:
    catalog = sub.add_parser("catalog", help="products: load a file, list", epilog=EPILOG)
    actions = catalog.add_subparsers(dest="catalog_action", required=True, metavar="ACTION")
    load = actions.add_parser(
        "load",
        help="create or update products from a JSON file, straight to the broker",
        description=(
            "FILE is a JSON list of {product_id, name, price, active?, on_hand?}. Products are "
            "created or updated; on_hand sets the stock of a product that has none yet."
        ),
        epilog=EPILOG,
    )
    load.add_argument("file", type=Path, metavar="FILE.json")
    load.add_argument("--nats-url", dest="nats_url", default=None, help="[NATS_URL]")
    load.add_argument("--json", action="store_true", help="print raw JSON")
    ls = actions.add_parser("ls", parents=[client], help="list products (via the api)")
    ls.add_argument("--limit", type=_page_size, default=50, help="products per page (1-500)")
    ls.add_argument("--cursor", default=None, help="the next page's cursor, as printed")


def _add_token(sub: argparse._SubParsersAction[argparse.ArgumentParser], epilog: str) -> None:
    """``token create|list|revoke`` (``nodeapp.cli.tokens`` runs them)."""
    token = sub.add_parser(
        "token", help="API tokens: create, list, revoke (straight to the broker)", epilog=epilog
    )
    actions = token.add_subparsers(dest="token_action", required=True, metavar="ACTION")
    broker = argparse.ArgumentParser(add_help=False)
    broker.add_argument("--nats-url", dest="nats_url", default=None, help="[NATS_URL]")
    broker.add_argument("--json", action="store_true", help="print raw JSON (for scripts)")

    create = actions.add_parser(
        "create", parents=[broker], epilog=epilog,
        help="create a token and print it (once: only its hash is kept)",
    )  # fmt: skip
    create.add_argument("--name", required=True, help="what the token is for (1-64 characters)")
    create.add_argument(
        "--scopes", required=True, metavar="A,B",
        help=f"comma-separated, of: {', '.join(sorted(SCOPES))}",
    )  # fmt: skip
    create.add_argument(
        "--customer", default=None, metavar="CUSTOMER_ID",
        help="only this customer's orders (submit and read)",
    )  # fmt: skip
    create.add_argument(
        "--ttl", type=float, default=None, metavar="SECONDS",
        help="expires after this many seconds (default: never)",
    )  # fmt: skip
    actions.add_parser(
        "list", parents=[broker], epilog=epilog,
        help="every token: id, name, scopes, customer, created, expires, revoked",
    )  # fmt: skip
    revoke = actions.add_parser(
        "revoke", parents=[broker], epilog=epilog, help="revoke a token by its id"
    )
    revoke.add_argument("token_id", metavar="ID")


def _add_readmodel(sub: argparse._SubParsersAction[argparse.ArgumentParser], epilog: str) -> None:
    """``readmodel rebuild`` (``nodeapp.cli.readmodel`` runs it)."""
    readmodel = sub.add_parser(
        "readmodel", help="the api's SQLite read model: rebuild (straight to the broker)",
        epilog=epilog,
    )  # fmt: skip
    actions = readmodel.add_subparsers(dest="readmodel_action", required=True, metavar="ACTION")
    rebuild = actions.add_parser(
        "rebuild", epilog=epilog,
        help="rebuild the read model file from the orders bucket (with the api stopped)",
        description=(
            "Empties the read model file (created if missing) and replays the orders bucket "
            "into it, then prints what it did. Run it with the api that uses the file stopped: "
            "a running one resumes from the rebuilt checkpoint, but lists it serves meanwhile "
            "are incomplete. A file another process keeps locked is refused, left unchanged."
        ),
    )  # fmt: skip
    rebuild.add_argument(
        "--read-db", dest="read_db", default=None, metavar="PATH",
        help="the read model file [ORDERFLOW_READ_DB]",
    )  # fmt: skip
    rebuild.add_argument("--nats-url", dest="nats_url", default=None, help="[NATS_URL]")
    rebuild.add_argument("--json", action="store_true", help="print raw JSON (for scripts)")


def handles(args: argparse.Namespace) -> bool:
    """True for the commands this module runs (``orderflow node`` alone runs a node)."""
    return args.command in CLIENT_COMMANDS or getattr(args, "node_action", None) is not None
