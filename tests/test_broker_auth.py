"""The locked-down broker (issue 9, test 5; ADR 0015): an anonymous connection or a wrong
password is refused; the ``node`` user cannot delete a stream or read the ``tokens`` bucket in
any way (KV get, message get, direct get, a consumer, a subscription) nor another user's
inbox; the ``api`` user cannot delete or purge a stream; and the node's own work goes through
(the fixture's log check fails any test that needed a permission its role lacks, which is how
the rest of the suite shows that the api and the nodes have all they need). Passwords never
show in settings or connection errors; a wrong one is a clear ``NATS_URL`` error.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from nodeapp.broker.connection import auth_options, connect, jetstream
from nodeapp.broker.resources import ORDERS_STREAM
from nodeapp.core.errors import BrokerUnavailable, SettingsError
from nodeapp.core.settings import Settings, load_settings
from nodeapp.local.broker_users import Role
from nodeapp.local.natsserver import NatsServer, free_port
from nodeapp.orders.handles import Handles
from nodeapp.security.bucket import TOKENS_BUCKET
from tests.support.broker_users import TEST_BROKER_USERS, as_role
from tests.support.orders import submit, wait_terminal
from tests.support.processes import NodeProcesses
from tests.support.tokens import mint_token
from tests.support.waiting import wait_for

TOKENS_STREAM = f"KV_{TOKENS_BUCKET}"
QUICK = 1.0  # a refused request gets no answer: the client gives up after this long
ONCE: dict[str, Any] = {"allow_reconnect": False, "max_reconnect_attempts": 1}


class Refusals:
    """The permission violations the server reported to one client (``record`` is its
    nats-py error callback)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.errors.append(str(exc).lower())

    def saw(self, kind: str, subject: str) -> bool:
        """Whether the server refused ``kind`` (publish, subscription) to ``subject``."""
        wanted = f'permissions violation for {kind} to "{subject.lower()}"'
        return any(wanted in error for error in self.errors)

    async def wait(self, kind: str, subject: str) -> None:
        """Until the refusal arrived (nats-py runs the callback in a task of its own)."""

        async def arrived() -> bool:
            return self.saw(kind, subject)

        await wait_for(arrived, within=5)


@contextlib.asynccontextmanager
async def as_user(settings: Settings, role: Role) -> AsyncIterator[tuple[NATS, Refusals]]:
    """A connection as ``role`` (through orderflow's own ``connect``) and its refusals."""
    refusals = Refusals()
    nc = await connect(as_role(settings, role), f"test-{role}", within=5, error_cb=refusals.record)
    try:
        yield nc, refusals
    finally:
        await nc.close()


async def refused(nc: NATS, subject: str, body: bytes = b"") -> None:
    """A request on ``subject`` gets no answer: the server dropped it."""
    with pytest.raises(nats.errors.TimeoutError):
        await nc.request(subject, body, timeout=QUICK)


async def test_anonymous_and_wrong_passwords_are_refused(nats_server: NatsServer) -> None:
    attempts: dict[str, dict[str, Any]] = {
        "anonymous": {},
        "wrong password": {"user": "node", "password": "pWrong" + "0" * 20},
        "unknown user": {"user": "root", "password": TEST_BROKER_USERS.passwords["admin"]},
    }
    for auth in attempts.values():
        nc = NATS()
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nc.connect(
                nats_server.url, allow_reconnect=False, max_reconnect_attempts=1, **auth
            )
        await nc.close()  # nats-py leaves the refused socket open otherwise


async def test_orderflow_says_which_user_was_refused(nats_server: NatsServer) -> None:
    wrong = "pWrong" + "0" * 20
    for url, said in (
        (nats_server.url, "the broker refused a connection without a user"),
        (f"nats://node:{wrong}@127.0.0.1:{nats_server.port}", "the broker refused user 'node'"),
    ):
        with pytest.raises(SettingsError) as refused_as:
            await connect(Settings(nats_url=url), "test", within=5, **ONCE)
        assert str(refused_as.value).startswith(f"NATS_URL: {said}")
        assert wrong not in str(refused_as.value)


