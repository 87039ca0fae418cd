"""Test peers for the seams (Embedder, Store, Upstream, clock): real implementations of the protocols that
count, stall or fail on purpose. They wrap the real parts rather than replace them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embeddings import EmbeddedText, Embedder
from gateway.errors import StoreError
from gateway.stores import CacheEntry, ChangeEvent, HitTally, LocalFeed, SqliteStore
from gateway.upstream import Answer, Deployment, UpstreamStream
from gateway.wire import CompletionRequest


@dataclass(slots=True)
class FakeClock:
    """An injected wall clock that only moves when told to."""

    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingEmbedder:
    """The real embedder, counting the texts it was asked to embed."""

    def __init__(self, inner: Embedder) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.texts: list[str] = []
        self.batch_sizes: list[int] = []

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    @property
    def name(self) -> str:
        return self._inner.name

    def embed(self, texts: list[str]) -> list[EmbeddedText]:
        with self._lock:
            self.texts.extend(texts)
            self.batch_sizes.append(len(texts))
        return self._inner.embed(texts)


class StallingEmbedder(CountingEmbedder):
    """The real embedder behind a fixed stall: stands in for an overloaded or hung model."""

    def __init__(self, inner: Embedder, *, stall_s: float) -> None:
        super().__init__(inner)
        self.stall_s = stall_s

    def embed(self, texts: list[str]) -> list[EmbeddedText]:
        time.sleep(self.stall_s)
        return super().embed(texts)


class FailingEmbedder(CountingEmbedder):
    def embed(self, texts: list[str]) -> list[EmbeddedText]:
        raise RuntimeError("simulated embedder crash")


class BrokenStore:
    """A store whose backend is down: every call raises `StoreError`, as the SQLite store does
    when its file is unreadable."""

    def __init__(self) -> None:
        self.calls = 0

    def _fail(self) -> StoreError:
        self.calls += 1
        return StoreError("simulated store outage")

    async def put(self, entry: CacheEntry) -> list[str]:
        raise self._fail()

    async def get(self, entry_id: str, *, now: float) -> CacheEntry | None:
        raise self._fail()

    async def get_many(self, entry_ids: Sequence[str], *, now: float) -> dict[str, CacheEntry]:
        raise self._fail()

    async def get_exact(self, exact_key: str, *, now: float) -> CacheEntry | None:
        raise self._fail()

    async def record_hits(self, hits: Mapping[str, HitTally]) -> None:
        raise self._fail()

    async def purge_expired(self, *, now: float) -> list[str]:
        raise self._fail()

    async def scan_live(self, *, now: float) -> AsyncIterator[list[CacheEntry]]:
        raise self._fail()
        yield []  # makes this an async generator, like the real stores

    async def delete(self, entry_ids: Sequence[str]) -> list[str]:
        raise self._fail()

    async def delete_category(self, category: str) -> list[str]:
        raise self._fail()

    async def adopt_embedder(self, name: str) -> int:
        raise self._fail()

    async def retime_category(self, category: str, *, ttl_s: float) -> None:
        raise self._fail()

    async def put_feedback(self, category: str, state: Mapping[str, Any]) -> None:
        raise self._fail()

    async def feedback_states(self) -> dict[str, Mapping[str, Any]]:
        raise self._fail()

    async def append_observation(self, entry_id: str, record: Mapping[str, Any]) -> None:
        raise self._fail()

    async def observations(self, entry_id: str) -> list[Mapping[str, Any]]:
        raise self._fail()

    async def observations_many(self, entry_ids: Sequence[str]) -> dict[str, list[Mapping[str, Any]]]:
        raise self._fail()

    async def publish(self, events: Sequence[ChangeEvent]) -> None:
        raise self._fail()

    def follow(self) -> AsyncIterator[ChangeEvent]:
        # A feed that never delivers: the outage is in the store's calls, not the subscription.
        return LocalFeed().follow()

    async def ping(self) -> None:
        raise self._fail()


class StallingStore(SqliteStore):
    """The real SQLite store whose reads hang for `stall_s` first: a store that is up but far too
    slow (a locked file, an overloaded Redis). Writes are not slowed, so a test can fill it."""

    def __init__(self, path: str | Path, *, stall_s: float) -> None:
        super().__init__(path)
        self.stall_s = stall_s
        self.stalled = 0

    async def _stall(self) -> None:
        self.stalled += 1
        await asyncio.sleep(self.stall_s)

    async def get_exact(self, exact_key: str, *, now: float) -> CacheEntry | None:
        await self._stall()
        return await super().get_exact(exact_key, now=now)

    async def get(self, entry_id: str, *, now: float) -> CacheEntry | None:
        await self._stall()
        return await super().get(entry_id, now=now)

    async def get_many(self, entry_ids: Sequence[str], *, now: float) -> dict[str, CacheEntry]:
        await self._stall()
        return await super().get_many(entry_ids, now=now)


class BuggyUpstream:
    """An upstream backend with a bug of its own: it raises an exception that is no upstream
    error, as a backend does when our code (not the upstream) is at fault."""

    async def complete(self, request: CompletionRequest, *, deployment: Deployment, api_key: str | None) -> Answer:
        raise RuntimeError("simulated bug in the backend")

    async def stream(
        self, request: CompletionRequest, *, deployment: Deployment, api_key: str | None
    ) -> UpstreamStream:
        raise RuntimeError("simulated bug in the backend")
