"""Reading a KV bucket whole (``nodeapp.broker.kv``): every value, every revision and the live
keys, deleted and purged keys left out, an empty bucket answered at once."""

from __future__ import annotations

import contextlib
from datetime import datetime

import msgspec
from nats.js.kv import KeyValue

from nodeapp.broker.kv import KeyFollower, each_entry, latest_values, live_keys, stored_at
from nodeapp.orders.handles import Handles

_as_int = msgspec.json.Decoder(int)


async def _bucket(broker: Handles) -> KeyValue:
    return await broker.js.create_key_value(bucket="kvtest", history=10)


async def _entries(kv: KeyValue, key: str, include_history: bool) -> list[KeyValue.Entry]:
    async with contextlib.aclosing(each_entry(kv, key, include_history=include_history)) as it:
        return [entry async for entry in it]


async def test_latest_values_skip_deleted_and_purged_keys(broker: Handles) -> None:
    kv = await _bucket(broker)
    for value, key in enumerate(["a", "b", "c", "d", "a"]):
        await kv.put(key, msgspec.json.encode(value))
    await kv.delete("b")
    await kv.purge("c")

    assert await latest_values(kv, _as_int) == {"a": 4, "d": 3}
    assert await latest_values(kv, _as_int, wanted={"d", "b"}) == {"d": 3}
    assert await live_keys(broker.js, kv) == ["a", "d"]


async def test_an_empty_bucket_reads_as_empty_without_waiting(broker: Handles) -> None:
    kv = await _bucket(broker)
    # A stall of 0.01 s would raise if the read waited for an entry that never comes.
    assert await latest_values(kv, _as_int, stall=0.01) == {}
    assert await live_keys(broker.js, kv) == []


async def test_each_entry_gives_every_revision_of_a_key_in_order(broker: Handles) -> None:
    kv = await _bucket(broker)
    for value in range(3):
        await kv.put("k", msgspec.json.encode(value))
        await kv.put("other", b"0")
    await kv.delete("k")

    history = await _entries(kv, "k", include_history=True)
    assert [e.value for e in history] == [b"0", b"1", b"2", b""]
    assert history[-1].operation == "DEL"
    assert [e.revision for e in history] == sorted(e.revision or 0 for e in history)
    assert all(isinstance(stored_at(e), datetime) for e in history)  # nats-py keeps its type
    assert [e.operation for e in await _entries(kv, "k", include_history=False)] == ["DEL"]
    assert await _entries(kv, "never-written", include_history=True) == []


async def _following(follower: KeyFollower, count: int) -> list[tuple[int | None, str | None]]:
    """The next ``count`` entries as (revision, operation)."""
    out = []
    for _ in range(count):
        entry = await follower.next()
        assert entry is not None
        out.append((entry.revision, entry.operation))
    return out


async def test_a_key_follower_gives_the_latest_then_each_new_entry_or_resumes_after_one(
    broker: Handles,
) -> None:
    kv = await _bucket(broker)
    stored = [await kv.put("k", msgspec.json.encode(value)) for value in range(3)]
    follower = await KeyFollower.start(kv, "k")
    try:
        assert await _following(follower, 1) == [(stored[-1], None)]
        stored.append(await kv.put("k", b"3"))
        await kv.put("other", b"0")  # another key: not followed
        await kv.delete("k")
        (put, _), (deleted, operation) = await _following(follower, 2)
        assert (put, operation) == (stored[-1], "DEL")
        assert (deleted or 0) > stored[-1]
    finally:
        await follower.stop()
    assert follower.stopped
    assert await follower.next() is None  # stopped: a reader waiting on it is let go

    resumed = await KeyFollower.start(kv, "k", after=stored[0])
    try:
        assert [r for r, _ in await _following(resumed, 4)] == [*stored[1:], deleted]
    finally:
        await resumed.stop()
        await resumed.stop()  # a second stop does nothing
