"""API tokens on a real nats-server: the store, verification, the cache following revocations,
scopes, the rate limiter, the security settings, and no token ever stored or logged in clear."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from nodeapp.broker.connection import connection, jetstream
from nodeapp.broker.kv import each_entry
from nodeapp.core.errors import (
    BrokerUnavailable,
    InvalidTokenRequest,
    OrderflowError,
    RateLimited,
    SettingsError,
    TokenNotFound,
    Unauthenticated,
)
from nodeapp.core.settings import Settings, load_settings
from nodeapp.orders.handles import Handles
from nodeapp.security.bootstrap import ADMIN_TOKEN_FILE, keep_admin_token
from nodeapp.security.bucket import TOKENS_BUCKET, ensure_tokens_bucket
from nodeapp.security.cache import TokenCache
from nodeapp.security.ratelimit import RateLimiter
from nodeapp.security.scopes import (
    ADMIN,
    ADMIN_TOKEN_ID,
    CATALOG_WRITE,
    OPS,
    ORDERS_READ,
    ORDERS_WRITE,
    SCOPES,
    Principal,
    parse_scopes,
)
from nodeapp.security.store import TokenStore
from nodeapp.security.tokens import hash_secret, parse_token
from tests.support.waiting import wait_for

ADMIN_SECRET = "admin-" + "x" * 40


@pytest.fixture
async def tokens_kv(broker: Handles, settings: Settings) -> KeyValue:
    return await ensure_tokens_bucket(broker.js, settings)


@pytest.fixture
def store(tokens_kv: KeyValue) -> TokenStore:
    return TokenStore(tokens_kv)


@contextlib.asynccontextmanager
async def cache_for(broker: Handles, settings: Settings) -> AsyncIterator[TokenCache]:
    async with TokenCache(lambda: broker.js, settings) as cache:
        yield cache


async def refusal(cache: TokenCache, presented: str | None) -> str:
    """The reason ``presented`` is refused; fails the test if it is accepted."""
    with pytest.raises(Unauthenticated) as caught:
        await cache.verify(presented)
    assert caught.value.reason in str(caught.value)
    return caught.value.reason


async def test_create_shows_the_token_once_and_stores_only_its_hash(
    store: TokenStore, tokens_kv: KeyValue
) -> None:
    record, text = await store.create("ci", "orders:read, ops", customer="cust-1", ttl=60)
    token_id, secret = parse_token(text)
    assert text == f"of_{token_id}_{secret}"
    assert len(secret) == 43  # secrets.token_urlsafe(32): 256 bits
    assert record.token_id == token_id
    assert (record.name, record.scopes, record.customer_id) == ("ci", [OPS, ORDERS_READ], "cust-1")
    assert record.expires_at is not None
    assert record.expires_at - record.created_at == timedelta(seconds=60)
    assert record.revoked_at is None

    stored = msgspec.json.decode((await tokens_kv.get(token_id)).value or b"null")
    assert stored["secret_hash"] == hash_secret(secret)
    assert set(stored) == {
        "token_id", "name", "scopes", "customer_id", "created_at", "expires_at", "revoked_at",
        "secret_hash",
    }  # fmt: skip
    assert [r.token_id for r in await store.list()] == [token_id]
    assert "secret_hash" not in msgspec.json.decode(msgspec.json.encode(record))


async def test_create_refuses_bad_requests_naming_every_field(store: TokenStore) -> None:
    with pytest.raises(InvalidTokenRequest) as caught:
        await store.create("", "orders:read,orders:delete", customer="no spaces", ttl=-1)
    fields = {e.field: e.message for e in caught.value.errors}
    assert set(fields) == {"name", "scopes", "customer_id", "ttl"}
    assert "'orders:delete'" in fields["scopes"]
    assert "orders:read" in fields["scopes"]
    with pytest.raises(InvalidTokenRequest, match="at least one scope"):
        await store.create("empty", "")
    assert await store.list() == []


async def test_every_refusal_says_why(
    broker: Handles, settings: Settings, store: TokenStore, tokens_kv: KeyValue
) -> None:
    _, good = await store.create("good", [ORDERS_READ])
    _, revoked = await store.create("revoked", [ORDERS_READ])
    await store.revoke(parse_token(revoked)[0])
    past = datetime.now(UTC) - timedelta(hours=1)
    _, expired = await TokenStore(tokens_kv, clock=lambda: past).create("old", [OPS], ttl=60)
    token_id, secret = parse_token(good)
    async with cache_for(broker, settings) as cache:
        assert await refusal(cache, None) == "missing"
        assert await refusal(cache, "") == "missing"
        assert await refusal(cache, "not-a-token") == "malformed"
        assert await refusal(cache, good + "x") == "malformed"
        assert await refusal(cache, f"of_{'0' * 16}_{secret}") == "unknown"
        # the right id with another secret is unknown too: the state is told only to its holder
        assert await refusal(cache, f"of_{token_id}_{'A' * 43}") == "unknown"
        assert await refusal(cache, revoked) == "revoked"
        assert await refusal(cache, expired) == "expired"
        principal = await cache.verify(good)
    assert principal == Principal(
        token_id=token_id, name="good", scopes=frozenset({ORDERS_READ}), customer_id=None
    )


async def test_the_admin_token_from_settings_is_an_admin(
    broker: Handles, settings: Settings
) -> None:
    admin_settings = msgspec.structs.replace(settings, admin_token=ADMIN_SECRET)
    async with cache_for(broker, admin_settings) as cache:
        principal = await cache.verify(ADMIN_SECRET)
        assert principal.token_id == ADMIN_TOKEN_ID
        assert principal.allows(ORDERS_WRITE)
        assert principal.allows(CATALOG_WRITE, OPS)
        assert await refusal(cache, ADMIN_SECRET[:-1]) == "malformed"
    async with cache_for(broker, settings) as cache:  # unset: no bootstrap admin at all
        assert await refusal(cache, ADMIN_SECRET) == "malformed"


async def test_a_session_checks_its_token_by_id(
    broker: Handles, settings: Settings, store: TokenStore, tokens_kv: KeyValue
) -> None:
    """A console session keeps the id of a token verified at login; ``standing`` says where
    that token stands now, so revoking or expiring it ends the session."""
    _, good = await store.create("good", [ORDERS_READ], customer="cust-1")
    past = datetime.now(UTC) - timedelta(hours=1)
    _, expired = await TokenStore(tokens_kv, clock=lambda: past).create("old", [OPS], ttl=60)
    token_id = parse_token(good)[0]
    admin_settings = msgspec.structs.replace(settings, admin_token=ADMIN_SECRET)
    async with cache_for(broker, admin_settings) as cache:
        assert await cache.standing(token_id) == await cache.verify(good)
        assert (await cache.standing(ADMIN_TOKEN_ID)).token_id == ADMIN_TOKEN_ID
        await store.revoke(token_id)

        wrong: dict[str | None, str] = {
            None: "missing", "": "missing", "0" * 16: "unknown", "no such id": "unknown",
            parse_token(expired)[0]: "expired",
        }  # fmt: skip
        for presented, reason in wrong.items():
            with pytest.raises(Unauthenticated, match=reason):
                await cache.standing(presented)
        assert await wait_for(lambda: _revoked(cache, token_id), within=2.0) == "revoked"
    no_admin = msgspec.structs.replace(settings, admin_token="")
    async with cache_for(broker, no_admin) as cache:  # no bootstrap admin: its id is nobody
        with pytest.raises(Unauthenticated, match="unknown"):
            await cache.standing(ADMIN_TOKEN_ID)


async def _revoked(cache: TokenCache, token_id: str) -> str | None:
    try:
        await cache.standing(token_id)
    except Unauthenticated as exc:
        return exc.reason
    return None


async def test_revocation_reaches_a_second_process_within_two_seconds(
    broker: Handles, settings: Settings, store: TokenStore
) -> None:
    record, text = await store.create("deploy", [ORDERS_WRITE])
    async with (
        connection(settings, "tests-second-api") as nc,
        TokenCache(lambda: jetstream(nc, settings), settings) as other,
        cache_for(broker, settings) as own,
    ):
        assert (await other.verify(text)).token_id == record.token_id
        assert (await own.verify(text)).token_id == record.token_id

        revoked = await store.revoke(record.token_id)
        assert revoked.revoked_at is not None

        async def refused_everywhere() -> bool:
            reasons = [await refusal_or_none(cache, text) for cache in (other, own)]
            return reasons == ["revoked", "revoked"]

        await wait_for(refused_everywhere, within=2.0, interval=0.02)
        assert other.following


async def refusal_or_none(cache: TokenCache, presented: str) -> str | None:
    try:
        await cache.verify(presented)
    except Unauthenticated as exc:
        return exc.reason
    return None


async def test_a_token_created_elsewhere_verifies_at_once_and_a_deleted_one_is_dropped(
    broker: Handles, settings: Settings, store: TokenStore, tokens_kv: KeyValue
) -> None:
    async with cache_for(broker, settings) as cache:
        _, text = await store.create("fresh", [ORDERS_READ])
        assert (await cache.verify(text)).name == "fresh"  # a miss reads the bucket
        await tokens_kv.delete(parse_token(text)[0])

        async def dropped() -> bool:
            return await refusal_or_none(cache, text) == "unknown"

        await wait_for(dropped, within=2.0, interval=0.02)


async def test_without_the_broker_only_the_admin_token_verifies(settings: Settings) -> None:
    def down() -> JetStreamContext:
        raise BrokerUnavailable("not connected to the broker yet")

    admin_settings = msgspec.structs.replace(settings, admin_token=ADMIN_SECRET)
    async with TokenCache(down, admin_settings) as cache:
        assert (await cache.verify(ADMIN_SECRET)).token_id == ADMIN_TOKEN_ID
        with pytest.raises(BrokerUnavailable):  # the api answers 503, not 401
            await cache.verify(f"of_{'0' * 16}_{'A' * 43}")
        assert not cache.following


async def test_the_cache_closes_promptly_wherever_it_is_in_starting(
    broker: Handles, settings: Settings
) -> None:
    """nats-py swallows a cancellation landing in its flush; closing must not hang on it."""
    for steps in range(30):
        async with asyncio.timeout(5.0), cache_for(broker, settings):
            for _ in range(steps):
                await asyncio.sleep(0)  # let the watcher get a little further each round


async def test_revoke_keeps_the_first_time_and_refuses_unknown_ids(store: TokenStore) -> None:
    record, _ = await store.create("twice", [OPS])
    first = await store.revoke(record.token_id)
    assert (await store.revoke(record.token_id)).revoked_at == first.revoked_at
    with pytest.raises(TokenNotFound):
        await store.revoke("0123456789abcdef")
    with pytest.raises(TokenNotFound):
        await store.revoke("../not-an-id")
    [listed] = await store.list()
    assert listed.revoked_at == first.revoked_at


async def test_no_token_is_stored_or_logged_in_clear(
    broker: Handles, settings: Settings, store: TokenStore, tokens_kv: KeyValue,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    texts = [(await store.create(f"t{i}", [ORDERS_READ], ttl=60 * (i + 1)))[1] for i in range(3)]
    await store.revoke(parse_token(texts[0])[0])
    async with cache_for(broker, settings) as cache:
        for text in texts:
            await refusal_or_none(cache, text)
            await refusal_or_none(cache, text[:-1] + "!")
    secrets = [parse_token(t)[1] for t in texts]
    async with contextlib.aclosing(each_entry(tokens_kv, include_history=True)) as entries:
        stored = [entry.value or b"" async for entry in entries]
    assert len(stored) == 3
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "created" in logged
    assert "revoked" in logged
    for secret in secrets:
        assert all(secret.encode() not in value for value in stored)
        assert secret not in logged
    assert (await tokens_kv.status()).bucket == TOKENS_BUCKET


def test_scopes_are_flat_except_admin() -> None:
    assert parse_scopes("orders:write, ops") == {ORDERS_WRITE, OPS}
    with pytest.raises(InvalidTokenRequest, match="'orders:admin'"):
        parse_scopes(["orders:admin"])
    for scope in SCOPES - {ADMIN}:
        one = Principal(token_id="t", name="n", scopes=frozenset({scope}))
        assert one.allows(scope)
        assert one.allows()
        assert not any(one.allows(other) for other in SCOPES - {scope})
    admin = Principal(token_id="t", name="n", scopes=frozenset({ADMIN}))
    assert all(admin.allows(scope) for scope in SCOPES)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_allows_a_burst_of_twice_the_rate_then_refills() -> None:
    clock = FakeClock()
    limiter = RateLimiter(5.0, clock=clock)
    for _ in range(10):
        limiter.take("a")
    with pytest.raises(RateLimited) as caught:
        limiter.take("a")
    assert caught.value.retry_after == pytest.approx(0.2)
    limiter.take("b")  # another token is unaffected
    clock.now += 0.2
    limiter.take("a")
    with pytest.raises(RateLimited):
        limiter.take("a")


def test_rate_limit_memory_is_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, max_buckets=100, clock=clock)
    for i in range(1000):
        limiter.take(f"t{i}")
    assert len(limiter) == 100
    clock.now += 2.0  # every bucket has refilled: none is worth keeping
    limiter.take("late")
    assert len(limiter) == 1


def test_security_settings_parse_validate_and_stay_secret() -> None:
    env = {
        "ORDERFLOW_ADMIN_TOKEN": ADMIN_SECRET,
        "ORDERFLOW_RATE_LIMIT": "50",
        "ORDERFLOW_TOKEN": "of_0123456789abcdef_" + "s" * 43,
    }
    settings = load_settings(env)
    assert (settings.admin_token, settings.rate_limit) == (ADMIN_SECRET, 50.0)
    assert settings.token == env["ORDERFLOW_TOKEN"]
    assert ADMIN_SECRET not in repr(settings)
    assert env["ORDERFLOW_TOKEN"] not in repr(settings)
    assert load_settings({}).rate_limit == 200.0
    for name, value in [
        ("ORDERFLOW_ADMIN_TOKEN", "short"),
        ("ORDERFLOW_ADMIN_TOKEN", "x" * 40 + " y"),
        ("ORDERFLOW_RATE_LIMIT", "0"),
        ("ORDERFLOW_TOKEN", "two words"),
    ]:
        with pytest.raises(SettingsError) as caught:
            load_settings({name: value})
        assert caught.value.variable == name
        assert "TOKEN" not in name or value not in str(caught.value)  # a secret is never shown


def test_up_keeps_one_admin_token_readable_only_by_its_owner(tmp_path: Path) -> None:
    token, created = keep_admin_token(tmp_path / "data")
    assert created
    assert load_settings({"ORDERFLOW_ADMIN_TOKEN": token}).admin_token == token
    path = tmp_path / "data" / ADMIN_TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keep_admin_token(tmp_path / "data") == (token, False)
    path.chmod(0o644)
    with pytest.raises(OrderflowError, match="readable by others"):
        keep_admin_token(tmp_path / "data")
