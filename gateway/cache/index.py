"""The in-memory HNSW index over cached prompts, partitioned by scope.

It also keeps the bookkeeping of a category's entries that have no vector (prompts the embedder
had to cut: exact match only), so that quota eviction weighs every entry of the category, not only
the searchable ones; those are never search results.

hnswlib is not safe to search while inserting, so every call runs on the index's own single
worker thread and under its lock; the event loop only awaits. Similarity is cosine similarity in
[0, 1]; `similarity_from_distance` is the one place hnswlib's distance is converted.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import hnswlib
import numpy as np

from embeddings import Vector

# Below this many entries a scope is searched exactly with one matrix product: faster than a
# filtered graph walk, which visits most of the graph when the filter admits only a few nodes.
_EXACT_SEARCH_MAX = 512


def similarity_from_distance(distance: float) -> float:
    """hnswlib's cosine space returns 1 - cos; we speak cosine similarity clamped to [0, 1]."""
    return min(1.0, max(0.0, 1.0 - float(distance)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Match:
    entry_id: str
    similarity: float
    created_at: float
    expires_at: float


@dataclass(slots=True)
class _Slot:
    entry_id: str
    scope: str
    created_at: float
    expires_at: float
    hits: int
    last_used_at: float

    def value(self, now: float) -> float:
        """What keeping this entry is worth: hits per idle second. A popular entry survives a quiet
        spell; one that was popular long ago decays towards a never-used one. (LRU alone evicts a
        hot entry after one burst of one-off prompts; LFU alone keeps stale favourites forever.)"""
        return (1 + self.hits) / (1 + max(0.0, now - self.last_used_at))


@dataclass(slots=True)
class _Scope:
    labels: set[int] = field(default_factory=set)


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexItem:
    entry_id: str
    scope: str
    vector: Vector | None  # None: exact match only, kept for the quota
    created_at: float
    expires_at: float
    hit_count: int = 0
    last_used_at: float | None = None


class VectorIndex:
    def __init__(self, dimension: int, *, initial_capacity: int = 1024, ef_search: int = 64) -> None:
        self._dimension = dimension
        self._hnsw = hnswlib.Index(space="cosine", dim=dimension)
        self._hnsw.init_index(max_elements=initial_capacity, ef_construction=200, M=16, allow_replace_deleted=True)
        self._hnsw.set_ef(ef_search)
        self._ef = ef_search
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semcache-index")
        self._slots: dict[int, _Slot] = {}
        self._plain: dict[str, _Slot] = {}  # entries without a vector, by id
        self._labels: dict[str, int] = {}
        self._scopes: dict[str, _Scope] = {}
        self._next_label = 0
        self._deleted = 0

    def __len__(self) -> int:
        """Every entry of the index, searchable or not: what counts against the quota."""
        return len(self._slots) + len(self._plain)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    async def add(self, items: Sequence[IndexItem]) -> None:
        if items:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._add, items)

    async def remove(self, entry_ids: Iterable[str]) -> None:
        ids = list(entry_ids)
        if ids:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._remove, ids)

    async def search(self, vector: Vector, *, scope: str, k: int) -> list[Match]:
        """The k nearest entries of this scope, best first (expired ones included: the caller judges)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._search, vector, scope, k)

    async def touch(self, entry_id: str, *, now: float) -> None:
        """Count a hit (for eviction)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._touch, entry_id, now)

    async def victims(self, count: int, *, now: float) -> list[str]:
        """The `count` entries to evict first: expired ones, then the least valuable."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._victims, count, now)

    async def retime(self, *, ttl_s: float) -> None:
        """A changed TTL applies to existing entries: expiry = creation + ttl_s."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._retime, ttl_s)

    def _touch(self, entry_id: str, now: float) -> None:
        with self._lock:
            label = self._labels.get(entry_id)
            slot = self._slots[label] if label is not None else self._plain.get(entry_id)
            if slot is not None:
                slot.hits += 1
                slot.last_used_at = now

    def _victims(self, count: int, now: float) -> list[str]:
        with self._lock:
            slots = [*self._slots.values(), *self._plain.values()]
            ranked = sorted(slots, key=lambda slot: (slot.expires_at > now, slot.value(now)))
            return [slot.entry_id for slot in ranked[: max(0, count)]]

    def _retime(self, ttl_s: float) -> None:
        with self._lock:
            for slot in [*self._slots.values(), *self._plain.values()]:
                slot.expires_at = slot.created_at + ttl_s

    def _add(self, all_items: Sequence[IndexItem]) -> None:
        with self._lock:
            self._remove_locked([item.entry_id for item in all_items])
            for item in all_items:
                if item.vector is None:
                    self._plain[item.entry_id] = _slot(item)
            items = [item for item in all_items if item.vector is not None]
            vectors = [item.vector for item in all_items if item.vector is not None]
            if not items:
                return
            # Deleted slots are reused first, so this over-counts a little and never under-counts.
            required = len(self._slots) + self._deleted + len(items)
            capacity = self._hnsw.get_max_elements()
            if required > capacity:
                self._hnsw.resize_index(max(capacity * 2, required))
            labels = np.arange(self._next_label, self._next_label + len(items))
            self._next_label += len(items)
            matrix = np.stack(vectors).astype(np.float32, copy=False)
            reuse = min(self._deleted, len(items))
            if reuse:
                self._hnsw.add_items(matrix[:reuse], labels[:reuse], replace_deleted=True)
                self._deleted -= reuse
            if reuse < len(items):
                self._hnsw.add_items(matrix[reuse:], labels[reuse:])
            for label, item in zip(labels.tolist(), items, strict=True):
                self._slots[label] = _slot(item)
                self._labels[item.entry_id] = label
                self._scopes.setdefault(item.scope, _Scope()).labels.add(label)

    def _remove(self, entry_ids: list[str]) -> None:
        with self._lock:
            self._remove_locked(entry_ids)

    def _remove_locked(self, entry_ids: list[str]) -> None:
        for entry_id in entry_ids:
            self._plain.pop(entry_id, None)
            label = self._labels.pop(entry_id, None)
            if label is None:
                continue
            slot = self._slots.pop(label)
            scope = self._scopes[slot.scope]
            scope.labels.discard(label)
            if not scope.labels:
                del self._scopes[slot.scope]
            self._hnsw.mark_deleted(label)
            self._deleted += 1

    def _search(self, vector: Vector, scope_key: str, k: int) -> list[Match]:
        with self._lock:
            scope = self._scopes.get(scope_key)
            if scope is None:
                return []
            k = min(k, len(scope.labels))
            query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
            if len(scope.labels) <= _EXACT_SEARCH_MAX:
                labels = np.fromiter(scope.labels, dtype=np.uint64, count=len(scope.labels))
                stored = np.asarray(self._hnsw.get_items(labels), dtype=np.float32)
                distances = 1.0 - stored @ query[0]
                order = np.argsort(distances)[:k]
                found = zip(labels[order].tolist(), distances[order].tolist(), strict=True)
            else:
                allowed = scope.labels
                self._hnsw.set_ef(max(self._ef, k))
                result_labels, result_distances = self._hnsw.knn_query(
                    query, k=k, filter=lambda label: label in allowed
                )
                found = zip(result_labels[0].tolist(), result_distances[0].tolist(), strict=True)
            return [
                Match(
                    entry_id=slot.entry_id,
                    similarity=similarity_from_distance(distance),
                    created_at=slot.created_at,
                    expires_at=slot.expires_at,
                )
                for label, distance in found
                for slot in (self._slots[label],)
            ]


def _slot(item: IndexItem) -> _Slot:
    return _Slot(
        entry_id=item.entry_id,
        scope=item.scope,
        created_at=item.created_at,
        expires_at=item.expires_at,
        hits=item.hit_count,
        last_used_at=item.last_used_at if item.last_used_at is not None else item.created_at,
    )