@pytest.mark.broker_violations
async def test_the_node_cannot_delete_streams_nor_read_tokens(
    broker: Handles, settings: Settings
) -> None:
    token = await mint_token(broker, settings, "ops")
    token_id = token.split("_")[1]
    key_subject = f"$KV.{TOKENS_BUCKET}.{token_id}"
    async with as_user(settings, "node") as (nc, refusals):
        js = jetstream(nc, settings)
        for stream in (ORDERS_STREAM, TOKENS_STREAM):
            await refused(nc, f"$JS.API.STREAM.DELETE.{stream}")
            await refusals.wait("publish", f"$JS.API.STREAM.DELETE.{stream}")
        with pytest.raises(nats.errors.TimeoutError):
            await js.key_value(TOKENS_BUCKET)  # opening the bucket asks for its stream info
        get = json.dumps({"last_by_subj": key_subject}).encode()
        reads = {
            f"$JS.API.STREAM.INFO.{TOKENS_STREAM}": b"",
            f"$JS.API.STREAM.MSG.GET.{TOKENS_STREAM}": get,
            f"$JS.API.DIRECT.GET.{TOKENS_STREAM}": get,
            f"$JS.API.DIRECT.GET.{TOKENS_STREAM}.{key_subject}": b"",
            f"$JS.API.CONSUMER.CREATE.{TOKENS_STREAM}": b"{}",
            f"$JS.API.STREAM.PURGE.{ORDERS_STREAM}": b"",
        }
        for subject, body in reads.items():
            await refused(nc, subject, body)
            await refusals.wait("publish", subject)
        for subject in (f"$KV.{TOKENS_BUCKET}.>", "_INBOX_api.>", "_INBOX.>"):
            await nc.subscribe(subject)
            await refusals.wait("subscription", subject)
    # Nothing changed, and the api's user can read what the node's cannot.
    assert (await broker.js.stream_info(ORDERS_STREAM)).config.name == ORDERS_STREAM
    async with as_user(settings, "api") as (nc, refusals):
        kv = await jetstream(nc, settings).key_value(TOKENS_BUCKET)
        assert (await kv.get(token_id)).value
        assert refusals.errors == []


@pytest.mark.broker_violations
async def test_the_api_cannot_delete_or_purge_streams(broker: Handles, settings: Settings) -> None:
    async with as_user(settings, "api") as (nc, refusals):
        js = jetstream(nc, settings)
        for stream in (ORDERS_STREAM, TOKENS_STREAM, "KV_orders"):
            with pytest.raises(nats.errors.TimeoutError):
                await js.delete_stream(stream)
            await refusals.wait("publish", f"$JS.API.STREAM.DELETE.{stream}")
        await refused(nc, f"$JS.API.STREAM.PURGE.{ORDERS_STREAM}")
        await refused(nc, f"$JS.API.STREAM.UPDATE.{ORDERS_STREAM}", b"{}")
        await refused(nc, f"$JS.API.CONSUMER.DELETE.{ORDERS_STREAM}.workers")
    info = await broker.js.consumer_info(ORDERS_STREAM, "workers")
    assert info.name == "workers"


async def test_a_node_process_with_its_own_user_completes_an_order(
    broker: Handles, node_processes: NodeProcesses
) -> None:
    node = node_processes.start("node-auth")
    order_id = await submit(broker.intake)
    order = await wait_terminal(broker.store, order_id, within=30)
    assert order.status == "completed", order.failure
    assert "NATS_URL" not in "\n".join(node.log_lines())


async def test_passwords_never_show(nats_server: NatsServer, settings: Settings) -> None:
    password = TEST_BROKER_USERS.passwords["admin"]
    assert password in settings.nats_url
    assert password not in repr(settings)
    assert settings.nats_url_shown == f"nats://admin:***@127.0.0.1:{nats_server.port}"
    away = TEST_BROKER_USERS.url("admin", f"nats://127.0.0.1:{free_port()}")
    with pytest.raises(BrokerUnavailable) as failed:
        await connect(
            Settings(nats_url=away),
            "test",
            within=2,
            allow_reconnect=False,
            max_reconnect_attempts=1,
        )
    assert password not in str(failed.value)
    assert "admin:***@" in str(failed.value)


def test_one_process_is_one_broker_user() -> None:
    with pytest.raises(SettingsError, match="NATS_URL: every server must name the same user"):
        load_settings({"NATS_URL": "nats://api:pA1@h-1:4222,nats://node:pB2@h-2:4222"})
    both = load_settings({"NATS_URL": "nats://api:p%40A1@h-1:4222,nats://api:p%40A1@h-2:4222"})
    assert auth_options(both.nats_url) == {
        "servers": ["nats://h-1:4222", "nats://h-2:4222"],
        "user": "api",
        "password": "p@A1",
        "inbox_prefix": "_INBOX_api",
    }
    assert auth_options("nats://h:4222") == {"servers": ["nats://h:4222"]}
