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
from typing import Any

from embeddings import EmbedderError, EmbeddingBatcher, Vector
from gateway.cache.catalog import Catalog
from gateway.cache.decisions import Bypass, Candidate, Decision, Exploration, Hit, Miss, NearMiss
from gateway.cache.feedback import FeedbackResult, RatingValue, Thresholds, state_document, state_from_document
from gateway.cache.scope import CacheKey, cache_key
from gateway.cache.verification import Verification
from gateway.config import FeedbackConfig
from gateway.errors import ThresholdTooLoose
from gateway.metrics import Metrics
from gateway.stores import CacheEntry, Store
from gateway.upstream import Router
from gateway.wire import CompletionRequest, replay_completion
from gateway.wire.cache_control import CacheControl
from policies import DEFAULT, Category, CategoryClassifier, Classification, Policy
from policies.feedback import Rating
from policies.rules import Rules, rules_for
from policies.verified import Observation
from policies.verifier import Verifier

logger = logging.getLogger("semcache.engine")

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupSettings:
    search_k: int = 4


# Policy rules are user regexes: over a prompt this long, a worker thread runs them, not the loop.
_RULES_INLINE_CHARS = 2048


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivePolicy:
    """A policy with its classifier (exemplars embedded once, at load). Swapped whole on reload, so
    a request in flight sees one policy from start to end."""

    policy: Policy
    classifier: CategoryClassifier

    def classify(self, text: str, vector: Vector | None) -> Category:
        """Rules, then the vector, in one synchronous call (for offline jobs and benches)."""
        return self.policy.category(self.classifier.classify(text, vector).category)

    def by_vector(self, vector: Vector | None) -> Category:
        """The embedding step alone (the rules ran first); no vector: the catch-all category."""
        if vector is None:
            return self.policy.category(DEFAULT)
        return self.policy.category(self.classifier.classify_vector(vector).category)

    async def by_rules(self, text: str) -> Classification | None:
        if len(text) <= _RULES_INLINE_CHARS:
            return self.classifier.classify_by_rules(text)
        return await asyncio.to_thread(self.classifier.classify_by_rules, text)


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
        verification: Verification | None = None,
        load: Router | None = None,
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
        self._verification = verification
        # The load of each category's tier moves its rules (`rules`); the last pressure is kept for
        # the threshold gauge.
        self._load = load
        self._pressure: dict[str, float] = {}

    @property
    def store(self) -> Store:
        return self._store

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    @property
    def policy(self) -> Policy:
        return self._active.policy

    @property
    def verification(self) -> Verification | None:
        return self._verification

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
        """Each category's hit threshold in force: feedback's, moved by the load pressure of its last request."""
        return {
            category.name: rules_for(
                category, threshold=self.threshold(category), pressure=self._pressure.get(category.name, 0.0)
            ).hit_threshold
            for category in self._active.policy.categories
        }

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

    def rules(self, category: Category, control: CacheControl) -> Rules:
        """The rules in force for one request of `category`; a per-request threshold may only be
        stricter than the category's (`ThresholdTooLoose` otherwise)."""
        _check_threshold(control.threshold, category)
        pressure = 0.0 if self._load is None else self._load.pressure(category.name, category.tier)
        self._pressure[category.name] = pressure
        return rules_for(
            category,
            threshold=self.threshold(category),
            pressure=pressure,
            requested_threshold=control.threshold,
            requested_ttl_s=control.ttl_s,
        )

    async def lookup(self, request: CompletionRequest, *, tenant: str, control: CacheControl) -> Decision:
        """Exact match, then semantic within the prompt's category, under the rules in force for
        this request. `control.lookup=False` (Cache-Control: no-cache) only embeds and classifies,
        so the fresh answer can still be stored; `control.max_age_s` refuses older entries."""
        key = cache_key(request, tenant=tenant, namespace=control.namespace)
        if not isinstance(key, CacheKey):
            return self._bypass(request, key.reason)
        active = self._active
        now = self._clock()
        oldest = now - control.max_age_s if control.max_age_s is not None else float("-inf")
        # Classification runs once: the rules now (a keyword can say "not cacheable" before any
        # embedding, the cheapest way to say no), the vector's step only if no rule matched.
        ruled = await active.by_rules(key.prompt)
        if ruled is not None and not active.policy.category(ruled.category).cacheable:
            return self._bypass(request, "category-not-cacheable", ruled.category)
        if control.lookup:
            exact = await self._exact(key, active, now)
            if exact is not None and exact.created_at >= oldest:
                self.rules(active.policy.category(exact.category), control)  # refuses a looser threshold
                return self._hit(request, exact, similarity=1.0, rules=None, now=now)
        try:
            embedded = await self._batcher.embed(key.prompt)
        except EmbedderError as exc:
            self._fault("embedder", exc)
            # Without a vector there is no category, and an answer of unknown category is not kept.
            return self._miss(request, key, None, None, reason="fail-open:embedder")
        vector = None if embedded.truncated else embedded.vector
        category = active.policy.category(ruled.category) if ruled is not None else active.by_vector(vector)
        rules = self.rules(category, control)
        if not category.cacheable:
            return self._bypass(request, "category-not-cacheable", category.name)
        if vector is None:
            return self._miss(request, key, category, rules, reason="prompt-over-embedder-window")
        if not control.lookup:
            return self._miss(request, key, category, rules, vector=vector)
        try:
            return await self._search(request, key, vector, category, rules, now=now, oldest=oldest, tenant=tenant)
        except Exception as exc:  # fail-open boundary
            self._fault("search", exc)
            return self._miss(request, key, category, rules, vector=vector, reason="fail-open:search")

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
        self,
        request: CompletionRequest,
        key: CacheKey,
        vector: Vector,
        category: Category,
        rules: Rules,
        *,
        now: float,
        oldest: float,
        tenant: str,
    ) -> Decision:
        """Without a verifier the threshold in force decides; with one, candidates from its floor up
        are judged by it, even far above it: the classic false hits sit at high similarity. With
        verified thresholds the threshold (the verifier's floor) is a hard floor and, above it, the
        verified rule serves, explores (a miss that tests the candidate) or refuses each candidate,
        nearest first. Those refused, and those in the near-miss band, are the near miss's
        candidates."""
        index = self._catalog.index(category.name)
        if index is None:  # the category left the policy during this lookup: not stored either
            return self._miss(request, key, None, None, vector=vector, reason="policy-reloaded")
        matches = await index.search(vector, scope=key.scope, k=self._settings.search_k)
        fresh = [match for match in matches if match.expires_at > now and match.created_at >= oldest]
        best = fresh[0].similarity if fresh else None
        floor = rules.hit_threshold if rules.near_miss_floor is None else rules.near_miss_floor
        wanted = [match for match in fresh if match.similarity >= floor]
        # Every candidate above the floor in one store round trip (and their observations in one).
        entries = await self._store.get_many([match.entry_id for match in wanted], now=now)
        verification = self._verification
        observed = {}
        if verification is not None:
            observed = await verification.observations([m.entry_id for m in wanted if rules.is_hit(m.similarity)])
        candidates: list[Candidate] = []
        for match in wanted:
            entry = entries.get(match.entry_id)
            if entry is None:
                continue
            if rules.is_hit(match.similarity) and await self._verified(key.prompt, entry, match.similarity):
                if verification is None:
                    return self._hit(request, entry, similarity=match.similarity, rules=rules, now=now)
                verdict = await verification.decide(
                    category.name,
                    observed.get(entry.entry_id, ()),
                    match.similarity,
                    error_bound=self._active.policy.error_bound_of(category),
                    floor=rules.hit_threshold,
                )
                verification.note(category.name, verdict, served=verdict.action == "serve")
                if verdict.action == "serve":
                    return self._hit(request, entry, similarity=match.similarity, rules=rules, now=now)
                if verdict.action == "explore" and verification.take_budget(category.name):
                    explored = Exploration(entry=entry, similarity=match.similarity,
                                           moves_prior=verification.moves_prior(tenant))  # fmt: skip
                    return self._miss(request, key, category, rules, vector=vector, best=best, reason="explore",
                                      exploration=explored)  # fmt: skip
            if rules.near_miss_floor is not None:
                candidates.append(Candidate(entry=entry, similarity=match.similarity))
        if candidates:
            return self._near_miss(request, key, category, rules, vector=vector, best=best, candidates=candidates)
        return self._miss(request, key, category, rules, vector=vector, best=best)

    async def _verified(self, prompt: str, entry: CacheEntry, similarity: float) -> bool:
        if self._verifier is None:
            return True
        # Feature extraction is regex work, milliseconds on long prompts: off the event loop.
        accepts = self._verifier.accepts
        return await asyncio.to_thread(accepts, query=prompt, candidate=entry.prompt, similarity=similarity)

    # Each decision is built here and nowhere else.

    def _hit(
        self, request: CompletionRequest, entry: CacheEntry, *, similarity: float, rules: Rules | None, now: float
    ) -> Hit:
        answer = replay_completion(entry.response, endpoint=request.endpoint, now=now)
        return Hit(request=request, entry=entry, answer=answer, similarity=similarity, exact=rules is None, rules=rules)

    @staticmethod
    def _miss(
        request: CompletionRequest,
        key: CacheKey,
        category: Category | None,
        rules: Rules | None,
        *,
        vector: Vector | None = None,
        best: float | None = None,
        reason: str | None = None,
        exploration: Exploration | None = None,
    ) -> Miss:
        name = None if category is None else category.name
        return Miss(request=request, key=key, category=name, rules=rules, vector=vector, best_similarity=best,
                    reason=reason, exploration=exploration)  # fmt: skip

    @staticmethod
    def _near_miss(
        request: CompletionRequest,
        key: CacheKey,
        category: Category,
        rules: Rules,
        *,
        vector: Vector,
        best: float | None,
        candidates: list[Candidate],
    ) -> NearMiss:
        ranked = tuple(sorted(candidates, key=lambda candidate: candidate.similarity, reverse=True))
        return NearMiss(request=request, key=key, category=category.name, rules=rules, vector=vector,
                        best_similarity=best, candidates=ranked)  # fmt: skip

    @staticmethod
    def _bypass(request: CompletionRequest, reason: str, category: str | None = None) -> Bypass:
        return Bypass(request=request, reason=reason, category=category)

    async def entry(self, entry_id: str) -> CacheEntry | None:
        """A live entry by id (raises `StoreError` when the store fails)."""
        return await self._store.get(entry_id, now=self._clock())

    async def rate(
        self,
        *,
        entry_id: str,
        category: str,
        similarity: float | None,
        rating: RatingValue,
        observed_similarity: float | None = None,
    ) -> FeedbackResult:
        """Apply a rating of a hit served from `entry_id`: a bad one removes the entry; a rated
        semantic hit (`similarity` known) moves its category's threshold. With verified thresholds a
        rated semantic hit (`observed_similarity`) is an observation: of the entry when it stays, of
        the category's pool when `similarity` is known (the caller may move shared state)."""
        removed = await self._catalog.forget(entry_id) if rating == "bad" else False
        if observed_similarity is not None:
            observation = Observation(similarity=observed_similarity, correct=rating == "good")
            # A removed entry's observations went with it: only the pool may still learn from it.
            await self.observe(None if removed else entry_id, category, observation, pooled=similarity is not None,
                               source="feedback")  # fmt: skip
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

    async def observe(
        self, entry_id: str | None, category: str, observation: Observation, *, pooled: bool, source: str
    ) -> bool:
        """Record an observation of an entry (verified thresholds); False when they are off, the
        category left the policy, or the store failed (counted, in force until a restart)."""
        verification = self._verification
        if verification is None or category not in self._active.policy.names:
            return False
        error_bound = self._active.policy.error_bound_of(self._active.policy.category(category))
        try:
            await verification.record(entry_id, category, observation, pooled=pooled, source=source,
                                      error_bound=error_bound)  # fmt: skip
        except Exception as exc:  # fail-open boundary: background bookkeeping
            self._fault("observation", exc)
            return False
        return True

    async def load_verified(self) -> int:
        """Restore the category pools of verified thresholds; returns how many observations."""
        if self._verification is None:
            return 0
        policy = self._active.policy
        return await self._verification.restore({c.name: policy.error_bound_of(c) for c in policy.categories})

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

    async def remember(self, miss: Miss, *, response: Mapping[str, Any]) -> bool:
        """Store a complete answer and index it, within its category's quota, for `miss.rules.ttl_s`.
        Runs after the client has its answer. Returns whether it was stored."""
        active = self._active
        if miss.category is None or miss.rules is None or miss.category not in active.policy.names:
            return False
        category = active.policy.category(miss.category)
        key, request = miss.key, dict(miss.request.body)
        if key.namespace is not None:  # `_owned_by` rebuilds the scope from the stored request
            request["cache"] = {"namespace": key.namespace}  # answer-neutral: not in the parameters
        return await self._catalog.remember(
            key, vector=miss.vector, category=category, request=request, response=response, ttl_s=miss.rules.ttl_s
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
            if self._verification is not None:
                self._verification.drop(name)
        return dropped


def _check_threshold(threshold: float | None, category: Category) -> None:
    if threshold is not None and threshold < category.similarity_threshold:
        raise ThresholdTooLoose(
            f"a per-request threshold may only be stricter than category {category.name!r}'s "
            f"{category.similarity_threshold:g}, got {threshold:g}",
            param="x-semcache-threshold",
            code="threshold_too_loose",
        )
