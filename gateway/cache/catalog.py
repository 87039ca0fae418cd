"""The catalog: the only writer of the store and the indexes, which it keeps in step.

Every change is an event of the store's change feed: `Added(entry)` or `Removed(ids, reason)`.
A write here goes to the store first, is then applied to this process's indexes, and is then
published; the feed's follower applies what other processes published (a Redis replica's
writes), skipping this catalog's own. Applying an event (`_apply`) is the one place an index
changes, whoever wrote it. A follower that missed events (`Resync`: a trimmed Redis Stream, a
Redis that lost its data) has the indexes rebuilt from the store; until that is done `ready` is
False (/readyz says so) and lookups search the entries loaded so far, each checked in the store.

Remembering never leaves an entry half-visible: when the index cannot take an entry the store
has, the entry is deleted from the store again (`withdrawn`). Hits are counted in the index at
once and buffered here for the store, which gets them in one batch every `hit_flush_interval_s`
and at close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from embeddings import Vector
from gateway.cache.index import IndexItem, VectorIndex
from gateway.cache.scope import CacheKey
from gateway.metrics import Metrics
from gateway.stores import Added, CacheEntry, ChangeEvent, FeedItem, HitTally, RemovalReason, Removed, Resync, Store
from policies import Category, Policy

logger = logging.getLogger("semcache.catalog")

Clock = Callable[[], float]


class Catalog:
    """`async with Catalog(...) as catalog:` follows the change feed and flushes hit counts in
    the background until closed; closing flushes what is left and closes the indexes."""

    def __init__(
        self,
        *,
        store: Store,
        dimension: int,
        policy: Policy,
        metrics: Metrics,
        clock: Clock,
        index_deadline_s: float = 0.1,
        hit_flush_interval_s: float = 5.0,
        index_type: type[VectorIndex] = VectorIndex,
    ) -> None:
        self._store = store
        self._dimension = dimension
        self._policy = policy
        self._metrics = metrics
        self._clock = clock
        self._index_deadline_s = index_deadline_s
        self._hit_flush_interval_s = hit_flush_interval_s
        self._index_type = index_type  # a test peer's subclass, to make an index fail
        self._origin = uuid.uuid4().hex  # this catalog's events, to skip on the feed
        self._indexes = {name: self._new_index() for name in policy.names}
        self._hits: dict[str, HitTally] = {}
        # One write at a time: room is made, then the entry added, without a concurrent remember
        # taking that room in between (the quota holds exactly).
        self._write_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._rebuilding = False

    @property
    def ready(self) -> bool:
        """False while the indexes are being rebuilt after the feed was lost."""
        return not self._rebuilding

    @property
    def store(self) -> Store:
        return self._store

    @property
    def policy(self) -> Policy:
        return self._policy

    def index(self, category: str) -> VectorIndex | None:
        return self._indexes.get(category)

    def index_sizes(self) -> dict[str, int]:
        return {name: len(index) for name, index in self._indexes.items()}

    def _new_index(self) -> VectorIndex:
        return self._index_type(self._dimension, deadline_s=self._index_deadline_s)

    async def __aenter__(self) -> Catalog:
        # Subscribed here, not when the task first runs, so that nothing published from here on
        # is missed.
        feed = self._store.follow()
        self._tasks = [
            asyncio.create_task(self._follow(feed), name="catalog-follow"),
            asyncio.create_task(self._flush_periodically(), name="catalog-flush-hits"),
        ]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.flush_hits()
        indexes, self._indexes = list(self._indexes.values()), {}
        for index in indexes:
            await index.aclose()

    def _fault(self, stage: str, exc: BaseException) -> None:
        self._metrics.fail_open.labels(stage=stage).inc()
        logger.warning("cache %s failed: %s", stage, exc)

    # -- events -------------------------------------------------------------------------------

    async def _apply(self, events: Sequence[ChangeEvent]) -> None:
        """Bring the indexes in step with events, in order; consecutive additions go to each
        index in one call."""
        pending: dict[str, list[IndexItem]] = defaultdict(list)
        for event in events:
            if isinstance(event, Added):
                if event.entry.category in self._indexes:  # else a category this policy lacks
                    pending[event.entry.category].append(_index_item(event.entry))
                continue
            await self._add(pending)
            pending.clear()
            for index in list(self._indexes.values()):
                await index.remove(event.entry_ids)
        await self._add(pending)

    async def _add(self, pending: Mapping[str, list[IndexItem]]) -> None:
        for name, items in pending.items():
            index = self._indexes.get(name)
            if index is not None and items:
                await index.add(items)

    async def _publish(self, events: Sequence[ChangeEvent]) -> None:
        """Tell the other processes; a failure leaves them behind until their next rebuild, which
        is logged and counted but undoes nothing here (the store already has the change)."""
        try:
            await self._store.publish(events)
        except Exception as exc:  # fail-open boundary: this process is consistent either way
            self._fault("publish", exc)

    async def _follow(self, feed: AsyncIterator[FeedItem]) -> None:
        try:
            async for event in feed:
                if isinstance(event, Resync):
                    await self._resync(event)
                    continue
                if event.origin == self._origin:
                    continue  # applied when written
                try:
                    await self._apply([event])
                except Exception as exc:  # fail-open boundary: one event, not the follower
                    self._fault("follow", exc)
        except Exception as exc:  # fail-open boundary: the feed itself broke; local writes still apply
            self._fault("follow", exc)
        finally:
            closer = getattr(feed, "aclose", None)
            if closer is not None:
                await closer()

    async def _resync(self, event: Resync) -> None:
        """Start the indexes afresh and load them from the store. Events published meanwhile are
        read after it (the feed goes on from where it was when it said `Resync`): applying one the
        scan saw already is harmless (an add replaces, a removal of a missing id does nothing)."""
        logger.warning("the change feed lost events (%s): rebuilding the indexes from the store", event.reason)
        self._rebuilding = True
        try:
            async with self._write_lock:
                old, self._indexes = self._indexes, {name: self._new_index() for name in self._policy.names}
            for index in old.values():
                await index.aclose()
            started = self._clock()
            count = await self.rebuild()
            logger.info("indexes rebuilt with %d entries in %.1f s", count, self._clock() - started)
        except Exception as exc:  # fail-open boundary: what was loaded is served; the next resync retries
            self._fault("rebuild", exc)
        finally:
            self._rebuilding = False

    def _removed(self, entry_ids: Sequence[str], reason: RemovalReason) -> Removed:
        return Removed(entry_ids=tuple(entry_ids), reason=reason, origin=self._origin)

    # -- writes -------------------------------------------------------------------------------

    async def remember(
        self,
        key: CacheKey,
        *,
        vector: Vector | None,
        category: Category,
        request: Mapping[str, Any],
        response: Mapping[str, Any],
        ttl_s: float,
    ) -> bool:
        """Store an answer and index it, within its category's quota; `vector` None keeps it
        exact-match only. Returns whether it was stored; a fault is counted, never raised."""
        now = self._clock()
        entry = CacheEntry(
            entry_id=uuid.uuid4().hex,
            scope_key=key.scope,
            exact_key=key.exact,
            prompt=key.prompt,
            embedding=vector,
            request=request,
            response=response,
            model=str(request.get("model", "")),
            created_at=now,
            expires_at=now + ttl_s,
            category=category.name,
            max_ttl_s=ttl_s if ttl_s < category.ttl_s else None,
        )
        async with self._write_lock:
            index = self._indexes.get(category.name)  # under the lock: a reload may have dropped it
            if index is None:  # the category left the policy while the answer was on its way
                return False
            try:
                # Exact-only entries (no vector) count against the quota too: the index keeps them.
                await self._evict(index, category, room_for=1)
                replaced = await self._store.put(entry)
            except Exception as exc:  # fail-open boundary: the client has its answer already
                self._fault("remember", exc)
                return False
            events: list[ChangeEvent] = [self._removed(replaced, "replaced")] if replaced else []
            added = Added(entry=entry, origin=self._origin)
            try:
                await self._apply([*events, added])
            except Exception as exc:  # fail-open boundary: take the entry back out of the store
                self._fault("remember", exc)
                await self._withdraw(entry.entry_id, events)
                return False
            await self._publish([*events, added])
        self._metrics.stored.inc()
        return True

    async def _withdraw(self, entry_id: str, events: list[ChangeEvent]) -> None:
        """Undo a half-done remember: the store has the entry, an index does not (or may, if the
        add only missed its deadline: it still runs, so the removal is queued behind it)."""
        withdrawn = self._removed([entry_id], "withdrawn")
        with contextlib.suppress(Exception):  # counted already; the index may be the fault
            await self._apply([withdrawn])
        try:
            await self._store.delete([entry_id])
        except Exception as exc:  # an entry only exact lookups can find until it expires
            self._fault("remember", exc)
        await self._publish([*events, withdrawn])

    async def _evict(self, index: VectorIndex, category: Category, *, room_for: int) -> None:
        """Keep the category within its quota: expired entries go first, then the least valuable.
        Out of the store first: should the index then fail, a search finds ids the store no
        longer has, which a lookup skips; the reverse would serve an evicted entry by exact key."""
        excess = len(index) + room_for - category.max_entries
        if excess <= 0:
            return
        victims = await index.victims(excess, now=self._clock())
        await self._store.delete(victims)
        event = self._removed(victims, "evicted")
        await self._apply([event])
        await self._publish([event])
        self._metrics.evicted.labels(category=category.name).inc(len(victims))

    async def forget(self, entry_id: str) -> bool:
        """Stop serving an entry (a bad rating): out of the indexes and the store. Returns whether
        the store had it; a store fault is counted and reported as not removed."""
        event = self._removed([entry_id], "forgotten")
        async with self._write_lock:
            # Out of the indexes first: whatever the store does next, it is no longer searched.
            try:
                await self._apply([event])
            except Exception as exc:  # fail-open boundary: the store still decides below
                self._fault("feedback", exc)
            try:
                existed = bool(await self._store.delete([entry_id]))
            except Exception as exc:  # fail-open boundary: the rating still counts
                self._fault("feedback", exc)
                return False
            await self._publish([event])
        self._hits.pop(entry_id, None)
        return existed

    def note_hit(self, entry_id: str, category: str) -> None:
        """Count a hit: in the index now (eviction weighs it), in the store at the next flush."""
        now = self._clock()
        index = self._indexes.get(category)
        if index is not None:
            index.note_hit(entry_id, now=now)
        tally = self._hits.get(entry_id)
        self._hits[entry_id] = HitTally(count=(tally.count if tally else 0) + 1, last_at=now)

    async def flush_hits(self) -> None:
        """Write the buffered hit counts in one batch; on failure they are kept for the next."""
        hits, self._hits = self._hits, {}
        if not hits:
            return
        try:
            await self._store.record_hits(hits)
        except BaseException as exc:  # cancelled (at close) or failed: kept for the next flush
            for entry_id, tally in hits.items():  # merged with the hits counted meanwhile
                newer = self._hits.get(entry_id)
                self._hits[entry_id] = (
                    tally if newer is None else HitTally(count=tally.count + newer.count, last_at=newer.last_at)
                )
            if not isinstance(exc, Exception):
                raise
            self._fault("record_hit", exc)  # fail-open boundary: bookkeeping only

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._hit_flush_interval_s)
            await self.flush_hits()

    async def purge_expired(self) -> int:
        async with self._write_lock:
            expired = await self._store.purge_expired(now=self._clock())
            if expired:
                event = self._removed(expired, "expired")
                await self._apply([event])
                await self._publish([event])
        return len(expired)

    async def rebuild(self) -> int:
        """Load every live entry of the store into the (empty) indexes, a page per index call;
        entries of categories the policy no longer has are dropped, current TTLs are applied and
        quotas enforced. Returns how many were loaded. The other processes have these entries
        already: nothing is published but what is removed."""
        policy = self._policy
        async with self._write_lock:
            for category in policy.categories:
                await self._store.retime_category(category.name, ttl_s=category.ttl_s)
            count = 0
            orphans: list[str] = []
            async for page in self._store.scan_live(now=self._clock()):
                kept = [entry for entry in page if entry.category in self._indexes]
                orphans += [entry.entry_id for entry in page if entry.category not in self._indexes]
                await self._apply([Added(entry=entry, origin=self._origin) for entry in kept])
                count += len(kept)
            if orphans:
                await self._store.delete(orphans)
                await self._publish([self._removed(orphans, "orphaned")])
            for category in policy.categories:
                await self._evict(self._indexes[category.name], category, room_for=0)
        return count

    async def apply_policy(self, new: Policy) -> dict[str, int]:
        """Switch to a reloaded policy without dropping the cache: entries of removed categories
        are dropped, changed TTLs apply to existing entries, lowered quotas evict. Returns how
        many entries were dropped per removed category."""
        async with self._write_lock:
            old = self._policy
            for category in new.categories:
                if category.name not in self._indexes:
                    self._indexes[category.name] = self._new_index()
                if category.name in old.names and old.category(category.name).ttl_s != category.ttl_s:
                    await self._store.retime_category(category.name, ttl_s=category.ttl_s)
                    await self._indexes[category.name].retime(ttl_s=category.ttl_s)
            self._policy = new
            dropped: dict[str, int] = {}
            for name in set(old.names) - set(new.names):
                ids = await self._store.delete_category(name)
                dropped[name] = len(ids)
                await self._indexes.pop(name).aclose()
                if ids:
                    await self._publish([self._removed(ids, "dropped")])
            for category in new.categories:
                await self._evict(self._indexes[category.name], category, room_for=0)
        return dropped


def _index_item(entry: CacheEntry) -> IndexItem:
    return IndexItem(
        entry_id=entry.entry_id,
        scope=entry.scope_key,
        vector=entry.embedding,
        created_at=entry.created_at,
        expires_at=entry.expires_at,
        hit_count=entry.hit_count,
        last_used_at=entry.last_used_at,
        max_ttl_s=entry.max_ttl_s,
    )
