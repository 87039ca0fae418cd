"""The document store seam: where cached answers live (the index only holds vectors)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from embeddings import Vector

FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheEntry:
    entry_id: str
    scope_key: str
    exact_key: str
    prompt: str
    # None for prompts the embedder had to truncate: those are served by exact match only.
    embedding: Vector | None
    request: Mapping[str, Any]
    response: Mapping[str, Any]
    model: str
    created_at: float
    expires_at: float
    category: str = "default"
    hit_count: int = 0
    last_used_at: float | None = None


@runtime_checkable
class Store(Protocol):
    async def put(self, entry: CacheEntry) -> list[str]:
        """Store an entry; returns the ids of older entries it replaced (same exact key)."""
        ...

    async def get(self, entry_id: str, *, now: float) -> CacheEntry | None:
        """The entry, or None when it is missing or expired at `now`."""
        ...

    async def get_exact(self, exact_key: str, *, now: float) -> CacheEntry | None: ...

    async def record_hit(self, entry_id: str, *, now: float) -> None: ...

    async def purge_expired(self, *, now: float) -> list[str]:
        """Delete expired entries; returns their ids so the index can drop them too."""
        ...

    def scan_live(self, *, now: float) -> AsyncIterator[list[CacheEntry]]:
        """All unexpired entries in pages, to rebuild the index on start."""
        ...

    async def delete(self, entry_ids: list[str]) -> None:
        """Evict these entries (quota)."""
        ...

    async def delete_category(self, category: str) -> list[str]:
        """Drop a category's entries (it left the policy); returns their ids."""
        ...

    async def retime_category(self, category: str, *, ttl_s: float) -> None:
        """Apply a changed TTL to a category's existing entries: expiry = creation + ttl_s."""
        ...

    async def ping(self) -> None:
        """Raise `StoreError` unless the store can serve."""
        ...
