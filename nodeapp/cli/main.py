"""The ``orderflow`` command: ``up`` (all-in-one), ``api``, ``node``, ``payments`` (the
simulated gateway alone), ``init``, and the operator's client commands (``order``, ``cluster``,
``node drain``, ``dlq``, ``catalog``, ``inspect``, ``token``, ``readmodel``) from
``nodeapp.cli.client_parser`` and ``nodeapp.cli.client``.

Flags mirror the environment variables (a flag wins over its variable); errors are one clear
line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from nodeapp import __version__
from nodeapp.cli import client_parser
from nodeapp.core.errors import OrderflowError
from nodeapp.core.logs import configure_logging
from nodeapp.core.settings import Settings, load_settings

GATEWAY_PORT: Final = 8001  # ``orderflow payments``' default listen port

# flag -> (settings field, type, help)
SETTING_FLAGS: dict[str, tuple[str, type, str]] = {
    "--nats-url": ("nats_url", str, "broker URL(s), comma-separated [NATS_URL]"),
    "--step-seconds": ("step_seconds", float, "duration of each step [ORDERFLOW_STEP_SECONDS]"),
    "--failure-rate": ("failure_rate", float, "failure probability per step"),
    "--concurrency": ("concurrency", int, "orders in flight per node [ORDERFLOW_CONCURRENCY]"),
    "--ack-wait": ("ack_wait", float, "JetStream ack wait, seconds [ORDERFLOW_ACK_WAIT]"),
    "--lease-seconds": ("lease_seconds", float, "ownership lease [ORDERFLOW_LEASE_SECONDS]"),
    "--replicas": ("replicas", int, "stream/bucket replicas [ORDERFLOW_REPLICAS]"),
    "--api-host": ("api_host", str, "api listen address [ORDERFLOW_API_HOST]"),
    "--api-port": ("api_port", int, "api listen port [ORDERFLOW_API_PORT]"),
    "--log-level": ("log_level", str, "DEBUG, INFO, WARNING... [ORDERFLOW_LOG_LEVEL]"),
    "--log-format": ("log_format", str, "json or console [ORDERFLOW_LOG_FORMAT]"),
}


def _settings_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("settings (override the environment)")
    for flag, (field, kind, help_text) in SETTING_FLAGS.items():
        group.add_argument(flag, dest=field, type=kind, default=None, help=help_text)
    group.add_argument(
        "--fault-injection",
        dest="fault_injection",
        action="store_const",
        const=True,
        default=None,
        help="accept fail_at on orders [ORDERFLOW_FAULT_INJECTION=1]",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    parent = _settings_parent()
    parser = argparse.ArgumentParser(
        prog="orderflow", description="Distributed order processing on NATS JetStream."
    )
    parser.add_argument("--version", action="version", version=f"orderflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        parents=[parent],
        help="run nats-server, the api and nodes locally, restarting any that crash",
    )
    up.add_argument("--nodes", type=int, default=1, help="node processes to start (default 1)")
    up.add_argument("--port", type=int, default=None, help="nats-server port (default: NATS_URL's)")
    up.add_argument("--data-dir", type=Path, default=Path("data"), help="broker data folder")
    up.add_argument(
        "--config", type=Path, default=None, help="nats-server config (default: the packaged one)"
    )
    up.add_argument(
        "--no-demo", dest="demo", action="store_false",
        help="do not load the demo catalog into an empty catalog",
    )  # fmt: skip

    sub.add_parser("api", parents=[parent], help="run the HTTP api")
    payments = sub.add_parser(
        "payments",
        parents=[parent],
        help="run the simulated payment gateway alone (point ORDERFLOW_PAYMENT_URL at it)",
    )
    payments.add_argument(
        "--port",
        type=int,
        default=GATEWAY_PORT,
        help=f"listen port (default {GATEWAY_PORT}; host: --api-host)",
    )
    node = sub.add_parser("node", parents=[parent], help="run a worker node")
    node.add_argument("--node-id", default=None, help="node id (default: host-pid-random)")
    sub.add_parser(
        "init", parents=[parent], help="create the streams, consumers and buckets (shop's too)"
    )
    client_parser.add_commands(sub, node)
    return parser


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        field: getattr(args, field, None) for field, _, _ in SETTING_FLAGS.values()
    }
    overrides["fault_injection"] = getattr(args, "fault_injection", None)
    overrides["read_db"] = getattr(args, "read_db", None)  # ``readmodel rebuild --read-db``
    if args.command == "up" and overrides["log_format"] is None:
        # A person is watching: readable lines unless the environment asks for JSON.
        overrides["log_format"] = os.environ.get("ORDERFLOW_LOG_FORMAT") or "console"
    return load_settings(**overrides)


def _run(coro: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        asyncio.run(coro)


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, Settings]:
    """Parse a command line into its arguments and the settings they and the environment give."""
    args = build_parser().parse_args(argv)
    return args, _settings_from(args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        settings = _settings_from(args)
        configure_logging(settings.log_level, settings.log_format)
        return _dispatch(args, settings, argv)
    except OrderflowError as exc:
        print(f"orderflow {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings, argv: list[str]) -> int:
    if client_parser.handles(args):
        from nodeapp.cli import client

        return client.run(args, settings)
    if args.command == "node":
        from nodeapp.cli.node import serve_node
        from nodeapp.core.tracing import configure_tracing, shutdown_tracing

        configure_tracing("orderflow-node")
        try:
            _run(serve_node(settings, args.node_id))
        finally:
            shutdown_tracing()
        return 0
    if args.command == "init":
        from nodeapp.shop.provisioning import init_resources

        _run(init_resources(settings))
        print(f"JetStream resources ready on {settings.nats_url_shown}")
        return 0
    if args.command == "payments":
        from nodeapp.cli.payments import serve_gateway

        _run(serve_gateway(settings, args.port))
        return 0
    if args.command == "api":
        # The api package depends on nodeapp, never the reverse: hand over to its entry point.
        os.execv(sys.executable, [sys.executable, "-m", "api", *argv])
    if args.command == "up":
        from nodeapp.local.up import run_up

        return run_up(settings, args.nodes, args.port, args.data_dir, args.config, demo=args.demo)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
