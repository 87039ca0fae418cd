"""The Redis store, on a real redis-server started for this module (free loopback port, no
persistence); each test has its own key prefix."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

from gateway.config import StoreConfig
from gateway.errors import StoreError
from gateway.stores import (
    BACKENDS,
    MAX_OBSERVATIONS,
    Added,
    AdminStore,
    ChangeFeed,
    DeadlineStore,
    EntryStore,
    FeedItem,
    HitRegistry,
    HitTally,
    RedisStore,
    Removed,
    Resync,
    StateStore,
    Store,
    open_store,
    pool_key,
)
from tests.gateway.stores.test_sqlite import NOW, make_entry
from tests.redis_server import RedisServer, running_redis

_: Store = RedisStore.__new__(RedisStore)
_entries: EntryStore = RedisStore.__new__(RedisStore)
_state: StateStore = RedisStore.__new__(RedisStore)
_feed: ChangeFeed = RedisStore.__new__(RedisStore)
_admin: AdminStore = RedisStore.__new__(RedisStore)
_hits: HitRegistry = RedisStore.__new__(RedisStore)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def opened(server: RedisServer, prefix: str, model: str = "model-a", **options: int) -> AsyncIterator[RedisStore]:
    async with RedisStore(server.url, prefix=prefix, **options) as store:
        await store.adopt_embedder(model)
        yield store


async def next_item(feed: AsyncIterator[FeedItem], timeout_s: float = 5.0) -> FeedItem:
    async with asyncio.timeout(timeout_s):
        return await anext(feed)


async def test_put_then_get_round_trips_every_field(redis_server: RedisServer, prefix: str) -> None:
    entry = make_entry("e1", last_used_at=NOW - 5)
    async with opened(redis_server, prefix) as store:
        assert await store.put(entry) == []
        by_id = await store.get("e1", now=NOW)
        by_key = await store.get_exact(entry.exact_key, now=NOW)

    assert by_id is not None and by_key is not None
    assert by_key.entry_id == "e1"
    assert entry.embedding is not None and by_id.embedding is not None
    assert by_id.embedding.dtype == np.float32
    assert by_id.embedding.tobytes() == entry.embedding.tobytes()
    assert json.dumps(by_id.request, sort_keys=True) == json.dumps(entry.request, sort_keys=True)
    assert json.dumps(by_id.response, sort_keys=True) == json.dumps(entry.response, sort_keys=True)
    assert (by_id.scope_key, by_id.exact_key, by_id.prompt, by_id.model, by_id.category) == (
        entry.scope_key, entry.exact_key, entry.prompt, entry.model, entry.category,
    )  # fmt: skip
    assert (by_id.created_at, by_id.expires_at, by_id.hit_count, by_id.last_used_at) == (
        entry.created_at, entry.expires_at, 0, NOW - 5,
    )  # fmt: skip


async def test_an_entry_without_embedding_round_trips(redis_server: RedisServer, prefix: str) -> None:
    async with opened(redis_server, prefix) as store:
        await store.put(make_entry("truncated", embedding=None))
        stored = await store.get("truncated", now=NOW)
    assert stored is not None and stored.embedding is None


async def test_keys_carry_prefix_model_namespace_and_native_ttls(redis_server: RedisServer, prefix: str) -> None:
    entry = make_entry("e1", ttl_s=600)
    async with opened(redis_server, prefix) as store:
        await store.put(entry)
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        keys = sorted(key.decode() for key in await raw.keys(f"{prefix}:*"))
        expire_ms = await raw.pexpiretime(next(key for key in keys if ":e:{e1}" in key))
    finally:
        await raw.aclose()
    namespaced = [key for key in keys if key != f"{prefix}:models"]
    assert namespaced and all(key.startswith(f"{prefix}:") for key in namespaced)
    (ns,) = {key.split(":")[1] for key in namespaced}
    assert sorted(key.removeprefix(f"{prefix}:{ns}:") for key in namespaced) == sorted(
        ["e:{e1}", f"x:{entry.exact_key}", "ids", "c:default", "exp"]
    )
    assert expire_ms == int(entry.expires_at * 1000)


async def test_expired_entries_are_never_returned_even_before_redis_expires_them(
    redis_server: RedisServer, prefix: str
) -> None:
    entry = make_entry("e1", ttl_s=60)
    async with opened(redis_server, prefix) as store:
        await store.put(entry)
        assert await store.get("e1", now=entry.expires_at - 1) is not None
        assert await store.get("e1", now=entry.expires_at) is None
        assert await store.get_exact(entry.exact_key, now=entry.expires_at) is None
        assert await store.get_many(["e1"], now=entry.expires_at) == {}


async def test_purge_expired_returns_and_deletes_only_expired_ids(redis_server: RedisServer, prefix: str) -> None:
    async with opened(redis_server, prefix) as store:
        await store.put(make_entry("short-1", ttl_s=10))
        await store.put(make_entry("short-2", ttl_s=20))
        await store.put(make_entry("long", ttl_s=1000))
        purged = await store.purge_expired(now=NOW + 100)
        again = await store.purge_expired(now=NOW + 100)
        assert await store.get("short-1", now=NOW) is None
        assert await store.get("long", now=NOW) is not None
    assert sorted(purged) == ["short-1", "short-2"]
    assert again == []  # each expiry is reported once, to one purger


async def test_put_with_the_same_exact_key_replaces_the_older_entry(redis_server: RedisServer, prefix: str) -> None:
    async with opened(redis_server, prefix) as store:
        await store.put(make_entry("old", exact_key="same"))
        replaced = await store.put(make_entry("new", exact_key="same"))
        assert replaced == ["old"]
        assert await store.get("old", now=NOW) is None
        newest = await store.get_exact("same", now=NOW)
        assert newest is not None and newest.entry_id == "new"
        assert await store.put(make_entry("new", exact_key="same")) == []  # the same entry again


async def test_get_many_returns_the_live_ones_in_one_call(redis_server: RedisServer, prefix: str) -> None:
    async with opened(redis_server, prefix) as store:
        await store.put(make_entry("a"))
        await store.put(make_entry("b", ttl_s=5))
        found = await store.get_many(["a", "b", "missing"], now=NOW + 10)
    assert list(found) == ["a"]


async def test_delete_returns_the_ids_that_were_there_once(redis_server: RedisServer, prefix: str) -> None:
    async with opened(redis_server, prefix) as store:
        await store.put(make_entry("a"))
        await store.put(make_entry("b", embedding=None))
        await store.append_observation("a", {"judged": True})
        assert sorted(await store.delete(["a", "b", "missing"])) == ["a", "b"]
        assert await store.delete(["a"]) == []
        assert await store.get_exact("exact-a", now=NOW) is None
        assert await store.observations("a") == []
        assert [page async for page in store.scan_live(now=NOW)] == []


async def test_hits_are_added_in_one_call_and_unknown_ids_skipped(redis_server: RedisServer, prefix: str) -> None:
    async with opened(redis_server, prefix) as store:
        await store.put(make_entry("a"))
        await store.record_hits({"a": HitTally(count=2, last_at=NOW + 1), "ghost": HitTally(count=1, last_at=NOW)})
        await store.record_hits({"a": HitTally(count=3, last_at=NOW + 9)})
        stored = await store.get("a", now=NOW)
        assert await store.get("ghost", now=NOW) is None
    assert stored is not None and (stored.hit_count, stored.last_used_at) == (5, NOW + 9)


async def test_scan_live_pages_through_every_unexpired_entry(redis_server: RedisServer, prefix: str) -> None:
    async with opened(redis_server, prefix) as store:
        for number in range(1203):
            await store.put(make_entry(f"e{number}", ttl_s=5 if number % 100 == 0 else 3600))
        pages = [page async for page in store.scan_live(now=NOW + 10)]
    ids = [entry.entry_id for page in pages for entry in page]
    assert len(pages) > 1
    assert len(ids) == len(set(ids)) == 1203 - 13


async def test_retime_and_delete_category(redis_server: RedisServer, prefix: str) -> None:
    async with opened(redis_server, prefix) as store:
        await store.put(make_entry("p1", category="python"))
        await store.put(make_entry("p2", category="python", embedding=None))
        await store.put(make_entry("k1", category="kotlin"))
        await store.put_feedback("python", {"format_version": 1, "ratings": [1]})
        await store.retime_category("python", ttl_s=30)
        retimed = await store.get("p1", now=NOW)
        assert retimed is not None and retimed.expires_at == NOW + 30
        assert await store.purge_expired(now=NOW + 31) != []
        await store.put(make_entry("p3", category="python"))
        assert await store.delete_category("python") == ["p3"]
        assert "python" not in await store.feedback_states()
        assert await store.get("k1", now=NOW) is not None


async def test_state_feedback_and_observations(redis_server: RedisServer, prefix: str) -> None:
    async with opened(redis_server, prefix) as first, opened(redis_server, prefix) as second:
        await first.put_feedback("default", {"format_version": 1, "threshold": 0.91})
        await first.append_observation("e1", {"n": 1})
        await second.append_observation("e1", {"n": 2})  # another replica: appended, not overwritten
        assert await second.feedback_states() == {"default": {"format_version": 1, "threshold": 0.91}}
        assert await first.observations("e1") == [{"n": 1}, {"n": 2}]
        assert await second.observations_many(["e1", "nothing-here"]) == {"e1": [{"n": 1}, {"n": 2}]}


async def test_observations_are_capped_and_a_pool_goes_with_its_category(
    redis_server: RedisServer, prefix: str
) -> None:
    async with opened(redis_server, prefix) as store:
        for n in range(MAX_OBSERVATIONS + 3):
            await store.append_observation(pool_key("python"), {"n": n})
        kept = await store.observations(pool_key("python"))
        assert len(kept) == MAX_OBSERVATIONS and kept[-1] == {"n": MAX_OBSERVATIONS + 2}  # the newest
        await store.delete_category("python")
        assert await store.observations(pool_key("python")) == []


async def test_two_models_entries_coexist_and_are_not_wiped(redis_server: RedisServer, prefix: str) -> None:
    async with opened(redis_server, prefix, "model-a") as a:
        await a.put(make_entry("from-a", exact_key="same"))
        async with opened(redis_server, prefix, "model-b") as b:
            assert await b.adopt_embedder("model-b") == 0
            assert await b.get_exact("same", now=NOW) is None  # never another model's vectors
            await b.put(make_entry("from-b", exact_key="same"))
            assert [e.entry_id async for page in b.scan_live(now=NOW) for e in page] == ["from-b"]
        by_a = await a.get_exact("same", now=NOW)
    assert by_a is not None and by_a.entry_id == "from-a"


async def test_a_served_hit_is_seen_and_claimed_once_across_stores(redis_server: RedisServer, prefix: str) -> None:
    async with opened(redis_server, prefix) as first, opened(redis_server, prefix) as second:
        assert await second.served("resp-1") is None
        await first.record_served("resp-1", {"entry_id": "e1", "tenant": "t"}, ttl_s=60)
        assert await second.served("resp-1") == {"entry_id": "e1", "tenant": "t"}
        assert await second.claim_rating("resp-1") is True
        assert await first.claim_rating("resp-1") is False
        wrapped = DeadlineStore(first, deadline_s=1.0).hit_registry
        assert wrapped is not None and await wrapped.served("resp-1") is not None


async def test_the_feed_carries_events_between_stores(redis_server: RedisServer, prefix: str) -> None:
    async with opened(redis_server, prefix) as writer, opened(redis_server, prefix) as reader:
        feed = reader.follow()
        entry = make_entry("e1")
        await writer.publish([Added(entry=entry, origin="w"), Removed(entry_ids=("x", "y"), reason="evicted")])
        added = await next_item(feed)
        removed = await next_item(feed)
        await feed.aclose()  # type: ignore[attr-defined]
    assert isinstance(added, Added) and added.origin == "w"
    assert added.entry.entry_id == "e1" and added.entry.embedding is not None
    assert entry.embedding is not None and added.entry.embedding.tobytes() == entry.embedding.tobytes()
    assert removed == Removed(entry_ids=("x", "y"), reason="evicted")


async def test_a_follower_subscribed_before_adoption_starts_at_adoption(redis_server: RedisServer, prefix: str) -> None:
    async with opened(redis_server, prefix) as writer:
        await writer.publish([Removed(entry_ids=("before",), reason="evicted")])
        async with RedisStore(redis_server.url, prefix=prefix) as reader:
            feed = reader.follow()  # as the catalog does, before the model is known
            await reader.adopt_embedder("model-a")
            await writer.publish([Removed(entry_ids=("after",), reason="evicted")])
            item = await next_item(feed)
            await feed.aclose()  # type: ignore[attr-defined]
    assert isinstance(item, Removed) and item.entry_ids == ("after",)


async def test_a_follower_behind_the_trimmed_stream_is_told_to_resync(redis_server: RedisServer, prefix: str) -> None:
    async with opened(redis_server, prefix, stream_maxlen=100) as writer, opened(redis_server, prefix) as reader:
        feed = reader.follow()
        await writer.publish([Removed(entry_ids=("first",), reason="evicted")])
        assert isinstance(await next_item(feed), Removed)
        for start in range(0, 2000, 100):  # far past MAXLEN (~ trims whole nodes only)
            await writer.publish([Removed(entry_ids=(f"r{n}",), reason="evicted") for n in range(start, start + 100)])
        item = await next_item(feed)
        await writer.publish([Removed(entry_ids=("later",), reason="evicted")])
        later = await next_item(feed)
        await feed.aclose()  # type: ignore[attr-defined]
    assert isinstance(item, Resync)
    assert isinstance(later, Removed) and later.entry_ids == ("later",)  # goes on from the tail


async def test_redis_down_is_a_store_error_within_the_deadline_then_recovers(tmp_path: Path, prefix: str) -> None:
    with running_redis(tmp_path) as server:
        async with RedisStore(server.url, prefix=prefix) as inner:
            store = DeadlineStore(inner, deadline_s=0.5)
            await store.adopt_embedder("model-a")
            await store.put(make_entry("e1"))
            feed = store.follow()
            server.stop()
            with pytest.raises(StoreError):
                await store.get("e1", now=NOW)
            with pytest.raises(StoreError):
                await store.put(make_entry("e2"))
            with pytest.raises(StoreError):
                await store.ping()
            server.start()  # same port, no persistence: an empty Redis
            await store.ping()
            assert await store.get("e1", now=NOW) is None
            await store.publish([Removed(entry_ids=("x",), reason="evicted")])
            item = await next_item(feed, timeout_s=15)
            await feed.aclose()  # type: ignore[attr-defined]
    # The follower had seen nothing, so numbering from 1 again is no gap: the event itself arrives.
    assert isinstance(item, Removed | Resync)


async def test_a_stalled_redis_is_a_store_error_at_the_deadline(tmp_path: Path, prefix: str) -> None:
    with running_redis(tmp_path) as server:
        async with RedisStore(server.url, prefix=prefix) as inner:
            store = DeadlineStore(inner, deadline_s=0.2)
            await store.adopt_embedder("model-a")
            await store.put(make_entry("e1"))
            feed = store.follow()
            assert server.process is not None
            server.process.send_signal(signal.SIGSTOP)  # alive, accepting nothing: a slow Redis
            try:
                async with asyncio.timeout(5):  # a guard, not a measurement: the deadline is 0.2 s
                    with pytest.raises(StoreError, match="did not answer within 200 ms"):
                        await store.get("e1", now=NOW)
            finally:
                server.process.send_signal(signal.SIGCONT)
            assert await store.get("e1", now=NOW) is not None  # the next call is served again
            await store.publish([Removed(entry_ids=("x",), reason="evicted")])
            item = await next_item(feed, timeout_s=15)
            await feed.aclose()  # type: ignore[attr-defined]
    assert item == Removed(entry_ids=("x",), reason="evicted")


async def test_a_store_opened_while_redis_is_down_works_once_it_is_back(tmp_path: Path, prefix: str) -> None:
    server = RedisServer(tmp_path)  # not started yet
    async with RedisStore(server.url, prefix=prefix) as store:
        with pytest.raises(StoreError):
            await store.adopt_embedder("model-a")
        feed = store.follow()
        server.start()
        try:
            await store.put(make_entry("e1"))
            assert await store.get("e1", now=NOW) is not None
            await store.publish([Removed(entry_ids=("x",), reason="evicted")])
            item = await next_item(feed, timeout_s=15)
            await feed.aclose()  # type: ignore[attr-defined]
        finally:
            server.stop()
    assert item == Removed(entry_ids=("x",), reason="evicted")


async def test_the_backend_is_chosen_from_the_kind_by_table(redis_server: RedisServer, prefix: str) -> None:
    assert set(BACKENDS) == {"sqlite", "redis"}
    config = StoreConfig(kind="redis", url=redis_server.url, prefix=prefix)
    async with open_store(config) as store:
        assert isinstance(store, RedisStore)
        await store.ping()


async def test_operations_before_adoption_or_after_close_raise_store_error(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    with pytest.raises(StoreError):
        await store.ping()
    async with store:
        with pytest.raises(StoreError):
            await store.get("e1", now=NOW)
    with pytest.raises(StoreError):
        await store.put(make_entry("e1"))
