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
        """Drop a category's entries and its feedback state (it left the policy); returns the
        entries' ids."""
        ...

    async def put_feedback(self, category: str, state: Mapping[str, Any]) -> None:
        """Keep a category's feedback state (a JSON object with a `format_version`) across restarts."""
        ...

    async def feedback_states(self) -> dict[str, Mapping[str, Any]]:
        """Every category's feedback state, as `put_feedback` stored it."""
        ...

    async def adopt_embedder(self, name: str) -> int:
        """Record that vectors come from embedder `name` from now on. If the store's entries were
        embedded by another model their vectors mean nothing to this one (and feedback thresholds,
        being similarities, neither): every entry and feedback state is dropped. Returns how many
        entries were dropped."""
        ...

    async def retime_category(self, category: str, *, ttl_s: float) -> None:
        """Apply a changed TTL to a category's existing entries: expiry = creation + ttl_s."""
        ...

    async def ping(self) -> None:
        """Raise `StoreError` unless the store can serve."""
        ...
