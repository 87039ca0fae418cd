"""The cache decision: exact match, then embed + search, then hit or miss; and remembering answers.

Every fault of the store, index or embedder becomes a miss here (fail open): it is logged and
counted, and never reaches the client.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from embeddings import EmbedderError, EmbeddingBatcher, Vector
from gateway.index import IndexItem, VectorIndex
from gateway.metrics import Metrics
from gateway.scope import CacheKey
from gateway.stores import CacheEntry, Store
from policies.verifier import Verifier

logger = logging.getLogger("semcache.engine")

Clock = Callable[[], float]


class Outcome(StrEnum):
    HIT = "hit"
    EXACT = "exact"
    MISS = "miss"
    BYPASS = "bypass"


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupSettings:
    similarity_threshold: float
    ttl_s: float
    search_k: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Hit:
    entry: CacheEntry
    similarity: float
    exact: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Miss:
    """`vector` is kept for remembering the answer; None when the prompt must stay exact-match only
    (truncated by the embedder) or when embedding failed. `best_similarity` is None without candidates."""

    vector: Vector | None
    best_similarity: float | None
    semantic: bool
    fault: str | None = None


Decision = Hit | Miss


class CacheEngine:
    def __init__(
        self,
        *,
        store: Store,
        index: VectorIndex,
        batcher: EmbeddingBatcher,
        settings: LookupSettings,
        metrics: Metrics,
        clock: Clock,
        verifier: Verifier | None = None,
    ) -> None:
        self._verifier = verifier
        self._store = store
        self._index = index
        self._batcher = batcher
        self._settings = settings
        self._metrics = metrics
        self._clock = clock

    @property
    def store(self) -> Store:
        return self._store

    def _fault(self, stage: str, exc: BaseException) -> None:
        self._metrics.fail_open.labels(stage=stage).inc()
        logger.warning("cache %s failed, serving from upstream: %s", stage, exc)

    @property
    def settings(self) -> LookupSettings:
        return self._settings

    async def lookup(
        self, key: CacheKey, *, threshold: float | None = None, max_age_s: float | None = None, search: bool = True
    ) -> Decision:
        """Exact match, then semantic. `threshold` may only be stricter than the configured one;
        `max_age_s` refuses older entries; `search=False` (Cache-Control: no-cache) only embeds, so
        the fresh answer can still be stored."""
        now = self._clock()
        oldest = now - max_age_s if max_age_s is not None else float("-inf")
        if search:
            try:
                exact = await self._store.get_exact(key.exact, now=now)
            except Exception as exc:  # fail-open boundary
                self._fault("store", exc)
                exact = None
            if exact is not None and exact.created_at >= oldest:
                return Hit(entry=exact, similarity=1.0, exact=True)
        try:
            embedded = await self._batcher.embed(key.prompt)
        except EmbedderError as exc:
            self._fault("embedder", exc)
            return Miss(vector=None, best_similarity=None, semantic=False, fault="embedder")
        if embedded.truncated:
            return Miss(vector=None, best_similarity=None, semantic=False)
        if not search:
            return Miss(vector=embedded.vector, best_similarity=None, semantic=True)
        # Without a verifier the threshold decides; with one, candidates from its floor up are
        # judged by it, even above the threshold: the classic false hits sit at high similarity.
        # A per-request threshold can only make either stricter.
        floor = self._settings.similarity_threshold if self._verifier is None else self._verifier.floor
        floor = max(floor, threshold or 0.0)
        try:
            return await self._search(key, embedded.vector, now, floor=floor, oldest=oldest)
        except Exception as exc:  # fail-open boundary
            self._fault("search", exc)
            return Miss(vector=embedded.vector, best_similarity=None, semantic=True, fault="search")

    async def _search(self, key: CacheKey, vector: Vector, now: float, *, floor: float, oldest: float) -> Decision:
        matches = await self._index.search(vector, scope=key.scope, k=self._settings.search_k)
        fresh = [match for match in matches if match.expires_at > now and match.created_at >= oldest]
        best = fresh[0].similarity if fresh else None
        verifier = self._verifier
        for match in fresh:
            if match.similarity < floor:
                break
            entry = await self._store.get(match.entry_id, now=now)
            if entry is None:
                continue
            if verifier is None or verifier.accepts(
                query=key.prompt, candidate=entry.prompt, similarity=match.similarity
            ):
                return Hit(entry=entry, similarity=match.similarity, exact=False)
        return Miss(vector=vector, best_similarity=best, semantic=True)

    async def record_hit(self, hit: Hit) -> None:
        try:
            await self._store.record_hit(hit.entry.entry_id, now=self._clock())
        except Exception as exc:  # fail-open boundary: bookkeeping only
            self._fault("record_hit", exc)

    async def remember(
        self, key: CacheKey, miss: Miss, *, request: Mapping[str, Any], response: Mapping[str, Any]
    ) -> None:
        """Store a complete answer and index it. Runs after the client has its answer."""
        now = self._clock()
        entry = CacheEntry(
            entry_id=uuid.uuid4().hex,
            scope_key=key.scope,
            exact_key=key.exact,
            prompt=key.prompt,
            embedding=miss.vector if miss.semantic else None,
            request=request,
            response=response,
            model=str(request.get("model", "")),
            created_at=now,
            expires_at=now + self._settings.ttl_s,
        )
        try:
            replaced = await self._store.put(entry)
            await self._index.remove(replaced)
            if entry.embedding is not None:
                await self._index.add([_index_item(entry)])
        except Exception as exc:  # fail-open boundary: the client has its answer already
            self._fault("remember", exc)
            return
        self._metrics.stored.inc()

    async def rebuild_index(self) -> int:
        """Load every live entry of the store into the (empty) index; returns how many."""
        count = 0
        async for page in self._store.scan_live(now=self._clock()):
            items = [_index_item(entry) for entry in page if entry.embedding is not None]
            await self._index.add(items)
            count += len(items)
        return count

    async def purge_expired(self) -> int:
        expired = await self._store.purge_expired(now=self._clock())
        await self._index.remove(expired)
        return len(expired)


def _index_item(entry: CacheEntry) -> IndexItem:
    assert entry.embedding is not None
    return IndexItem(
        entry_id=entry.entry_id,
        scope=entry.scope_key,
        vector=entry.embedding,
        created_at=entry.created_at,
        expires_at=entry.expires_at,
    )
