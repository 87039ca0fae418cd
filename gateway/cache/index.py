"""The in-memory HNSW index over cached prompts, partitioned by scope.

It also keeps the bookkeeping of a category's entries that have no vector (prompts the embedder
had to cut: exact match only), so that quota eviction weighs every entry of the category, not only
the searchable ones; those are never search results.

hnswlib is not safe to search while inserting, so every call runs on the index's own single
worker thread and under its lock; the event loop only awaits, each call under the index's deadline
(`VectorIndexError` past it). Similarity is cosine similarity in [0, 1];
`similarity_from_distance` is the one place hnswlib's distance is converted.

Eviction costs O(k log n) per insert, not a sort of the category: expired entries come off an
expiry heap first, then each further victim is the least valuable of a random sample (as Redis
evicts), which is the exact order whenever the category is no larger than the sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import random
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import hnswlib
import numpy as np

from embeddings import Vector
from gateway.errors import VectorIndexError

T = TypeVar("T")

# Below this many entries a scope is searched exactly with one matrix product: faster than a
# filtered graph walk, which visits most of the graph when the filter admits only a few nodes.
_EXACT_SEARCH_MAX = 512
# A call's deadline covers this many entries of work (an insert of one entry or a search: one
# deadline); a rebuild's page of a thousand gets proportionally longer, since an HNSW insert costs
# up to a few milliseconds on a busy CPU.
_ENTRIES_PER_DEADLINE = 16
# How many times a read's deadline a write (add, remove, retime) may take.
_WRITE_DEADLINE_FACTOR = 10
# Entries weighed per eviction victim once a category is larger than this.
_EVICTION_SAMPLE = 32


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
    max_ttl_s: float | None = None

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
    # The entry's own TTL cap (a request asked for less than its category's): retime keeps it.
    max_ttl_s: float | None = None


class VectorIndex:
    def __init__(
        self,
        dimension: int,
        *,
        initial_capacity: int = 1024,
        ef_search: int = 64,
        deadline_s: float = 0.1,
        sample_size: int = _EVICTION_SAMPLE,
        seed: int | None = None,
    ) -> None:
        self._dimension = dimension
        self._hnsw = hnswlib.Index(space="cosine", dim=dimension)
        self._hnsw.init_index(max_elements=initial_capacity, ef_construction=200, M=16, allow_replace_deleted=True)
        self._hnsw.set_ef(ef_search)
        self._ef = ef_search
        # Read on the event loop to size an add's deadline (a resize copies the whole index); only
        # the index's thread writes it.
        self._capacity = initial_capacity
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semcache-index")
        self._slots: dict[int, _Slot] = {}
        self._plain: dict[str, _Slot] = {}  # entries without a vector, by id
        self._labels: dict[str, int] = {}
        self._scopes: dict[str, _Scope] = {}
        self._next_label = 0
        self._deleted = 0
        self._deadline_s = deadline_s
        # Every entry, searchable or not, by id; `_ids` and `_positions` let eviction draw a random
        # sample in O(1); `_expiry` is a heap of (expires_at, entry_id), invalidated lazily (an
        # item whose entry is gone or was retimed is skipped when it surfaces).
        self._by_id: dict[str, _Slot] = {}
        self._ids: list[str] = []
        self._positions: dict[str, int] = {}
        self._expiry: list[tuple[float, str]] = []
        self._sample_size = sample_size
        self._random = random.Random(seed)
        # Ids of inserts submitted but not yet done (the worker discards them): a removal right
        # after an insert that missed its deadline must still be queued behind it.
        self._adding: set[str] = set()

    def __len__(self) -> int:
        """Every entry of the index, searchable or not: what counts against the quota."""
        return len(self._by_id)

    def holds(self, entry_id: str) -> bool:
        """Whether the index has the entry or is about to. Lookups from the loop while the worker
        may insert: atomic under the GIL."""
        return entry_id in self._by_id or entry_id in self._adding

    def close(self) -> None:
        """Stop taking work without waiting for it (which would block the event loop); queued
        calls still run, and the thread then exits. `aclose` awaits them."""
        self._executor.shutdown(wait=False)

    async def aclose(self) -> None:
        """Let queued calls finish (awaited, not joined), then stop the thread."""
        with contextlib.suppress(RuntimeError):  # closed already
            await asyncio.get_running_loop().run_in_executor(self._executor, _nothing)
        self._executor.shutdown(wait=False)

    async def _run(self, fn: Callable[..., T], *args: object, work: int = 1, write: bool = False) -> T:
        """Run on the index's thread under its deadline, scaled by the entries the call handles.
        Past it the call is no longer awaited (hnswlib cannot be interrupted). A write still runs,
        in order, before any later call; a read still queued is dropped."""
        deadline_s = self._deadline_s * max(1, math.ceil(work / _ENTRIES_PER_DEADLINE))
        if write:
            # Writes run after the client has its answer: a brief stall (a GC pause, a busy CPU)
            # must not withdraw a fresh entry, so they get more time than a lookup's read.
            deadline_s *= _WRITE_DEADLINE_FACTOR
        try:
            future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
            # A write is shielded: a deadline must not cancel it while queued, or a removal queued
            # behind a slow insert would be dropped and the insert's entry left behind. Its
            # outcome is collected by `_settled` when nobody awaits it any more.
            future.add_done_callback(_settled)
            async with asyncio.timeout(deadline_s):
                return await (asyncio.shield(future) if write else future)
        except TimeoutError as exc:
            raise VectorIndexError(f"index {fn.__name__} did not answer within {deadline_s * 1000:g} ms") from exc
        except RuntimeError as exc:  # hnswlib's errors, and an executor that is shut down
            raise VectorIndexError(f"index {fn.__name__} failed: {exc}") from exc

    async def add(self, items: Sequence[IndexItem]) -> None:
        if items:
            self._adding.update(item.entry_id for item in items)
            # An add that outgrows the index resizes it first, which copies every entry: its
            # deadline allows for that work too (else each doubling withdraws a fresh entry).
            resizing = len(self._slots) + self._deleted + len(items) > self._capacity
            work = len(items) + (len(self._slots) if resizing else 0)
            await self._run(self._add, items, work=work, write=True)

    async def remove(self, entry_ids: Iterable[str]) -> None:
        ids = [entry_id for entry_id in entry_ids if self.holds(entry_id)]
        if ids:
            await self._run(self._remove, ids, work=len(ids), write=True)

    async def search(self, vector: Vector, *, scope: str, k: int) -> list[Match]:
        """The k nearest entries of this scope, best first (expired ones included: the caller judges)."""
        return await self._run(self._search, vector, scope, k)

    def note_hit(self, entry_id: str, *, now: float) -> None:
        """Count a hit (for eviction), at once and on the calling thread. Without the lock: a dict
        lookup and two attribute stores, which the GIL keeps whole; the worker reads them only to
        weigh eviction candidates, where a hit seen a moment late costs nothing."""
        slot = self._by_id.get(entry_id)
        if slot is not None:
            slot.hits += 1
            slot.last_used_at = now

    async def touch(self, entry_id: str, *, now: float) -> None:
        """`note_hit` for callers that await."""
        self.note_hit(entry_id, now=now)

    async def victims(self, count: int, *, now: float) -> list[str]:
        """The `count` entries to evict first: expired ones, then the least valuable."""
        return await self._run(self._victims, count, now, work=count)

    async def retime(self, *, ttl_s: float) -> None:
        """A changed TTL applies to existing entries: expiry = creation + ttl_s."""
        await self._run(self._retime, ttl_s, work=len(self), write=True)

    def _victims(self, count: int, now: float) -> list[str]:
        with self._lock:
            chosen: dict[str, None] = {}  # insertion-ordered set
            # Expired first, soonest-expired first, off the heap; live items popped on the way
            # are pushed back, since these are only candidates until the caller removes them.
            popped: list[tuple[float, str]] = []
            while len(chosen) < count and self._expiry and self._expiry[0][0] <= now:
                item = heapq.heappop(self._expiry)
                slot = self._by_id.get(item[1])
                if slot is None or slot.expires_at != item[0] or item[1] in chosen:
                    continue  # stale: the entry is gone or was retimed
                chosen[item[1]] = None
                popped.append(item)
            for item in popped:
                heapq.heappush(self._expiry, item)
            while len(chosen) < count and len(chosen) < len(self._ids):
                left = len(self._ids) - len(chosen)
                if left <= self._sample_size:  # small enough to weigh all: the exact order
                    rest = [self._by_id[entry_id] for entry_id in self._ids if entry_id not in chosen]
                    rest.sort(key=lambda slot: (slot.expires_at > now, slot.value(now)))
                    chosen.update((slot.entry_id, None) for slot in rest[: count - len(chosen)])
                    break
                drawn = self._random.sample(range(len(self._ids)), self._sample_size)
                sample = (self._by_id[self._ids[i]] for i in drawn)
                candidates = [slot for slot in sample if slot.entry_id not in chosen]
                if candidates:
                    worst = min(candidates, key=lambda slot: (slot.expires_at > now, slot.value(now)))
                    chosen[worst.entry_id] = None
            return list(chosen)

    def _retime(self, ttl_s: float) -> None:
        with self._lock:
            for slot in self._by_id.values():
                slot.expires_at = slot.created_at + (ttl_s if slot.max_ttl_s is None else min(ttl_s, slot.max_ttl_s))
            self._expiry = [(slot.expires_at, slot.entry_id) for slot in self._by_id.values()]
            heapq.heapify(self._expiry)

    def _track(self, slot: _Slot) -> None:
        self._by_id[slot.entry_id] = slot
        self._positions[slot.entry_id] = len(self._ids)
        self._ids.append(slot.entry_id)
        heapq.heappush(self._expiry, (slot.expires_at, slot.entry_id))

    def _untrack(self, entry_id: str) -> None:
        if self._by_id.pop(entry_id, None) is None:
            return
        # Swap-remove from the sample list: O(1).
        position = self._positions.pop(entry_id)
        last = self._ids.pop()
        if last != entry_id:
            self._ids[position] = last
            self._positions[last] = position
        # Stale heap items are skipped when they surface; rebuild when they outnumber live ones,
        # so the heap stays O(n) (amortized O(1) per removal).
        if len(self._expiry) > 2 * len(self._by_id) + 64:
            self._expiry = [(slot.expires_at, slot.entry_id) for slot in self._by_id.values()]
            heapq.heapify(self._expiry)

    def _add(self, all_items: Sequence[IndexItem]) -> None:
        try:
            self._add_all(all_items)
        finally:
            self._adding.difference_update(item.entry_id for item in all_items)

    def _add_all(self, all_items: Sequence[IndexItem]) -> None:
        with self._lock:
            self._remove_locked([item.entry_id for item in all_items])
            for item in all_items:
                if item.vector is None:
                    self._plain[item.entry_id] = _slot(item)
                    self._track(self._plain[item.entry_id])
            items = [item for item in all_items if item.vector is not None]
            vectors = [item.vector for item in all_items if item.vector is not None]
            if not items:
                return
            # Deleted slots are reused first, so this over-counts a little and never under-counts.
            required = len(self._slots) + self._deleted + len(items)
            capacity = self._hnsw.get_max_elements()
            if required > capacity:
                self._hnsw.resize_index(max(capacity * 2, required))
                self._capacity = self._hnsw.get_max_elements()
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
                self._track(self._slots[label])
                self._labels[item.entry_id] = label
                self._scopes.setdefault(item.scope, _Scope()).labels.add(label)

    def _remove(self, entry_ids: list[str]) -> None:
        with self._lock:
            self._remove_locked(entry_ids)

    def _remove_locked(self, entry_ids: list[str]) -> None:
        for entry_id in entry_ids:
            self._adding.discard(entry_id)  # an insert cancelled before it ran
            self._untrack(entry_id)
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
        max_ttl_s=item.max_ttl_s,
    )


def _settled(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a call whose caller stopped waiting, so asyncio does not report an
    exception "never retrieved"; the caller was already told (`VectorIndexError`)."""
    if not future.cancelled():
        future.exception()


def _nothing() -> None:
    """Queued behind every pending call: when it has run, they have."""
