"""Every store call has a deadline: a store that stalls makes a lookup a counted miss, not a wait."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from embeddings import Embedder
from gateway import CacheMiss, GatewayConfig, SemanticCache
from gateway.config import CacheConfig, StoreConfig
from gateway.errors import StoreError
from gateway.stores import DeadlineStore, Store
from tests.bodies import answer, chat
from tests.doubles import FakeClock, StallingStore
from tests.gateway.stores.test_sqlite import NOW, make_entry

_: Store = DeadlineStore.__new__(DeadlineStore)

QUESTION = "How do I reverse a list in Python?"


def test_a_call_past_its_deadline_is_a_store_error_and_others_still_answer(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with StallingStore(tmp_path / "cache.db", stall_s=30.0) as stalling:
            store = DeadlineStore(stalling, deadline_s=0.05)
            await store.put(make_entry("e1"))
            with pytest.raises(StoreError, match="get_exact did not answer within 50 ms"):
                await store.get_exact("exact-e1", now=NOW)
            pages = [page async for page in store.scan_live(now=NOW)]  # not stalled: answers
            assert [entry.entry_id for page in pages for entry in page] == ["e1"]

    asyncio.run(scenario())


def test_a_stalled_store_makes_the_lookup_a_miss_counted_by_stage(
    tmp_path: Path, real_embedder: Embedder, clock: FakeClock
) -> None:
    store = StallingStore(tmp_path / "cache.db", stall_s=30.0)
    config = GatewayConfig(
        cache=CacheConfig(
            similarity_threshold=0.85,
            store=StoreConfig(path=str(tmp_path / "cache.db"), deadline_ms=50),
        )
    )
    cache = SemanticCache(config, embedder=real_embedder, store=store, clock=clock)

    async def scenario() -> object:
        async with store, cache:
            first = await cache.lookup(chat(QUESTION), api_key="sk-a")
            assert isinstance(first, CacheMiss)
            assert await cache.remember(first, answer("Use reversed()."))  # writes are not stalled
            return await cache.lookup(chat(QUESTION), api_key="sk-a")  # stored: an exact hit, were it not slow

    found = asyncio.run(scenario())

    assert isinstance(found, CacheMiss)
    assert store.stalled >= 2  # the exact lookup and the semantic candidate's read
    assert (cache.metrics.registry.get_sample_value("semcache_fail_open_total", {"stage": "store"}) or 0) >= 2
    assert (cache.metrics.registry.get_sample_value("semcache_fail_open_total", {"stage": "search"}) or 0) >= 1
