"""The embedded SQLite store, on a real file under tmp_path."""

from __future__ import annotations

import json
import sqlite3
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.config import StoreConfig
from gateway.errors import StoreError
from gateway.stores import (
    BACKENDS,
    Added,
    AdminStore,
    CacheEntry,
    ChangeFeed,
    EntryStore,
    HitTally,
    Removed,
    SqliteStore,
    StateStore,
    Store,
    open_store,
    pool_key,
)

_: Store = SqliteStore.__new__(SqliteStore)
_entries: EntryStore = SqliteStore.__new__(SqliteStore)
_state: StateStore = SqliteStore.__new__(SqliteStore)
_feed: ChangeFeed = SqliteStore.__new__(SqliteStore)
_admin: AdminStore = SqliteStore.__new__(SqliteStore)

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "cache.db"


def make_entry(
    entry_id: str, *, exact_key: str | None = None, created_at: float = NOW, ttl_s: float = 3600, **changes: Any
) -> CacheEntry:
    vector = np.random.default_rng(zlib.crc32(entry_id.encode())).standard_normal(8).astype(np.float32)
    entry = CacheEntry(
        entry_id=entry_id,
        scope_key="scope-1",
        exact_key=exact_key or f"exact-{entry_id}",
        prompt=f"what is {entry_id}?",
        embedding=vector / np.linalg.norm(vector),
        request={
            "model": "sim-large",
            "messages": [{"role": "user", "content": f"what is {entry_id}?"}],
            "temperature": 0.2,
        },
        response={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ünïcode ✓ answer"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        },
        model="sim-large",
        created_at=created_at,
        expires_at=created_at + ttl_s,
    )
    return replace(entry, **changes)


async def test_put_then_get_round_trips_every_field(db_path: Path) -> None:
    entry = make_entry("e1")
    async with SqliteStore(db_path) as store:
        assert await store.put(entry) == []
        by_id = await store.get("e1", now=NOW)
        by_key = await store.get_exact(entry.exact_key, now=NOW)

    assert by_id is not None
    assert by_key is not None
    assert by_key.entry_id == "e1"
    assert entry.embedding is not None and by_id.embedding is not None
    assert by_id.embedding.dtype == np.float32
    assert by_id.embedding.tobytes() == entry.embedding.tobytes()
    assert json.dumps(by_id.request, sort_keys=True) == json.dumps(entry.request, sort_keys=True)
    assert json.dumps(by_id.response, sort_keys=True) == json.dumps(entry.response, sort_keys=True)
    assert (by_id.entry_id, by_id.scope_key, by_id.exact_key, by_id.prompt, by_id.model) == (
        entry.entry_id, entry.scope_key, entry.exact_key, entry.prompt, entry.model,
    )  # fmt: skip
    assert (by_id.created_at, by_id.expires_at, by_id.hit_count) == (entry.created_at, entry.expires_at, 0)


async def test_an_entry_without_embedding_round_trips(db_path: Path) -> None:
    async with SqliteStore(db_path) as store:
        await store.put(make_entry("truncated", embedding=None))
        stored = await store.get("truncated", now=NOW)

    assert stored is not None
    assert stored.embedding is None


async def test_missing_entries_are_none(db_path: Path) -> None:
    async with SqliteStore(db_path) as store:
        assert await store.get("nope", now=NOW) is None
        assert await store.get_exact("nope", now=NOW) is None


async def test_expired_entries_are_not_returned(db_path: Path) -> None:
    entry = make_entry("e1", ttl_s=60)
    async with SqliteStore(db_path) as store:
        await store.put(entry)

        assert await store.get("e1", now=entry.expires_at - 1) is not None
        assert await store.get("e1", now=entry.expires_at) is None
        assert await store.get_exact(entry.exact_key, now=entry.expires_at) is None
        assert await store.get("e1", now=entry.expires_at + 1000) is None


async def test_purge_expired_returns_and_deletes_only_expired_ids(db_path: Path) -> None:
    async with SqliteStore(db_path) as store:
        await store.put(make_entry("short-1", ttl_s=10))
        await store.put(make_entry("short-2", ttl_s=20))
        await store.put(make_entry("long", ttl_s=1000))

        purged = await store.purge_expired(now=NOW + 100)

        assert sorted(purged) == ["short-1", "short-2"]
        # Gone from the file, not just hidden: an earlier `now` does not bring them back.
        assert await store.get("short-1", now=NOW) is None
        assert await store.get("short-2", now=NOW) is None
        assert await store.get("long", now=NOW + 100) is not None
        assert await store.purge_expired(now=NOW + 100) == []


async def test_put_with_the_same_exact_key_replaces_the_older_entry(db_path: Path) -> None:
    async with SqliteStore(db_path) as store:
        await store.put(make_entry("old", exact_key="k"))

        replaced = await store.put(make_entry("new", exact_key="k", created_at=NOW + 5))

        assert replaced == ["old"]
        assert await store.get("old", now=NOW + 5) is None
        current = await store.get_exact("k", now=NOW + 5)
        assert current is not None
        assert current.entry_id == "new"


async def test_put_of_the_same_entry_id_overwrites_in_place(db_path: Path) -> None:
    async with SqliteStore(db_path) as store:
        await store.put(make_entry("e1", model="sim-small"))

        replaced = await store.put(make_entry("e1", model="sim-large"))

        assert replaced == []
        stored = await store.get("e1", now=NOW)
        assert stored is not None
        assert stored.model == "sim-large"


async def test_record_hit_increments_hit_count(db_path: Path) -> None:
    async with SqliteStore(db_path) as store:
        await store.put(make_entry("e1"))

        await store.record_hits({"e1": HitTally(count=1, last_at=NOW + 1)})
        await store.record_hits(
            {"e1": HitTally(count=1, last_at=NOW + 2), "no-such-entry": HitTally(count=1, last_at=NOW + 2)}
        )

        stored = await store.get("e1", now=NOW + 2)
    assert stored is not None
    assert stored.hit_count == 2


async def test_scan_live_pages_through_every_unexpired_entry(db_path: Path) -> None:
    live_ids = {f"live-{i:05d}" for i in range(1100)}
    async with SqliteStore(db_path) as store:
        for entry_id in sorted(live_ids):
            await store.put(make_entry(entry_id))
        for i in range(5):
            await store.put(make_entry(f"dead-{i}", ttl_s=10))

        pages = [page async for page in store.scan_live(now=NOW + 100)]

    assert len(pages) == 2
    assert [len(page) for page in pages] == [1000, 100]
    seen = [entry.entry_id for page in pages for entry in page]
    assert len(seen) == len(set(seen))
    assert set(seen) == live_ids


async def test_scan_live_of_an_empty_store_yields_nothing(db_path: Path) -> None:
    async with SqliteStore(db_path) as store:
        assert [page async for page in store.scan_live(now=NOW)] == []


async def test_data_survives_close_and_reopen(db_path: Path) -> None:
    entry = make_entry("e1")
    async with SqliteStore(db_path) as store:
        await store.put(entry)
        await store.record_hits({"e1": HitTally(count=1, last_at=NOW)})

    async with SqliteStore(db_path) as reopened:
        await reopened.ping()
        stored = await reopened.get("e1", now=NOW)

    assert stored is not None
    assert stored.hit_count == 1
    assert stored.response == entry.response
    assert entry.embedding is not None and stored.embedding is not None
    assert stored.embedding.tobytes() == entry.embedding.tobytes()


async def test_an_unknown_format_version_is_a_store_error(db_path: Path) -> None:
    async with SqliteStore(db_path) as store:
        await store.put(make_entry("e1"))
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE entries SET document = json_set(document, '$.format_version', 99)")
    db.close()

    async with SqliteStore(db_path) as reopened:
        with pytest.raises(StoreError, match="format_version"):
            await reopened.get("e1", now=NOW)


async def test_operations_on_a_closed_store_raise_store_error(db_path: Path) -> None:
    store = SqliteStore(db_path)
    async with store:
        await store.put(make_entry("e1"))

    with pytest.raises(StoreError):
        await store.get("e1", now=NOW)
    with pytest.raises(StoreError):
        await store.put(make_entry("e2"))
    with pytest.raises(StoreError):
        await store.ping()
    with pytest.raises(StoreError):
        await store.purge_expired(now=NOW)
    with pytest.raises(StoreError):
        [page async for page in store.scan_live(now=NOW)]


async def test_operations_on_a_store_never_opened_raise_store_error(db_path: Path) -> None:
    store = SqliteStore(db_path)
    try:
        with pytest.raises(StoreError, match="not open"):
            await store.get("e1", now=NOW)
        with pytest.raises(StoreError, match="not open"):
            await store.ping()
    finally:
        await store.__aexit__(None, None, None)


async def test_an_unopenable_file_is_a_store_error(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory"
    directory.mkdir()

    with pytest.raises(StoreError):
        async with SqliteStore(directory):
            pass


async def test_feedback_states_survive_a_reopen_and_leave_with_their_category(db_path: Path) -> None:
    state = {"format_version": 1, "threshold": 0.9101, "ratings": [[0.91, 0], [0.97, 1]]}
    async with SqliteStore(db_path) as store:
        assert await store.feedback_states() == {}
        await store.put_feedback("code", {"format_version": 1, "threshold": None, "ratings": []})
        await store.put_feedback("code", state)  # replaces
        await store.put_feedback("chat", {"format_version": 1, "threshold": None, "ratings": [[0.9, 1]]})

    async with SqliteStore(db_path) as store:
        assert (await store.feedback_states())["code"] == state
        await store.delete_category("code")
        assert list(await store.feedback_states()) == ["chat"]


async def test_vectors_of_another_embedder_are_dropped_with_the_feedback(db_path: Path) -> None:
    async with SqliteStore(db_path) as store:
        assert await store.adopt_embedder("model-a") == 0  # nothing recorded yet: adopted as is
        await store.put(make_entry("kept"))
        await store.put_feedback("default", {"format_version": 1})
        assert await store.adopt_embedder("model-a") == 0
    async with SqliteStore(db_path) as store:
        assert await store.get("kept", now=NOW) is not None  # same model after a reopen: kept

        assert await store.adopt_embedder("model-b") == 1

        assert await store.get("kept", now=NOW) is None
        assert await store.feedback_states() == {}
        await store.put(make_entry("new"))
        assert await store.adopt_embedder("model-b") == 0
        assert await store.get("new", now=NOW) is not None


async def test_get_many_returns_the_live_ones_among_the_candidates(db_path: Path) -> None:
    async with SqliteStore(db_path) as store:
        await store.put(make_entry("live-1"))
        await store.put(make_entry("live-2"))
        await store.put(make_entry("dead", ttl_s=10))

        found = await store.get_many(["live-1", "dead", "missing", "live-2"], now=NOW + 100)
        many = await store.get_many([f"missing-{i}" for i in range(1200)] + ["live-1"], now=NOW)

        assert sorted(found) == ["live-1", "live-2"]
        assert found["live-2"].prompt == "what is live-2?"
        assert await store.get_many([], now=NOW) == {}
        assert list(many) == ["live-1"]  # more ids than one statement takes


async def test_delete_returns_the_ids_that_were_there(db_path: Path) -> None:
    async with SqliteStore(db_path) as store:
        await store.put(make_entry("e1"))
        await store.put(make_entry("e2"))

        assert sorted(await store.delete(["e1", "e2", "nope"])) == ["e1", "e2"]
        assert await store.delete(["e1"]) == []
        assert await store.delete([]) == []


async def test_hits_of_several_entries_are_added_in_one_call(db_path: Path) -> None:
    async with SqliteStore(db_path) as store:
        await store.put(make_entry("e1"))
        await store.put(make_entry("e2"))

        await store.record_hits({"e1": HitTally(count=3, last_at=NOW + 7), "e2": HitTally(count=1, last_at=NOW + 2)})

        e1, e2 = await store.get("e1", now=NOW), await store.get("e2", now=NOW)
    assert e1 is not None and (e1.hit_count, e1.last_used_at) == (3, NOW + 7)
    assert e2 is not None and (e2.hit_count, e2.last_used_at) == (1, NOW + 2)


async def test_observations_are_appended_never_overwritten(db_path: Path) -> None:
    async with SqliteStore(db_path) as store, SqliteStore(db_path) as replica:
        await store.append_observation("e1", {"format_version": 1, "similarity": 0.91, "good": True})
        await replica.append_observation("e1", {"format_version": 1, "similarity": 0.95, "good": False})
        await store.append_observation("e2", {"format_version": 1, "similarity": 0.5, "good": True})

        seen = await store.observations("e1")

        assert [record["similarity"] for record in seen] == [0.91, 0.95]  # both replicas' kept, in order
        assert await store.observations("nope") == []


async def test_observations_of_several_entries_come_in_one_call(db_path: Path) -> None:
    async with SqliteStore(db_path) as store:
        await store.append_observation("e1", {"similarity": 0.91, "correct": True})
        await store.append_observation("e2", {"similarity": 0.5, "correct": False})
        await store.append_observation("e1", {"similarity": 0.93, "correct": False})

        seen = await store.observations_many(["e1", "e2", "e3"])

    assert {key: [r["similarity"] for r in records] for key, records in seen.items()} == {
        "e1": [0.91, 0.93],
        "e2": [0.5],
    }


async def test_observations_are_capped_to_the_most_recent(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.stores.sqlite.MAX_OBSERVATIONS", 3)
    async with SqliteStore(db_path) as store:
        for i in range(5):
            await store.append_observation("e1", {"i": i})
        await store.append_observation("e2", {"i": 9})

        assert [record["i"] for record in await store.observations("e1")] == [2, 3, 4]
        assert [record["i"] for record in await store.observations("e2")] == [9]


async def test_observations_go_with_their_entry_on_every_removal_path(db_path: Path) -> None:
    async with SqliteStore(db_path) as store:
        await store.put(make_entry("deleted"))
        await store.put(make_entry("expired", created_at=NOW - 7200))
        await store.put(make_entry("old", exact_key="same"))
        await store.put(make_entry("kept"))
        await store.put(make_entry("other", category="code"))
        for entry_id in ("deleted", "expired", "old", "kept", "other", pool_key("code"), pool_key("default")):
            await store.append_observation(entry_id, {"similarity": 0.9, "correct": True})

        await store.delete(["deleted"])
        await store.purge_expired(now=NOW)
        await store.put(make_entry("new", exact_key="same"))  # replaces "old"
        await store.delete_category("code")  # its entries and its pool

        left = await store.observations_many(
            ["deleted", "expired", "old", "kept", "other", pool_key("code"), pool_key("default")]
        )
    assert sorted(left) == ["category:default", "kept"]


async def test_the_change_feed_delivers_what_is_published_to_every_follower(db_path: Path) -> None:
    entry = make_entry("e1")
    evicted = Removed(entry_ids=("e0",), reason="evicted")
    forgotten = Removed(entry_ids=("e1",), reason="forgotten")
    async with SqliteStore(db_path) as store:
        first, second = store.follow(), store.follow()  # subscribed from here
        await store.publish([Added(entry=entry, origin="a"), evicted])

        added = await anext(first)
        assert isinstance(added, Added) and added.entry is entry and added.origin == "a"
        assert await anext(first) == evicted
        closer = getattr(first, "aclose")  # noqa: B009 - the protocol promises an AsyncIterator only
        await closer()
        await store.publish([forgotten])

        assert isinstance(await anext(second), Added)
        assert [await anext(second), await anext(second)] == [evicted, forgotten]
        with pytest.raises(StopAsyncIteration):
            await anext(first)


async def test_the_backend_is_chosen_from_the_kind_by_table(db_path: Path) -> None:
    assert set(BACKENDS) == {"sqlite", "redis"}
    async with open_store(StoreConfig(kind="sqlite", path=str(db_path))) as store:
        assert isinstance(store, SqliteStore)
        await store.ping()
