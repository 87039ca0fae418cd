"""The store seams: where cached answers live (the index only holds vectors).

Five concerns, one small protocol each, so that a backend (or a test peer) can be read one job at
a time and a caller asks for no more than it uses:

    EntryStore   the cached answers: put, get_many (a lookup's candidates in one round trip), ...
    StateStore   feedback states (one document per category) and observations (per entry, and a
                 category's pool), which are appended, never read-modified-written, so replicas
                 cannot overwrite each other; a backend keeps at most `MAX_OBSERVATIONS` per key
    ChangeFeed   `Added` / `Removed` events: how every process's catalog learns what to index
                 (and `Resync` when a follower missed some)
    AdminStore   ping, adopt_embedder, record_hits (batched hit counts)
    Store        all four: what a backend implements and what `SemanticCache` takes
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from embeddings import Vector

FORMAT_VERSION = 1
# The most observations a store keeps under one key (the most recent): readers use fewer.
MAX_OBSERVATIONS = 4096


def pool_key(category: str) -> str:
    """The key a category's pooled observations are appended under (entry ids are hex)."""
    return f"category:{category}"


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
    # A request's own TTL when it was shorter than its category's: a later retime (a changed
    # category TTL, a restart) keeps the entry's life at most this long.
    max_ttl_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HitTally:
    """Hits of one entry since the last flush: how many, and when the latest was."""

    count: int
    last_at: float


# Why entries left: "replaced" (a newer answer under the same exact key), "evicted" (quota),
# "forgotten" (a bad rating), "expired" (purged), "dropped" (its category left the policy),
# "orphaned" (found at a rebuild under a category the policy no longer has), "withdrawn" (its
# write could not be completed everywhere, so it was taken back).
RemovalReason = Literal["replaced", "evicted", "forgotten", "expired", "dropped", "orphaned", "withdrawn"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Added:
    """An entry is in the store: index it. `origin` names the catalog that wrote it, which applied
    it already and skips it on the feed."""

    entry: CacheEntry
    origin: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Removed:
    entry_ids: tuple[str, ...]
    reason: RemovalReason
    origin: str = ""


ChangeEvent = Added | Removed


@dataclass(frozen=True, slots=True, kw_only=True)
class Resync:
    """Not a change but a follower's notice that it missed some (a trimmed stream, a Redis that
    lost its data): the index no longer follows the store and is rebuilt from it. Only `follow`
    yields it; nobody publishes it."""

    reason: str


FeedItem = ChangeEvent | Resync


@runtime_checkable
class EntryStore(Protocol):
    async def put(self, entry: CacheEntry) -> list[str]:
        """Store an entry; returns the ids of older entries it replaced (same exact key)."""
        ...

    async def get(self, entry_id: str, *, now: float) -> CacheEntry | None:
        """The entry, or None when it is missing or expired at `now`."""
        ...

    async def get_many(self, entry_ids: Sequence[str], *, now: float) -> dict[str, CacheEntry]:
        """The live entries among `entry_ids` (a lookup's candidates), by id, in one round trip."""
        ...

    async def get_exact(self, exact_key: str, *, now: float) -> CacheEntry | None: ...

    async def delete(self, entry_ids: Sequence[str]) -> list[str]:
        """Delete these entries; returns the ids that were there."""
        ...

    def scan_live(self, *, now: float) -> AsyncIterator[list[CacheEntry]]:
        """All unexpired entries in pages, to rebuild the index on start."""
        ...

    async def retime_category(self, category: str, *, ttl_s: float) -> None:
        """Apply a changed TTL to a category's existing entries: expiry = creation + ttl_s."""
        ...

    async def delete_category(self, category: str) -> list[str]:
        """Drop a category's entries and its feedback state (it left the policy); returns the
        entries' ids."""
        ...

    async def purge_expired(self, *, now: float) -> list[str]:
        """Delete expired entries; returns their ids so the index can drop them too."""
        ...


@runtime_checkable
class StateStore(Protocol):
    async def put_feedback(self, category: str, state: Mapping[str, Any]) -> None:
        """Keep a category's feedback state (a JSON object with a `format_version`) across restarts."""
        ...

    async def feedback_states(self) -> dict[str, Mapping[str, Any]]:
        """Every category's feedback state, as `put_feedback` stored it."""
        ...

    async def append_observation(self, entry_id: str, record: Mapping[str, Any]) -> None:
        """Append what was observed of an entry (a JSON object): never a read-modify-write, so two
        replicas observing the same entry both keep theirs."""
        ...

    async def observations(self, entry_id: str) -> list[Mapping[str, Any]]:
        """An entry's observations, oldest first."""
        ...

    async def observations_many(self, entry_ids: Sequence[str]) -> dict[str, list[Mapping[str, Any]]]:
        """The observations of each of `entry_ids` (a lookup's candidates), oldest first, in one
        round trip; an id without any is left out. Observations go with their entry (every path
        that removes an entry removes them); a key that is no entry id (a category's pooled
        observations, `category:<name>`) goes with its category (`delete_category`)."""
        ...


@runtime_checkable
class ChangeFeed(Protocol):
    async def publish(self, events: Sequence[ChangeEvent]) -> None:
        """Tell every follower (this process's and other replicas') what changed."""
        ...

    def follow(self) -> AsyncIterator[FeedItem]:
        """Events published from now on, in order. Subscribed when called, not when first
        iterated, so nothing published in between is missed; close it (`aclose`) to stop. A
        follower that missed events yields `Resync` and goes on from there."""
        ...


@runtime_checkable
class AdminStore(Protocol):
    async def ping(self) -> None:
        """Raise `StoreError` unless the store can serve."""
        ...

    async def adopt_embedder(self, name: str) -> int:
        """Record that vectors come from embedder `name` from now on. If the store's entries were
        embedded by another model their vectors mean nothing to this one (and feedback thresholds,
        being similarities, neither): every entry and feedback state is dropped. Returns how many
        entries were dropped."""
        ...

    async def record_hits(self, hits: Mapping[str, HitTally]) -> None:
        """Add buffered hit counts (entry id → tally) in one write; unknown ids are skipped."""
        ...


@runtime_checkable
class HitRegistry(Protocol):
    """Hits served, by response id, where every replica can see them (a store shared by
    processes: Redis), so that a hit served by one replica can be rated through another. A
    single-process store has none: the cache's in-memory registry is enough there."""

    async def record_served(self, response_id: str, hit: Mapping[str, Any], *, ttl_s: float) -> None:
        """Keep what was served under `response_id` (a JSON object) for `ttl_s`."""
        ...

    async def served(self, response_id: str) -> Mapping[str, Any] | None:
        """What `record_served` kept, or None (never served, or too long ago)."""
        ...

    async def claim_rating(self, response_id: str) -> bool:
        """True for the first caller only, whichever replica it asks: each hit is rated once."""
        ...


@runtime_checkable
class Store(EntryStore, StateStore, ChangeFeed, AdminStore, Protocol):
    """Everything a backend provides."""
