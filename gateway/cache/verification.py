"""Verified thresholds in the gateway: the state the pure rule (`policies.verified`) decides from,
kept in memory, in step with the store, and the exploration budget.

    verification = Verification(store=store, config=config.verified, moves_thresholds=..., clock=clock)
    await verification.restore(policy.names)                    # the category pools, from the store
    observed = await verification.observations(candidate_ids)   # one state read at most
    decision = await verification.decide(category, observed[entry_id], similarity, error_bound=..., floor=...)
    if decision.action == "explore" and not verification.take_budget(category): ...refused...
    await verification.record(entry_id, category, Observation(...), pooled=True)   # judge or feedback

What is kept where:

- An entry's observations: appended in the store (`append_observation(entry_id)`), removed with
  the entry by the store; in memory for the `cached_entries` most recently used entries (LRU). An
  entry's cached observations are replaced, never re-read, when this process appends one: another
  replica's observations of an entry show here once the entry falls out of this LRU.
- A category's pool (every observation of its entries that may move shared state): appended under
  `pool_key(category)`, the most recent `max_category_observations` in memory; its prior is refitted
  off the event loop every `refit_every` new observations and at start.
- The budget: a token bucket of `explore_budget_per_minute` tokens, refilled continuously.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.cache.scope import is_listed
from gateway.config import VerifiedConfig
from gateway.metrics import Metrics
from gateway.stores import StateStore, pool_key
from policies.verified import (
    CategoryPrior,
    Decision,
    Observation,
    VerifiedSettings,
    category_prior,
    decide,
    record,
)

logger = logging.getLogger("semcache.verification")

Clock = Callable[[], float]

OBSERVATION_FORMAT = 1
_EMPTY_PRIOR = CategoryPrior(slope=VerifiedSettings().separated_slope, threshold=1.0, spread=1.0, count=0)
# Decisions of the rule that make up a category's estimated error rate (the most recent).
_DECISION_WINDOW = 1000


def observation_document(observation: Observation, *, source: str, at: float) -> dict[str, Any]:
    """How an observation is stored: JSON with a `format_version`; `source` "judge" or "feedback"."""
    return {"format_version": OBSERVATION_FORMAT, "similarity": observation.similarity,
            "correct": observation.correct, "source": source, "at": at}  # fmt: skip


def observation_from_document(document: Mapping[str, Any]) -> Observation:
    """Raises ValueError/KeyError/TypeError for a document this version cannot read."""
    if document.get("format_version") != OBSERVATION_FORMAT:
        raise ValueError(f"unknown observation format {document.get('format_version')!r}")
    return Observation(similarity=float(document["similarity"]), correct=bool(document["correct"]))


def _parse(documents: Iterable[Mapping[str, Any]], *, cap: int) -> tuple[Observation, ...]:
    parsed: list[Observation] = []
    for document in documents:
        try:
            parsed.append(observation_from_document(document))
        except (ValueError, KeyError, TypeError):
            continue  # one unreadable record, not the entry
    return tuple(parsed[-cap:])


def threshold_estimate(prior: CategoryPrior, *, error_bound: float) -> float:
    """Where the category's fitted curve reaches P(correct) = 1 - δ: t̂ + logit(1 - δ) / slope, in
    [0, 1] (1.0 without evidence or with δ = 0). A point estimate, for the metrics: the rule itself
    decides from each entry's posterior, which also weighs the uncertainty of t̂."""
    if prior.count == 0 or error_bound <= 0.0:
        return 1.0
    return min(max(prior.threshold + math.log((1.0 - error_bound) / error_bound) / prior.slope, 0.0), 1.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class CategoryEstimate:
    """What the metrics show of a category: the prior's threshold estimate and the estimated error
    rate, wrong hits served per request the rule decided (over the most recent decisions, a served
    one counting 1 - alpha, any other 0: at most δ in expectation; None before any decision)."""

    threshold: float
    error_rate: float | None
    observations: int


class _Bucket:
    """`per_minute` tokens at most, refilled continuously."""

    def __init__(self, per_minute: float, clock: Clock) -> None:
        self._capacity = per_minute
        self._rate_s = per_minute / 60.0
        self._clock = clock
        self._tokens = per_minute
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + max(0.0, now - self._at) * self._rate_s)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Verification:
    def __init__(
        self,
        *,
        store: StateStore,
        config: VerifiedConfig,
        metrics: Metrics,
        clock: Clock,
        moves_thresholds: str = "listed_tenants",
        seed: int | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._moves_thresholds = moves_thresholds
        self.settings = VerifiedSettings(
            max_observations=config.max_observations, max_category_observations=config.max_category_observations
        )
        self._entries: OrderedDict[str, tuple[Observation, ...]] = OrderedDict()
        self._pools: dict[str, deque[Observation]] = {}
        self._priors: dict[str, CategoryPrior] = {}
        self._thresholds: dict[str, float] = {}
        self._unfitted: dict[str, int] = {}
        self._served: dict[str, deque[float]] = {}
        self._budget = _Bucket(config.explore_budget_per_minute, clock)
        self._rng = random.Random(seed)

    # -- reading --------------------------------------------------------------------------------

    def moves_prior(self, tenant: str) -> bool:
        """Whether `tenant`'s observations may move a shared category prior: as feedback moves
        thresholds (`feedback.moves_thresholds`). An entry's own observations always count."""
        return self._moves_thresholds == "everyone" or is_listed(tenant)

    def prior(self, category: str) -> CategoryPrior:
        return self._priors.get(category, _EMPTY_PRIOR)

    async def observations(self, entry_ids: Sequence[str]) -> dict[str, tuple[Observation, ...]]:
        """The observations of each entry, from memory, the rest in one store read."""
        missing = [entry_id for entry_id in entry_ids if entry_id not in self._entries]
        if missing:
            documents = await self._store.observations_many(missing)
            for entry_id in missing:
                self._keep(entry_id, _parse(documents.get(entry_id, ()), cap=self.settings.max_observations))
        found: dict[str, tuple[Observation, ...]] = {}
        for entry_id in entry_ids:
            if entry_id in self._entries:
                self._entries.move_to_end(entry_id)
            found[entry_id] = self._entries.get(entry_id, ())
        return found

    def _keep(self, entry_id: str, observations: tuple[Observation, ...]) -> None:
        self._entries[entry_id] = observations
        self._entries.move_to_end(entry_id)
        while len(self._entries) > self._config.cached_entries:
            self._entries.popitem(last=False)

    async def decide(
        self, category: str, observations: Sequence[Observation], similarity: float, *, error_bound: float, floor: float
    ) -> Decision:
        """The rule's decision for one candidate; the posterior (~1 ms) on a worker thread."""
        prior, rng_value = self.prior(category), self._rng.random()

        def run() -> Decision:
            return decide(observations, prior, similarity, error_bound=error_bound, floor=floor,
                          rng_value=rng_value, settings=self.settings)  # fmt: skip

        if (prior.count == 0 and not observations) or similarity < floor or error_bound == 0.0:
            return run()  # no posterior to compute
        return await asyncio.to_thread(run)

    def take_budget(self, category: str) -> bool:
        """One exploration's worth of the budget; False (counted) when it is spent."""
        taken = self._budget.take()
        self._metrics.exploration_budget.labels(result="spent" if taken else "refused").inc()
        if taken:
            self._metrics.explorations.labels(category=category).inc()
        return taken

    def note(self, category: str, decision: Decision, *, served: bool) -> None:
        """The rule decided a candidate: a served one adds its 1 - alpha (the most it is wrong, in
        expectation) to the estimated error rate, any other 0."""
        window = self._served.setdefault(category, deque(maxlen=_DECISION_WINDOW))
        window.append(1.0 - decision.bound if served else 0.0)

    def estimates(self) -> dict[str, CategoryEstimate]:
        names = set(self._pools) | set(self._served)
        return {
            name: CategoryEstimate(
                threshold=self._thresholds.get(name, 1.0),
                error_rate=(sum(self._served[name]) / len(self._served[name])) if self._served.get(name) else None,
                observations=len(self._pools.get(name, ())),
            )
            for name in sorted(names)
        }

    # -- writing --------------------------------------------------------------------------------

    async def record(
        self,
        entry_id: str | None,
        category: str,
        observation: Observation,
        *,
        pooled: bool,
        source: str,
        error_bound: float,
    ) -> None:
        """Append an observation of an entry (None: of no entry, the entry is gone) and, when
        `pooled`, of its category's pool: in memory, then in the store. Raises what the store raises
        (the evidence is in force now even if a restart loses it)."""
        document = observation_document(observation, source=source, at=self._clock())
        cached = None if entry_id is None else self._entries.get(entry_id)
        if entry_id is not None and cached is not None:
            self._keep(entry_id, record(cached, observation, cap=self.settings.max_observations))
        if pooled:
            pool = self._pools.setdefault(category, deque(maxlen=self.settings.max_category_observations))
            pool.append(observation)
            self._unfitted[category] = self._unfitted.get(category, 0) + 1
        try:
            if entry_id is not None:
                await self._store.append_observation(entry_id, document)
            if pooled:
                await self._store.append_observation(pool_key(category), document)
        finally:
            if pooled and self._unfitted.get(category, 0) >= self._config.refit_every:
                await self.refit(category, error_bound=error_bound)

    async def refit(self, category: str, *, error_bound: float) -> None:
        """Refit a category's prior from its pool, on a worker thread (δ: for the threshold estimate)."""
        pool = tuple(self._pools.get(category, ()))
        self._unfitted[category] = 0
        if not pool:
            self._priors.pop(category, None)
            self._thresholds.pop(category, None)
            return
        prior, threshold = await asyncio.to_thread(self._fit, pool, error_bound)
        self._priors[category] = prior
        self._thresholds[category] = threshold

    def _fit(self, pool: tuple[Observation, ...], error_bound: float) -> tuple[CategoryPrior, float]:
        prior = category_prior(pool, settings=self.settings)
        return prior, threshold_estimate(prior, error_bound=error_bound)

    async def restore(self, error_bounds: Mapping[str, float]) -> int:
        """Load the pools of the categories (name → δ) from the store and fit their priors; returns
        how many observations were restored."""
        keys = {pool_key(name): name for name in error_bounds}
        documents = await self._store.observations_many(list(keys))
        restored = 0
        for key, name in keys.items():
            pool = _parse(documents.get(key, ()), cap=self.settings.max_category_observations)
            if not pool:
                continue
            self._pools[name] = deque(pool, maxlen=self.settings.max_category_observations)
            restored += len(pool)
            await self.refit(name, error_bound=error_bounds[name])
        return restored

    def drop(self, category: str) -> None:
        """The category left the policy (the store drops its pool with its entries)."""
        for table in (self._pools, self._priors, self._thresholds, self._unfitted, self._served):
            table.pop(category, None)

    def forget(self, entry_ids: Iterable[str]) -> None:
        for entry_id in entry_ids:
            self._entries.pop(entry_id, None)
