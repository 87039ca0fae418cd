"""The catalog, sole writer of store and indexes, over a real SQLite store and real indexes."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embeddings import Vector
from gateway.cache.catalog import Catalog
from gateway.cache.index import IndexItem, VectorIndex
from gateway.cache.scope import CacheKey
from gateway.metrics import Metrics
from gateway.stores import Added, CacheEntry, Removed, SqliteStore
from policies import Category, Policy, parse_policy
from tests.doubles import FakeClock

pytestmark = pytest.mark.anyio

DIMENSION = 8
# Hypothesis' deadline and slow-generation check time the machine: speed lives in bench/, not here.
untimed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=40)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def policy(**quotas: int) -> Policy:
    """Categories with these quotas (one "default" without), each with a TTL of 100 s."""
    categories = [
        {"name": name, "max_entries": quota, "ttl_s": 100, "keywords": [name]}
        for name, quota in (quotas or {"default": 1000}).items()
    ]
    return parse_policy({"categories": categories})


def vector(text: str) -> Vector:
    raw = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(DIMENSION).astype(np.float32)
    unit: Vector = raw / np.linalg.norm(raw)
    return unit


def key(text: str, scope: str = "scope-1") -> CacheKey:
    return CacheKey(scope=scope, exact=f"exact-{scope}-{text}", prompt=text)


async def remember(catalog: Catalog, text: str, category: str = "default", *, semantic: bool = True) -> bool:
    rules: Category = catalog.policy.category(category)
    return await catalog.remember(
        key(text),
        vector=vector(text) if semantic else None,
        category=rules,
        request={"model": "m", "prompt": text},
        response={"id": text},
        ttl_s=rules.ttl_s,
    )


async def searched(catalog: Catalog, text: str, category: str = "default") -> list[str]:
    index = catalog.index(category)
    assert index is not None
    return [match.entry_id for match in await index.search(vector(text), scope="scope-1", k=4)]


async def live_ids(store: SqliteStore, now: float) -> set[str]:
    return {entry.entry_id async for page in store.scan_live(now=now) for entry in page}


class RefusingIndex(VectorIndex):
    """A real index that takes no new vectors: stands in for one out of memory or past its deadline."""

    def _add(self, all_items: Sequence[IndexItem]) -> None:
        raise RuntimeError("simulated index failure")


class SlowIndex(VectorIndex):
    """A real index whose inserts finish only well after any deadline."""

    def _add(self, all_items: Sequence[IndexItem]) -> None:
        time.sleep(0.3)
        super()._add(all_items)


class CountingIndex(VectorIndex):
    """A real index that records the size of each insert it was asked for."""

    batches: list[int]

    def __init__(self, dimension: int, **options: Any) -> None:
        super().__init__(dimension, **options)
        self.batches = []

    def _add(self, all_items: Sequence[IndexItem]) -> None:
        self.batches.append(len(all_items))
        super()._add(all_items)


@asynccontextmanager
async def opened(
    path: Path | str, rules: Policy, clock: FakeClock, metrics: Metrics | None = None, **options: Any
) -> AsyncIterator[tuple[SqliteStore, Catalog]]:
    async with SqliteStore(path) as store:
        catalog = Catalog(
            store=store, dimension=DIMENSION, policy=rules, metrics=metrics or Metrics(), clock=clock, **options
        )
        async with catalog:
            yield store, catalog


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_remembered_answer_is_in_the_store_and_its_index(tmp_path: Path, clock: FakeClock) -> None:
    async with opened(tmp_path / "c.db", policy(), clock) as (store, catalog):
        assert await remember(catalog, "hello")

        entry = await store.get_exact(key("hello").exact, now=clock())
        assert entry is not None
        assert entry.expires_at == clock() + 100
        assert await searched(catalog, "hello") == [entry.entry_id]
        assert catalog.index_sizes() == {"default": 1}


async def test_a_newer_answer_replaces_the_older_in_store_and_index(tmp_path: Path, clock: FakeClock) -> None:
    async with opened(tmp_path / "c.db", policy(), clock) as (store, catalog):
        await remember(catalog, "hello")
        clock.advance(1)
        await remember(catalog, "hello")

        assert catalog.index_sizes() == {"default": 1}
        assert len(await live_ids(store, clock())) == 1


async def test_an_index_failure_takes_the_entry_back_out_of_the_store(tmp_path: Path, clock: FakeClock) -> None:
    metrics = Metrics()
    async with opened(tmp_path / "c.db", policy(), clock, metrics, index_type=RefusingIndex) as (store, catalog):
        assert not await remember(catalog, "hello")

        assert await store.get_exact(key("hello").exact, now=clock()) is None
        assert await live_ids(store, clock()) == set()
        assert catalog.index_sizes() == {"default": 0}
    assert metric(metrics, "semcache_fail_open_total", stage="remember") == 1
    assert metric(metrics, "semcache_stored_total") == 0


async def test_an_insert_past_its_deadline_is_withdrawn_from_store_and_index(tmp_path: Path, clock: FakeClock) -> None:
    """The insert still runs after its deadline; the withdrawal is queued behind it, so neither the
    store nor the index is left with the entry."""
    metrics = Metrics()
    async with opened(tmp_path / "c.db", policy(), clock, metrics, index_type=SlowIndex, index_deadline_s=0.01) as (
        store,
        catalog,
    ):
        assert not await remember(catalog, "hello")

        index = catalog.index("default")
        assert index is not None
        await index.aclose()  # every queued call done
        assert len(index) == 0
        assert await live_ids(store, clock()) == set()
    assert metric(metrics, "semcache_fail_open_total", stage="remember") >= 1


async def test_a_store_failure_leaves_the_index_untouched(tmp_path: Path, clock: FakeClock) -> None:
    metrics = Metrics()
    async with opened(tmp_path / "c.db", policy(), clock, metrics) as (_, catalog):
        with sqlite3.connect(tmp_path / "c.db") as db:  # a schema the store cannot write to
            db.execute("DROP TABLE entries")
        assert not await remember(catalog, "hello")

        assert catalog.index_sizes() == {"default": 0}
    assert metric(metrics, "semcache_fail_open_total", stage="remember") == 1


async def test_another_writers_events_reach_this_catalogs_index(tmp_path: Path, clock: FakeClock) -> None:
    """Two catalogs over one store, as two replicas over one Redis: each indexes what the other wrote."""
    rules = policy()
    async with SqliteStore(tmp_path / "c.db") as store:
        writer = Catalog(store=store, dimension=DIMENSION, policy=rules, metrics=Metrics(), clock=clock)
        follower = Catalog(store=store, dimension=DIMENSION, policy=rules, metrics=Metrics(), clock=clock)
        async with writer, follower:
            assert await remember(writer, "hello")
            entry = await store.get_exact(key("hello").exact, now=clock())
            assert entry is not None
            for _ in range(100):  # the follower's task applies it when next scheduled
                if follower.index_sizes()["default"]:
                    break
                await asyncio.sleep(0.01)
            assert await searched(follower, "hello") == [entry.entry_id]

            assert await writer.forget(entry.entry_id)
            for _ in range(100):
                if not follower.index_sizes()["default"]:
                    break
                await asyncio.sleep(0.01)
            assert await searched(follower, "hello") == []


async def test_events_published_by_someone_else_are_applied(tmp_path: Path, clock: FakeClock) -> None:
    """The catalog applies events whoever wrote them (the Redis stream's case)."""
    async with opened(tmp_path / "c.db", policy(), clock) as (store, catalog):
        entry = CacheEntry(
            entry_id="remote-1", scope_key="scope-1", exact_key="x", prompt="hello", embedding=vector("hello"),
            request={}, response={}, model="m", created_at=clock(), expires_at=clock() + 10,
        )  # fmt: skip
        await store.publish([Added(entry=entry, origin="another-replica")])
        for _ in range(100):
            if catalog.index_sizes()["default"]:
                break
            await asyncio.sleep(0.01)
        assert await searched(catalog, "hello") == ["remote-1"]

        await store.publish([Removed(entry_ids=("remote-1",), reason="evicted", origin="another-replica")])
        for _ in range(100):
            if not catalog.index_sizes()["default"]:
                break
            await asyncio.sleep(0.01)
        assert await searched(catalog, "hello") == []


async def test_forget_removes_from_store_and_index_once(tmp_path: Path, clock: FakeClock) -> None:
    async with opened(tmp_path / "c.db", policy(), clock) as (store, catalog):
        await remember(catalog, "hello")
        entry = await store.get_exact(key("hello").exact, now=clock())
        assert entry is not None

        assert await catalog.forget(entry.entry_id)
        assert not await catalog.forget(entry.entry_id)
        assert await store.get(entry.entry_id, now=clock()) is None
        assert await searched(catalog, "hello") == []


async def test_hits_are_buffered_and_written_in_one_batch(tmp_path: Path, clock: FakeClock) -> None:
    # A flush interval longer than the test: only explicit flushes and the close write.
    async with opened(tmp_path / "c.db", policy(), clock, hit_flush_interval_s=3600) as (store, catalog):
        await remember(catalog, "hot")
        await remember(catalog, "cold")
        hot = await store.get_exact(key("hot").exact, now=clock())
        assert hot is not None
        catalog.note_hit(hot.entry_id, "default")
        catalog.note_hit(hot.entry_id, "default")
        clock.advance(5)

        stored = await store.get(hot.entry_id, now=clock())
        assert stored is not None and stored.hit_count == 0  # not written yet...
        index = catalog.index("default")
        assert index is not None
        victims = await index.victims(1, now=clock())
        assert victims != [hot.entry_id]  # ...but the index weighs them already

        await catalog.flush_hits()
        stored = await store.get(hot.entry_id, now=clock())
        assert stored is not None and stored.hit_count == 2
        catalog.note_hit(hot.entry_id, "default")
    async with SqliteStore(tmp_path / "c.db") as reopened:  # the close flushed the last one
        stored = await reopened.get(hot.entry_id, now=clock())
        assert stored is not None and stored.hit_count == 3


async def test_purge_drops_expired_entries_from_store_and_index(tmp_path: Path, clock: FakeClock) -> None:
    async with opened(tmp_path / "c.db", policy(), clock) as (store, catalog):
        await remember(catalog, "old")
        clock.advance(60)
        await remember(catalog, "young")
        clock.advance(50)  # "old" is 110 s old, past its 100 s TTL

        assert await catalog.purge_expired() == 1
        assert catalog.index_sizes() == {"default": 1}
        assert len(await live_ids(store, clock())) == 1


async def test_a_rebuild_loads_a_page_per_index_call_drops_orphans_and_enforces_quotas(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with opened(tmp_path / "c.db", policy(a=2000, b=2000), clock) as (_, catalog):
        for number in range(1200):
            await remember(catalog, f"a-{number}", "a")
        for number in range(10):
            await remember(catalog, f"b-{number}", "b")
    rules = policy(a=1000, c=10)  # b left the policy; a's quota shrank
    async with opened(tmp_path / "c.db", rules, clock, index_type=CountingIndex) as (store, catalog):
        loaded = await catalog.rebuild()

        assert loaded == 1200
        assert catalog.index_sizes() == {"a": 1000, "c": 0, "default": 0}
        assert len(await live_ids(store, clock())) == 1000
        index = catalog.index("a")
        assert isinstance(index, CountingIndex)
        assert len(index.batches) <= 2  # 1210 entries in pages of 1000, not one call per entry


async def test_a_policy_reload_drops_retimes_and_evicts(tmp_path: Path, clock: FakeClock) -> None:
    async with opened(tmp_path / "c.db", policy(a=10, b=10), clock) as (store, catalog):
        for number in range(6):
            await remember(catalog, f"a-{number}", "a")
        await remember(catalog, "b-0", "b")
        new = parse_policy(
            {
                "categories": [
                    {"name": "a", "max_entries": 4, "ttl_s": 5, "keywords": ["a"]},
                    {"name": "c", "keywords": ["c"]},
                ]
            }
        )

        dropped = await catalog.apply_policy(new)

        assert dropped == {"b": 1}
        assert catalog.index("b") is None
        assert catalog.index_sizes() == {"a": 4, "c": 0, "default": 0}
        assert len(await live_ids(store, clock())) == 4
        clock.advance(6)  # the new 5 s TTL applies to the entries already there
        assert await live_ids(store, clock()) == set()
        index = catalog.index("a")
        assert index is not None
        assert [match.expires_at for match in await index.search(vector("a-1"), scope="scope-1", k=1)] == [
            pytest.approx(clock() - 6 + 5)
        ]


operations = st.lists(
    st.one_of(
        st.tuples(st.just("remember"), st.sampled_from(["a", "b"]), st.integers(0, 30), st.booleans()),
        st.tuples(st.just("hit"), st.sampled_from(["a", "b"]), st.integers(0, 30), st.booleans()),
        st.tuples(st.just("wait"), st.just("a"), st.integers(1, 80), st.booleans()),
    ),
    max_size=60,
)


@untimed
@given(steps=operations, quota_a=st.integers(1, 6), quota_b=st.integers(1, 6))
def test_every_category_stays_within_its_quota_and_in_step_with_the_store(
    steps: list[tuple[str, str, int, bool]], quota_a: int, quota_b: int
) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        async with opened(":memory:", policy(a=quota_a, b=quota_b), clock) as (store, catalog):
            for action, category, number, semantic in steps:
                if action == "remember":
                    await remember(catalog, f"{category}-{number}", category, semantic=semantic)
                elif action == "hit":
                    found = await store.get_exact(key(f"{category}-{number}").exact, now=clock())
                    if found is not None:
                        catalog.note_hit(found.entry_id, found.category)
                else:
                    clock.advance(number)
                sizes = catalog.index_sizes()
                assert sizes["a"] <= quota_a
                assert sizes["b"] <= quota_b
                everything = {entry.entry_id async for page in store.scan_live(now=0) for entry in page}
                indexed = {
                    entry_id
                    for name in ("a", "b")
                    for index in (catalog.index(name),)
                    if index is not None
                    for entry_id in everything
                    if index.holds(entry_id)
                }
                assert indexed == everything  # nothing in the store the indexes do not know
                assert sum(sizes.values()) == len(everything)  # nor the other way round

    asyncio.run(scenario())
