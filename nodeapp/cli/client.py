"""The operator's client commands: ``order submit|get|watch|history|cancel``, ``cluster``,
``node drain``, ``dlq ls|replay``, ``catalog ls`` (over the api, ``--api-url`` /
``ORDERFLOW_API_URL``, with ``Authorization: Bearer`` ``ORDERFLOW_TOKEN`` or else
``ORDERFLOW_ADMIN_TOKEN``), ``inspect``, ``catalog load``, ``token create|list|revoke`` and
``readmodel rebuild`` (straight to NATS). Their parser is ``nodeapp.cli.client_parser``.

Tables for people, ``--json`` for scripts. Exit codes: 0 done, 1 no such order, node, dead
letter or token, 2 bad arguments or a request the api refused (a replay or a cancel of a
finished order, a token it does not accept, say), 3 api or broker unreachable (or answering
5xx), 4 ``watch`` or ``drain --wait`` timed out. Errors are one line on stderr, never a
traceback (nor a token).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Final
from urllib.parse import quote, urlsplit

import msgspec

from nodeapp.cli import catalog, readmodel, tokens
from nodeapp.cli.apiclient import ApiClient, ApiProblem, ApiUnreachable, token_to_send
from nodeapp.cli.inspection import inspect_at
from nodeapp.cli.render import (
    cluster_text,
    dlq_text,
    history_text,
    inspection_text,
    order_text,
)
from nodeapp.cli.watch import TimedOut, watch
from nodeapp.cluster.control import DrainReply
from nodeapp.cluster.dead_letter_admin import DeadLetterPage, Replayed
from nodeapp.cluster.membership import Heartbeat
from nodeapp.cluster.view import ClusterView
from nodeapp.core.errors import BrokerUnavailable, OrderflowError
from nodeapp.core.settings import Settings
from nodeapp.orders.model import Order, encode, utcnow
from nodeapp.orders.timeline import Revision

EXIT_NOT_FOUND: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3
EXIT_TIMEOUT: Final = 4


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run a client command; every failure becomes a message on stderr and an exit code."""
    _quiet_libraries(settings)
    name = _command_name(args)
    api_url = getattr(args, "api_url", None) or settings.api_url
    if name not in DIRECT and not _is_http_url(api_url):
        return _fail(name, f"api URL {api_url!r} is not an http(s) URL", EXIT_USAGE)
    try:
        if name in DIRECT:
            return DIRECT[name](args, settings)
        with ApiClient(api_url, token_to_send(settings)) as api:
            return COMMANDS[name](api, args)
    except ApiUnreachable as exc:
        return _fail(name, f"{exc} (is `orderflow api` running? set --api-url)", EXIT_UNAVAILABLE)
    except ApiProblem as exc:
        if exc.status in (401, 403):
            return _fail(name, _refused_text(exc, settings), EXIT_USAGE)
        return _fail(name, _problem_text(exc), _exit_code(exc.status))
    except BrokerUnavailable as exc:
        return _fail(name, f"broker unavailable: {exc}", EXIT_UNAVAILABLE)
    except OrderflowError as exc:  # refused input (a bad catalog file, say)
        return _fail(name, str(exc), EXIT_USAGE)
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as other Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _command_name(args: argparse.Namespace) -> str:
    if args.command == "order":
        return f"order {args.order_action}"
    if args.command == "node":
        return f"node {args.node_action}"
    if args.command == "dlq":
        return f"dlq {args.dlq_action}"
    if args.command == "catalog":
        return f"catalog {args.catalog_action}"
    if args.command == "token":
        return f"token {args.token_action}"
    if args.command == "readmodel":
        return f"readmodel {args.readmodel_action}"
    return str(args.command)


