"""The cache decision: exact match, then embed, classify and search the category's index; hit or
miss; and whether (and for how long) an answer is remembered. The catalog does the writing.

Every fault of the store, index or embedder becomes a miss here (fail open): it is logged and
counted, and never reaches the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from embeddings import EmbedderError, EmbeddingBatcher, Vector
from gateway.cache.catalog import Catalog
from gateway.cache.feedback import FeedbackResult, RatingValue, Thresholds, state_document, state_from_document
from gateway.cache.scope import CacheKey
from gateway.config import FeedbackConfig
from gateway.errors import ThresholdTooLoose
from gateway.metrics import Metrics
from gateway.stores import CacheEntry, Store
from policies import Category, CategoryClassifier, Classification, Policy
from policies.feedback import Rating
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
    search_k: int = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivePolicy:
    """A policy with its classifier (exemplars embedded once, at load). Swapped whole on reload, so
    a request in flight sees one policy from start to end."""

    policy: Policy
    classifier: CategoryClassifier

    def classify(self, text: str, vector: Vector | None) -> Category:
        return self.policy.category(self.classifier.classify(text, vector).category)

    def by_rules(self, text: str) -> Classification | None:
        return self.classifier.classify_by_rules(text)


@dataclass(frozen=True, slots=True, kw_only=True)
class Hit:
    entry: CacheEntry
    similarity: float
    exact: bool

    @property
    def category(self) -> str:
        return self.entry.category


@dataclass(frozen=True, slots=True, kw_only=True)
class Miss:
    """`vector` is kept for remembering the answer; None when the prompt must stay exact-match only
    (truncated by the embedder) or when embedding failed. `best_similarity` is None without
    candidates. `storable` is False when the answer must not be kept (its category is not
    cacheable, or the category could not be told)."""

    vector: Vector | None
    best_similarity: float | None
    semantic: bool
    category: str | None
    storable: bool
    fault: str | None = None


Decision = Hit | Miss


class CacheEngine:
    def __init__(
        self,
        *,
        catalog: Catalog,
        batcher: EmbeddingBatcher,
        policy: ActivePolicy,
        settings: LookupSettings,
        metrics: Metrics,
        clock: Clock,
        verifier: Verifier | None = None,
        thresholds: Thresholds | None = None,
    ) -> None:
        self._catalog = catalog
        self._store = catalog.store
        self._batcher = batcher
        self._active = policy
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._verifier = verifier
        self._thresholds = thresholds or Thresholds.from_config(FeedbackConfig())

    @property
    def store(self) -> Store:
        return self._store

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    @property
    def policy(self) -> Policy:
        return self._active.policy

    def index_sizes(self) -> dict[str, int]:
        return self._catalog.index_sizes()

    def _floor(self, category: Category) -> float:
        """Below this similarity nothing is served: the category's threshold or, with a verifier,
        the verifier's floor (it judges every candidate from there up)."""
        return category.similarity_threshold if self._verifier is None else self._verifier.floor

    def threshold(self, category: Category) -> float:
        """The similarity a semantic candidate needs now: the floor, raised by bad feedback."""
        return self._thresholds.effective(category, self._floor(category))

    def thresholds(self) -> dict[str, float]:
        return {category.name: self.threshold(category) for category in self._active.policy.categories}

    def feedback_summary(self, category: Category) -> dict[str, Any]:
        state = self._thresholds.state(category.name)
        bounds = self._thresholds.bounds(category, self._floor(category))
        return {
            "ratings": len(state.ratings),
            "bad": state.bad,
            "target_error_rate": bounds.target_error_rate,
            "floor": bounds.floor,
            "max_threshold": bounds.ceiling,
        }

    def _fault(self, stage: str, exc: BaseException) -> None:
        self._metrics.fail_open.labels(stage=stage).inc()
        logger.warning("cache %s failed, serving from upstream: %s", stage, exc)

    async def lookup(
        self, key: CacheKey, *, threshold: float | None = None, max_age_s: float | None = None, search: bool = True
    ) -> Decision:
        """Exact match, then semantic within the prompt's category. `threshold` may only be stricter
        than the category's (`ThresholdTooLoose` otherwise); `max_age_s` refuses older entries;
        `search=False` (Cache-Control: no-cache) only embeds and classifies, so the fresh answer
        can still be stored."""
        active = self._active
        now = self._clock()
        oldest = now - max_age_s if max_age_s is not None else float("-inf")
        ruled = active.by_rules(key.prompt)
        if ruled is not None and not active.policy.category(ruled.category).cacheable:
            # Decided by a keyword before any embedding: the cheapest way to say no.
            return Miss(vector=None, best_similarity=None, semantic=False, category=ruled.category, storable=False)
        if search:
            exact = await self._exact(key, active, now)
            if exact is not None and exact.created_at >= oldest:
                _check_threshold(threshold, active.policy.category(exact.category))
                return Hit(entry=exact, similarity=1.0, exact=True)
        try:
            embedded = await self._batcher.embed(key.prompt)
        except EmbedderError as exc:
            self._fault("embedder", exc)
            # Without a vector there is no category, and an answer of unknown category is not kept.
            return Miss(vector=None, best_similarity=None, semantic=False, category=None, storable=False,
                        fault="embedder")  # fmt: skip
        category = active.classify(key.prompt, None if embedded.truncated else embedded.vector)
        _check_threshold(threshold, category)
        storable = category.cacheable
        if embedded.truncated or not category.cacheable:
            return Miss(vector=None, best_similarity=None, semantic=False, category=category.name, storable=storable)
        if not search:
            return Miss(vector=embedded.vector, best_similarity=None, semantic=True, category=category.name,
                        storable=True)  # fmt: skip
        # Without a verifier the category's threshold decides; with one, candidates from its floor
        # up are judged by it, even above the threshold: the classic false hits sit at high
        # similarity. Feedback and a per-request threshold can only make either stricter.
        # Bad feedback raises the similarity floor in either case (see `policies.feedback`).
        floor = max(self.threshold(category), threshold or 0.0)
        try:
            return await self._search(key, embedded.vector, category, now, floor=floor, oldest=oldest)
        except Exception as exc:  # fail-open boundary
            self._fault("search", exc)
            return Miss(vector=embedded.vector, best_similarity=None, semantic=True, category=category.name,
                        storable=True, fault="search")  # fmt: skip

    async def _exact(self, key: CacheKey, active: ActivePolicy, now: float) -> CacheEntry | None:
        try:
            entry = await self._store.get_exact(key.exact, now=now)
        except Exception as exc:  # fail-open boundary
            self._fault("store", exc)
            return None
        if entry is None or entry.category not in active.policy.names:
            return None
        return entry if active.policy.category(entry.category).cacheable else None

    async def _search(
        self, key: CacheKey, vector: Vector, category: Category, now: float, *, floor: float, oldest: float
    ) -> Decision:
        index = self._catalog.index(category.name)
        if index is None:  # the category left the policy during this lookup
            return Miss(vector=vector, best_similarity=None, semantic=True, category=category.name, storable=False)
        matches = await index.search(vector, scope=key.scope, k=self._settings.search_k)
        fresh = [match for match in matches if match.expires_at > now and match.created_at >= oldest]
        best = fresh[0].similarity if fresh else None
        verifier = self._verifier
        # Every candidate above the floor in one store round trip.
        entries = await self._store.get_many([match.entry_id for match in fresh if match.similarity >= floor], now=now)
        for match in fresh:
            if match.similarity < floor:
                break
            entry = entries.get(match.entry_id)
            if entry is None:
                continue
            # Feature extraction is regex work, milliseconds on long prompts: off the event loop.
            if verifier is None or await asyncio.to_thread(
                verifier.accepts, query=key.prompt, candidate=entry.prompt, similarity=match.similarity
            ):
                return Hit(entry=entry, similarity=match.similarity, exact=False)
        return Miss(vector=vector, best_similarity=best, semantic=True, category=category.name, storable=True)

    async def entry(self, entry_id: str) -> CacheEntry | None:
        """A live entry by id (raises `StoreError` when the store fails)."""
        return await self._store.get(entry_id, now=self._clock())

    async def rate(
        self, *, entry_id: str, category: str, similarity: float | None, rating: RatingValue
    ) -> FeedbackResult:
        """Apply a rating of a hit served from `entry_id`: a bad one removes the entry; a rated
        semantic hit (`similarity` known) moves its category's threshold."""
        removed = await self._catalog.forget(entry_id) if rating == "bad" else False
        policy = self._active.policy
        if category not in policy.names:  # it left the policy since: nothing to adjust
            return FeedbackResult(entry_id=entry_id, rating=rating, category=category, similarity=similarity,
                                  counted=False, entry_removed=removed, threshold=None)  # fmt: skip
        rules = policy.category(category)
        counted = similarity is not None
        before = self.threshold(rules)
        if similarity is not None:
            floor = self._floor(rules)
            # Sorting and bounding up to `feedback.window` ratings: a worker thread's job.
            state = await asyncio.to_thread(
                self._thresholds.rate, rules, floor, Rating(similarity=similarity, good=rating == "good")
            )
            try:
                await self._store.put_feedback(category, state_document(state))
            except Exception as exc:  # fail-open boundary: in force now, lost at a restart
                self._fault("feedback", exc)
        after = self.threshold(rules)
        self._metrics.feedback.labels(category=category, rating=rating).inc()
        if after != before:
            logger.info("category %s: threshold %.4f -> %.4f after a %s rating at similarity %.4f",
                        category, before, after, rating, similarity)  # fmt: skip
        return FeedbackResult(entry_id=entry_id, rating=rating, category=category, similarity=similarity,
                              counted=counted, entry_removed=removed, threshold=after)  # fmt: skip

    async def load_feedback(self) -> int:
        """Restore the feedback states the store kept (of categories the policy still has).
        Returns how many were restored; an unreadable one is skipped."""
        states = await self._store.feedback_states()
        restored = 0
        for name, document in states.items():
            if name not in self._active.policy.names:
                continue
            try:
                self._thresholds.load(name, state_from_document(document))
            except Exception as exc:  # fail-open boundary: one unreadable state, not all
                logger.warning("feedback state of category %s is unreadable, starting afresh: %s", name, exc)
                continue
            restored += 1
        return restored

    async def remember(
        self, key: CacheKey, miss: Miss, *, request: Mapping[str, Any], response: Mapping[str, Any]
    ) -> bool:
        """Remember a complete answer of a miss, if its category keeps answers, for the category's
        TTL. Runs after the client has its answer. Returns whether it was stored."""
        active = self._active
        if not miss.storable or miss.category is None or miss.category not in active.policy.names:
            return False
        category = active.policy.category(miss.category)
        return await self._catalog.remember(
            key,
            vector=miss.vector if miss.semantic else None,
            category=category,
            request=request,
            response=response,
            ttl_s=category.ttl_s,
        )

    async def apply_policy(self, new: ActivePolicy) -> dict[str, int]:
        """Switch to a reloaded policy without dropping the cache (the catalog drops removed
        categories, retimes and evicts). Returns how many entries were dropped per removed category."""
        old_names = set(self._active.policy.names)
        # The indexes of new categories exist before a lookup can classify into them.
        dropped = await self._catalog.apply_policy(new.policy)
        self._active = new
        for name in old_names - set(new.policy.names):
            self._thresholds.drop(name)
        return dropped


def _check_threshold(threshold: float | None, category: Category) -> None:
    if threshold is not None and threshold < category.similarity_threshold:
        raise ThresholdTooLoose(
            f"a per-request threshold may only be stricter than category {category.name!r}'s "
            f"{category.similarity_threshold:g}, got {threshold:g}",
            param="x-semcache-threshold",
            code="threshold_too_loose",
        )
