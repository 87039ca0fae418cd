"""Every store call under one deadline: the one place `cache.store.deadline_ms` is applied.

Past the deadline a call raises `StoreError`, which the cache's fail-open boundaries turn into a
miss (reads) or a skipped write, counted like any other store fault. The backend's own work is
not interrupted (SQLite cannot be), only no longer waited for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from typing import Any, TypeVar

from gateway.errors import StoreError
from gateway.stores.base import CacheEntry, ChangeEvent, FeedItem, HitRegistry, HitTally, Store

T = TypeVar("T")


class DeadlineStore:
    """A `Store` whose every call (each page of a scan, too) has `deadline_s`. The change feed's
    `follow` is a long-lived subscription and has none."""

    def __init__(self, inner: Store, *, deadline_s: float) -> None:
        self.inner = inner
        self.deadline_s = deadline_s

    async def _within(self, call: Awaitable[T], what: str) -> T:
        try:
            async with asyncio.timeout(self.deadline_s):
                return await call
        except TimeoutError as exc:
            raise StoreError(f"store {what} did not answer within {self.deadline_s * 1000:g} ms") from exc

    async def put(self, entry: CacheEntry) -> list[str]:
        return await self._within(self.inner.put(entry), "put")

    async def get(self, entry_id: str, *, now: float) -> CacheEntry | None:
        return await self._within(self.inner.get(entry_id, now=now), "get")

    async def get_many(self, entry_ids: Sequence[str], *, now: float) -> dict[str, CacheEntry]:
        return await self._within(self.inner.get_many(entry_ids, now=now), "get_many")

    async def get_exact(self, exact_key: str, *, now: float) -> CacheEntry | None:
        return await self._within(self.inner.get_exact(exact_key, now=now), "get_exact")

    async def delete(self, entry_ids: Sequence[str]) -> list[str]:
        return await self._within(self.inner.delete(entry_ids), "delete")

    async def scan_live(self, *, now: float) -> AsyncIterator[list[CacheEntry]]:
        pages = aiter(self.inner.scan_live(now=now))
        while True:
            try:
                page = await self._within(anext(pages), "scan page")
            except StopAsyncIteration:
                return
            yield page

    async def retime_category(self, category: str, *, ttl_s: float) -> None:
        await self._within(self.inner.retime_category(category, ttl_s=ttl_s), "retime")

    async def delete_category(self, category: str) -> list[str]:
        return await self._within(self.inner.delete_category(category), "delete_category")

    async def purge_expired(self, *, now: float) -> list[str]:
        return await self._within(self.inner.purge_expired(now=now), "purge")

    async def put_feedback(self, category: str, state: Mapping[str, Any]) -> None:
        await self._within(self.inner.put_feedback(category, state), "put_feedback")

    async def feedback_states(self) -> dict[str, Mapping[str, Any]]:
        return await self._within(self.inner.feedback_states(), "feedback_states")

    async def append_observation(self, entry_id: str, record: Mapping[str, Any]) -> None:
        await self._within(self.inner.append_observation(entry_id, record), "append_observation")

    async def observations(self, entry_id: str) -> list[Mapping[str, Any]]:
        return await self._within(self.inner.observations(entry_id), "observations")

    async def observations_many(self, entry_ids: Sequence[str]) -> dict[str, list[Mapping[str, Any]]]:
        return await self._within(self.inner.observations_many(entry_ids), "observations_many")

    async def publish(self, events: Sequence[ChangeEvent]) -> None:
        await self._within(self.inner.publish(events), "publish")

    def follow(self) -> AsyncIterator[FeedItem]:
        return self.inner.follow()

    async def ping(self) -> None:
        await self._within(self.inner.ping(), "ping")

    async def adopt_embedder(self, name: str) -> int:
        return await self._within(self.inner.adopt_embedder(name), "adopt_embedder")

    async def record_hits(self, hits: Mapping[str, HitTally]) -> None:
        await self._within(self.inner.record_hits(hits), "record_hits")

    @property
    def hit_registry(self) -> HitRegistry | None:
        """The inner store's shared registry of served hits, under the deadline; None without one."""
        return _DeadlineHits(self) if isinstance(self.inner, HitRegistry) else None


class _DeadlineHits:
    def __init__(self, store: DeadlineStore) -> None:
        self._store = store
        assert isinstance(store.inner, HitRegistry)
        self._inner: HitRegistry = store.inner

    async def record_served(self, response_id: str, hit: Mapping[str, Any], *, ttl_s: float) -> None:
        await self._store._within(self._inner.record_served(response_id, hit, ttl_s=ttl_s), "record_served")

    async def served(self, response_id: str) -> Mapping[str, Any] | None:
        return await self._store._within(self._inner.served(response_id), "served")

    async def claim_rating(self, response_id: str) -> bool:
        return await self._store._within(self._inner.claim_rating(response_id), "claim_rating")