def _quiet_libraries(settings: Settings) -> None:
    """A person reads stdout/stderr: no per-request or reconnect log lines unless debugging."""
    if settings.log_level.upper() != "DEBUG":
        for name in ("httpx", "httpcore", "orderflow.broker", "orderflow.security"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _fail(name: str, message: str, code: int) -> int:
    print(f"orderflow {name}: {message}", file=sys.stderr)
    return code


def _exit_code(status: int) -> int:
    if status == 404:
        return EXIT_NOT_FOUND
    return EXIT_USAGE if status < 500 else EXIT_UNAVAILABLE


def _refused_text(exc: ApiProblem, settings: Settings) -> str:
    """One line for a 401 or 403 that says which token was sent (by variable, never its text)
    and what to do about it."""
    token = token_to_send(settings)
    sent = "ORDERFLOW_TOKEN" if settings.token else "ORDERFLOW_ADMIN_TOKEN"
    detail = exc.detail.replace(token, "***") if token else exc.detail  # never echoed; still
    if exc.status == 403:
        return f"forbidden: {detail} (the token in {sent}; ask for one with that scope)"
    if not token:
        return (
            "the api needs a token: set ORDERFLOW_TOKEN (`orderflow token create`, or the "
            "admin token `orderflow up` keeps in <data dir>/admin-token)"
        )
    reason = detail.split(";", 1)[0]  # "API token revoked", without the api's how-to
    return f"unauthorized: {reason} (the token in {sent}); set ORDERFLOW_TOKEN to a valid one"


def _problem_text(exc: ApiProblem) -> str:
    """The problem's detail, plus each field error it does not already spell out."""
    extra = [e for e in exc.errors if e.message not in exc.detail]
    return exc.detail + "".join(f"\n  {e.field}: {e.message}" for e in extra)


def _emit(args: argparse.Namespace, value: object, human: Callable[[], str]) -> None:
    print(encode(value).decode() if args.json else human())


class Accepted(msgspec.Struct, frozen=True):
    """The api's answer to ``POST /orders``."""

    order_id: str
    status: str
    start_time: str


def _submit(api: ApiClient, args: argparse.Namespace) -> int:
    body: dict[str, object] = {
        "customer_id": args.customer,
        "items": [{"product_id": i.product_id, "quantity": i.quantity} for i in args.items],
    }
    if args.amount is not None:
        body["amount"] = args.amount
    if args.fail_at is not None:
        body["fail_at"] = args.fail_at
    if args.poison_at is not None:
        body["poison_at"] = args.poison_at
    if args.payment_token is not None:
        body["payment_token"] = args.payment_token
    contact = {k: v for k, v in (("email", args.email), ("phone", args.phone)) if v is not None}
    if contact:
        body["contact"] = contact
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    response = api.send("POST", "/orders", json=body, headers=headers)
    accepted = api.decode(response, Accepted)
    if args.json:
        print(encode(accepted).decode())
        return 0
    replayed = response.headers.get("Idempotent-Replayed") == "true"
    note = " (replayed: this Idempotency-Key created it before)" if replayed else ""
    print(f"order {accepted.order_id} {accepted.status} at {accepted.start_time}{note}")
    print(f"follow it: orderflow order watch {accepted.order_id}")
    return 0


def _path(*parts: str) -> str:
    """An api path with each id escaped: a mistyped id must not turn into another route."""
    return "/" + "/".join(quote(p, safe="") for p in parts)


def _get(api: ApiClient, args: argparse.Namespace) -> int:
    order = api.get(_path("orders", args.order_id), Order)
    _emit(args, order, lambda: order_text(order))
    return 0


def _history(api: ApiClient, args: argparse.Namespace) -> int:
    revisions = api.get(_path("orders", args.order_id, "history"), list[Revision])
    _emit(args, revisions, lambda: history_text(revisions))
    return 0


def _cancel(api: ApiClient, args: argparse.Namespace) -> int:
    order = api.post(_path("orders", args.order_id, "cancel"), Order)
    text = f"order {order.order_id} cancelled: no step had started"
    if not order.terminal:
        text = (
            f"order {order.order_id}: cancel accepted; it stops once {order.current_step} "
            f"ends and undoes what ran\nfollow it: orderflow order watch {order.order_id}"
        )
    _emit(args, order, lambda: text)
    return 0


def _watch(api: ApiClient, args: argparse.Namespace) -> int:
    """Follow the order's event stream until it ends (``nodeapp.cli.watch``)."""
    try:
        return watch(api, args)
    except TimedOut as exc:
        where = f"still {exc.seen.status} ({exc.seen.current_step})" if exc.seen else "not seen"
        message = f"order {args.order_id} {where} after {args.timeout:g}s"
        return _fail("order watch", message, EXIT_TIMEOUT)


def _cluster(api: ApiClient, args: argparse.Namespace) -> int:
    view = api.get("/cluster", ClusterView)
    _emit(args, view, lambda: cluster_text(view, utcnow()))
    return 0


def _drain(api: ApiClient, args: argparse.Namespace) -> int:
    """Ask for the drain; with ``--wait``, poll until the node has left the registry."""
    node_id = args.target_node_id
    reply = api.post(_path("cluster", "nodes", node_id, "drain"), DrainReply)
    _emit(
        args,
        reply,
        lambda: (
            f"node {reply.node_id} is {reply.state}: it finishes each order's current "
            "step, hands the rest back, then exits"
        ),
    )
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            api.get(_path("cluster", "nodes", node_id), Heartbeat)
        except ApiProblem as exc:
            if exc.status != 404:
                raise
            if not args.json:
                print(f"node {node_id} has left the cluster")
            return 0
        if time.monotonic() >= deadline:
            message = f"node {node_id} still registered after {args.timeout:g}s"
            return _fail("node drain", message, EXIT_TIMEOUT)
        time.sleep(0.5)


def _dlq_ls(api: ApiClient, args: argparse.Namespace) -> int:
    params = {"limit": args.limit} | ({"before": args.before} if args.before else {})
    page = api.decode(api.send("GET", "/dlq", params=params), DeadLetterPage)
    _emit(args, page, lambda: dlq_text(page))
    return 0


def _dlq_replay(api: ApiClient, args: argparse.Namespace) -> int:
    replayed = api.post(_path("dlq", args.order_id, "replay"), Replayed)
    _emit(
        args,
        replayed,
        lambda: (
            f"order {replayed.order_id} replayed: {replayed.status} at {replayed.current_step}, "
            f"dead letter {replayed.dead_letter_seq} removed\n"
            f"follow it: orderflow order watch {replayed.order_id}"
        ),
    )
    return 0


def _inspect(args: argparse.Namespace, settings: Settings) -> int:
    report = asyncio.run(inspect_at(settings))
    _emit(args, report, lambda: inspection_text(report))
    return EXIT_NOT_FOUND if report.missing else 0


COMMANDS: Final[dict[str, Callable[[ApiClient, argparse.Namespace], int]]] = {
    "order submit": _submit,
    "order get": _get,
    "order history": _history,
    "order watch": _watch,
    "order cancel": _cancel,
    "cluster": _cluster,
    "node drain": _drain,
    "dlq ls": _dlq_ls,
    "dlq replay": _dlq_replay,
    "catalog ls": catalog.ls,
}
# Commands that talk to the broker, not the api.
DIRECT: Final[dict[str, Callable[[argparse.Namespace, Settings], int]]] = {
    "inspect": _inspect,
    "catalog load": catalog.load,
    "token create": tokens.run,
    "token list": tokens.run,
    "token revoke": tokens.run,
    "readmodel rebuild": readmodel.rebuild,
}
