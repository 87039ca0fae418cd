"""`SemanticCache`: the cache as a library, for plain asyncio code. The proxy and the middleware are
built on it.

    async with SemanticCache(config) as cache:
        found = await cache.lookup({"model": "m", "messages": [...]}, api_key="sk-...")
        if isinstance(found, CacheHit):
            answer = found.answer
        elif isinstance(found, CacheMiss):
            answer = await call_the_llm(...)
            await cache.remember(found, answer)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from embeddings import BatcherConfig, Embedder, EmbeddingBatcher, open_embedder
from gateway.cache.catalog import Catalog
from gateway.cache.decisions import Bypass, Decision, Hit, Miss
from gateway.cache.engine import ActivePolicy, CacheEngine, Clock, LookupSettings
from gateway.cache.feedback import (
    FeedbackRequest,
    FeedbackResult,
    RatingValue,
    ServedHit,
    ServedHits,
    Thresholds,
)
from gateway.cache.judge import DefaultJudge, Judge, JudgeJob, Judgement, JudgeQueue, LiteLLMJudge, LLMJudgeConfig
from gateway.cache.scope import CacheKey, cache_key, is_listed, tenant_for
from gateway.cache.tasks import TaskTracker
from gateway.cache.verification import Verification
from gateway.config import GatewayConfig, VerifiedConfig, embedder_spec
from gateway.errors import AlreadyRated, ConfigError, HitNotFound, InvalidRequest, ServiceUnavailable
from gateway.metrics import Metrics
from gateway.stores import CacheEntry, DeadlineStore, HitRegistry, Store, open_store
from gateway.upstream import Router
from gateway.wire import (
    CompletionRequest,
    Endpoint,
    is_complete,
    parse_chat_request,
    parse_text_request,
)
from gateway.wire.cache_control import CacheControl
from policies import DEFAULT, CategoryClassifier, Policy, PolicyError, load_policy, parse_policy
from policies.errors import VerifierError
from policies.verified import Observation
from policies.verifier import LogisticVerifier, Verifier

logger = logging.getLogger("semcache.cache")


# The names this API had before the decisions were one family; they stay for existing callers.
CacheHit = Hit
CacheMiss = Miss
NotCacheable = Bypass
Lookup = Decision


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadResult:
    categories: tuple[str, ...]
    dropped: Mapping[str, int]


_PARSERS = {"chat": parse_chat_request, "text": parse_text_request}
# How long a store shared by replicas keeps a served hit for rating by response id through any of them.
_SHARED_HIT_TTL_S = 86_400.0


def implied_policy(config: GatewayConfig) -> Policy:
    """Without a policy file: one `default` category from the config's cache section."""
    cache = config.cache
    implied = {
        "similarity_threshold": cache.similarity_threshold,
        "ttl_s": cache.ttl_s,
        "max_entries": cache.max_entries,
    }
    return parse_policy({"categories": [{"name": DEFAULT, **implied}]}, source="cache section of the config")


def embedding_model(config: GatewayConfig, policy: Policy) -> str:
    """The model the gateway embeds with: the one the policy's thresholds were calibrated for, else
    the config's. Calibration and tuning start from the same one."""
    return policy.embedding_model or config.embedding.model


def configured_policy(config: GatewayConfig) -> Policy:
    """The config's policy file, or the policy its cache section implies. Raises `PolicyError`."""
    return load_policy(config.policy) if config.policy is not None else implied_policy(config)


def _default_judge(config: VerifiedConfig, batcher: EmbeddingBatcher) -> Judge:
    return DefaultJudge(batcher, min_similarity=config.judge_min_similarity)


def _llm_judge(config: VerifiedConfig, batcher: EmbeddingBatcher) -> Judge:
    settings = config.llm_judge
    assert settings is not None  # the config's schema rule
    return LiteLLMJudge(LLMJudgeConfig(model=settings.model, api_base=settings.api_base, api_key=settings.api_key,
                                       timeout_s=settings.timeout_s))  # fmt: skip


_JUDGES = {"default": _default_judge, "llm": _llm_judge}


async def _purge_periodically(catalog: Catalog, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            purged = await catalog.purge_expired()
        except Exception as exc:  # fail-open boundary: the next round tries again
            logger.warning("purging expired entries failed: %s", exc)
            continue
        if purged:
            logger.info("purged %d expired entries", purged)


class SemanticCache:
    """Parts passed in (embedder, store) are used as they are and stay the caller's to close; the
    rest is built from `config` on entry and closed on exit."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        embedder: Embedder | None = None,
        store: Store | None = None,
        verifier: Verifier | None = None,
        judge: Judge | None = None,
        clock: Clock = time.time,
        metrics: Metrics | None = None,
        load: Router | None = None,
    ) -> None:
        """`load`: the router whose live load moves the rules (none: they never move)."""
        self.config = config
        self._load = load
        self.metrics = metrics or Metrics()
        self.tasks = TaskTracker()
        self._embedder = embedder
        self._store = store
        self._verifier = verifier
        self._judge = judge
        self._judges: JudgeQueue | None = None
        self._clock = clock
        self._stack: contextlib.AsyncExitStack | None = None
        self._engine: CacheEngine | None = None
        self._batcher: EmbeddingBatcher | None = None
        self._reload_lock = asyncio.Lock()
        self._embedding_model: str | None = None
        self._served = ServedHits(config.feedback.remember_hits)
        # A store shared by replicas (Redis) also keeps served hits, so any replica can rate them.
        self._shared_hits: HitRegistry | None = None

    @property
    def judges(self) -> JudgeQueue | None:
        """The judge queue of verified thresholds (None when they are off or the cache is closed)."""
        return self._judges

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def engine(self) -> CacheEngine:
        if self._engine is None:
            raise RuntimeError("SemanticCache is not open: use `async with SemanticCache(...)`")
        return self._engine

    async def __aenter__(self) -> SemanticCache:
        async with contextlib.AsyncExitStack() as stack:
            self._engine = await self._open(stack)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.aclose()  # drains `remember_later` tasks first: they still need the engine
        finally:
            self._engine = None

    async def _open(self, stack: contextlib.AsyncExitStack) -> CacheEngine:
        config = self.config
        policy = await self._read_policy()
        self._embedding_model = policy.embedding_model
        embedder = self._embedder
        if embedder is None:
            # Loading the model takes seconds (a first ONNX export more): off the event loop.
            model = embedding_model(config, policy)
            started = time.perf_counter()
            logger.info("loading the embedding model %s (%s backend)", model, config.embedding.backend)
            embedder = await asyncio.to_thread(open_embedder, embedder_spec(config, model))
            logger.info("embedding model loaded in %.1f s", time.perf_counter() - started)
        elif policy.embedding_model is not None:
            logger.warning(
                "the policy names embedding model %s; the embedder handed in is used", policy.embedding_model
            )
        store = self._store
        if store is None:
            store = await stack.enter_async_context(open_store(config.cache.store))
        # Every store call, a store handed in included, under the one deadline.
        store = DeadlineStore(store, deadline_s=config.cache.store.deadline_ms / 1000)
        self._shared_hits = store.hit_registry
        batching = config.embedding
        batcher = await stack.enter_async_context(
            EmbeddingBatcher(
                embedder,
                BatcherConfig(
                    max_batch=batching.max_batch,
                    max_wait_ms=batching.max_wait_ms,
                    max_queue=batching.max_queue,
                    deadline_ms=batching.deadline_ms,
                ),
            )
        )
        self._batcher = batcher
        if self._verifier is None and config.verifier is not None:
            try:
                text = await asyncio.to_thread(Path(config.verifier).read_text, encoding="utf-8")
                self._verifier = LogisticVerifier.from_json(text)
            except (OSError, VerifierError) as exc:
                raise ConfigError(config.verifier, [f"verifier: {exc}"]) from exc
        thresholds = Thresholds.from_config(config.feedback)
        active = await self._activate(policy)
        # Entered after the store and batcher: it closes (flushing hit counts) before they do.
        catalog = await stack.enter_async_context(
            Catalog(
                store=store,
                dimension=batcher.embedder.dimension,
                policy=policy,
                metrics=self.metrics,
                clock=self._clock,
                index_deadline_s=config.cache.index_deadline_ms / 1000,
                hit_flush_interval_s=config.cache.hit_flush_interval_s,
            )
        )
        verification = self._verification(store)
        engine = CacheEngine(
            catalog=catalog,
            batcher=batcher,
            policy=active,
            settings=LookupSettings(search_k=config.cache.search_k),
            metrics=self.metrics,
            clock=self._clock,
            verifier=self._verifier,
            thresholds=thresholds,
            verification=verification,
            load=self._load,
        )
        stack.callback(self.metrics.watch_thresholds(engine.thresholds))
        await self._restore(engine, catalog, batcher.embedder.name)
        # Registered after the store and batcher, so pending writes finish before they close.
        stack.push_async_callback(self.tasks.drain, timeout_s=30.0)
        if verification is not None:
            self._open_judges(stack, verification, batcher)  # closed before the tasks drain
        purger = asyncio.create_task(_purge_periodically(catalog, config.cache.cleanup_interval_s))

        async def stop_purging() -> None:  # awaited: a purge in flight ends before the catalog closes
            purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purger

        stack.push_async_callback(stop_purging)
        return engine

    def _verification(self, store: Store) -> Verification | None:
        config = self.config
        if not config.verified.enabled:
            return None
        return Verification(
            store=store,
            config=config.verified,
            metrics=self.metrics,
            clock=self._clock,
            moves_thresholds=config.feedback.moves_thresholds,
            seed=config.verified.seed,
        )

    def _open_judges(
        self, stack: contextlib.AsyncExitStack, verification: Verification, batcher: EmbeddingBatcher
    ) -> None:
        """The judge queue and the verified metrics; the queue closes (drains) before the tasks do,
        since a judgement may still remember an answer."""
        settings = self.config.verified
        judge = self._judge or _JUDGES[settings.judge](settings, batcher)
        self._judges = JudgeQueue(judge, max_queue=settings.judge_queue, concurrency=settings.judge_concurrency)
        estimates = verification.estimates
        stack.callback(self.metrics.watch_verified(
            lambda: {name: (e.threshold, e.error_rate) for name, e in estimates().items()}))  # fmt: skip

        async def close_judges() -> None:
            judges, self._judges = self._judges, None
            if judges is not None:
                await judges.aclose(timeout_s=10.0)

        stack.push_async_callback(close_judges)

    async def _restore(self, engine: CacheEngine, catalog: Catalog, embedder: str) -> None:
        """Reload what the store kept, each step failing open on its own: the index even when the
        feedback state is unreadable. Vectors and thresholds of another embedding model mean nothing
        here, so the store drops them first; when it cannot say whose they are, nothing is loaded."""
        try:
            dropped = await catalog.store.adopt_embedder(embedder)
        except Exception:  # fail-open boundary: start empty rather than search unknown vectors
            self.metrics.fail_open.labels(stage="rebuild").inc()
            logger.exception("could not tell which model embedded the store's entries; starting empty")
            return
        if dropped:
            logger.warning("dropped the store's %d entries: they were embedded by another model", dropped)
        try:
            restored = await engine.load_feedback()
        except Exception:  # fail-open boundary: the configured thresholds
            self.metrics.fail_open.labels(stage="feedback").inc()
            logger.exception("could not restore the feedback state from the store")
        else:
            if restored:
                logger.info("feedback thresholds restored for %d categories", restored)
        try:
            observed = await engine.load_verified()
        except Exception:  # fail-open boundary: priors start empty (exploring again)
            self.metrics.fail_open.labels(stage="observations").inc()
            logger.exception("could not restore the verified thresholds' observations from the store")
        else:
            if observed:
                logger.info("verified thresholds: %d observations restored", observed)
        try:
            started = time.perf_counter()
            logger.info("rebuilding the index from the store")
            rebuilt = await catalog.rebuild()
            logger.info("index rebuilt with %d entries in %.1f s", rebuilt, time.perf_counter() - started)
        except Exception:  # fail-open boundary: an empty index, traffic still served
            self.metrics.fail_open.labels(stage="rebuild").inc()
            logger.exception("could not rebuild the index from the store")

    async def _read_policy(self) -> Policy:
        """The policy file, or the one-category policy the `cache` section implies. Raises `PolicyError`."""
        return await asyncio.to_thread(configured_policy, self.config)

    async def _activate(self, policy: Policy) -> ActivePolicy:
        """Embed the exemplars once, on the embedder's thread, and build the classifier."""
        assert self._batcher is not None
        exemplars = policy.exemplars()
        texts = [text for group in exemplars.values() for text in group]
        embedded = iter(await self._batcher.embed_many(texts))
        vectors = {name: np.stack([next(embedded).vector for _ in group]) for name, group in exemplars.items()}
        return ActivePolicy(policy=policy, classifier=CategoryClassifier(policy, vectors))

    async def reload_policy(self) -> ReloadResult:
        """Re-read the policy file and switch to it without dropping cached entries. An invalid file
        raises `PolicyError` with every problem, and the policy in force stays."""
        async with self._reload_lock:
            policy = await self._read_policy()
            if policy.embedding_model != self._embedding_model:
                raise PolicyError(
                    self.config.policy or "<policy>",
                    [
                        f"embedding_model: {policy.embedding_model!r} differs from the model in use "
                        f"({self._embedding_model!r}); the cache's vectors and thresholds belong to that one: "
                        "restart the gateway to change it"
                    ],
                )
            dropped = await self.engine.apply_policy(await self._activate(policy))
        logger.info("policy reloaded: %d categories; dropped %s", len(policy.categories), dropped or "nothing")
        return ReloadResult(categories=policy.names, dropped=dropped)

    def parse(self, body: Mapping[str, Any], *, endpoint: Endpoint = "chat") -> CompletionRequest:
        """Validate an OpenAI request body; raises `InvalidRequest` with an OpenAI-style message."""
        return _PARSERS[endpoint](dict(body))

    async def lookup(
        self,
        request: Mapping[str, Any] | CompletionRequest,
        *,
        api_key: str | None = None,
        control: CacheControl | None = None,
    ) -> Decision:
        """`Hit | NearMiss | Miss | Bypass` (a `NearMiss` is a `Miss`). Never raises for a cache
        fault: a broken store or embedder gives a `Miss` whose `reason` says so. Raises
        `InvalidRequest` for a bad body and `ThresholdTooLoose` for a per-request threshold looser
        than the category's."""
        parsed = request if isinstance(request, CompletionRequest) else self.parse(request)
        tenant = tenant_for(api_key, self.config.tenant_by_key_sha256)
        decision = await self.engine.lookup(parsed, tenant=tenant, control=control or CacheControl())
        if isinstance(decision, Hit):
            self.engine.catalog.note_hit(decision.entry_id, decision.category)
            served = ServedHit(
                response_id=str(decision.answer["id"]),
                entry_id=decision.entry_id,
                tenant=tenant,
                category=decision.category,
                similarity=decision.similarity,
                exact=decision.exact,
            )
            self._served.add(served)
            if self._shared_hits is not None:
                self.tasks.spawn(self._share(self._shared_hits, served), name="share-hit")
        return decision

    async def _share(self, shared: HitRegistry, hit: ServedHit) -> None:
        record = {key: value for key, value in asdict(hit).items() if key != "rated"}
        try:
            await shared.record_served(hit.response_id, record, ttl_s=_SHARED_HIT_TTL_S)
        except Exception as exc:  # fail-open boundary: this replica can still rate it
            self.metrics.fail_open.labels(stage="served_hits").inc()
            logger.warning("could not share served hit %s: %s", hit.response_id, exc)

    async def _shared_hit(self, response_id: str, tenant: str) -> ServedHit | None:
        """A hit another replica served to `tenant`, from the shared store; None when unknown there."""
        if self._shared_hits is None:
            return None
        try:
            record = await self._shared_hits.served(response_id)
            hit = None if record is None else ServedHit(**record)
        except Exception as exc:  # fail-open boundary: rated by entry instead
            self.metrics.fail_open.labels(stage="served_hits").inc()
            logger.warning("could not read served hit %s: %s", response_id, exc)
            return None
        return hit if hit is not None and hit.tenant == tenant else None

    async def _claim(self, hit: ServedHit) -> bool:
        """Whether this rating is the hit's first on any replica (True when the store cannot say)."""
        if self._shared_hits is None:
            return True
        try:
            return await self._shared_hits.claim_rating(hit.response_id)
        except Exception as exc:  # fail-open boundary: this replica's own once-only check stands
            self.metrics.fail_open.labels(stage="served_hits").inc()
            logger.warning("could not claim the rating of %s: %s", hit.response_id, exc)
            return True

    async def remember(self, miss: Miss, answer: Mapping[str, Any]) -> bool:
        """Store a complete answer (finish_reason stop/length/tool_calls); returns whether it was."""
        if not is_complete(answer) or not miss.storable:
            return False
        return await self.engine.remember(miss, response=answer)

    def remember_later(self, miss: Miss, answer: Mapping[str, Any]) -> None:
        """`remember` as a tracked background task, drained when the cache closes."""
        self.tasks.spawn(self.remember(miss, answer), name="remember")

    def complete(self, miss: Miss, answer: Mapping[str, Any], *, store: bool) -> None:
        """A fresh answer arrived for `miss`, after the client has it: an explored miss's answer is
        judged against the explored entry's in the background (and kept only when it differs: the
        entry answers that question already); any other is remembered when `store`."""
        exploration = miss.exploration
        if exploration is None or miss.category is None or not is_complete(answer):
            if store:
                self.remember_later(miss, answer)
            return
        category = miss.category

        async def judged(judgement: Judgement) -> None:
            outcome = "undecided" if not judgement.decided else "correct" if judgement.equivalent else "wrong"
            self.metrics.judgements.labels(category=category, outcome=outcome).inc()
            if judgement.decided:
                observation = Observation(similarity=exploration.similarity, correct=judgement.equivalent)
                await self.engine.observe(exploration.entry.entry_id, category, observation,
                                          pooled=exploration.moves_prior, source="judge")  # fmt: skip
            if store and not (judgement.decided and judgement.equivalent):
                await self.remember(miss, answer)

        judges = self._judges
        job = JudgeJob(cached=exploration.entry.response, fresh=answer, on_judgement=judged)
        if judges is None or not judges.submit(job):
            self.metrics.judgements.labels(category=category, outcome="dropped").inc()
            if store:
                self.remember_later(miss, answer)

    async def feedback(
        self,
        *,
        rating: RatingValue,
        response_id: str | None = None,
        entry_id: str | None = None,
        api_key: str | None = None,
    ) -> FeedbackResult:
        """Rate a hit this cache served to the caller (`api_key`, as in `lookup`): by the response
        `id` of the hit (`CacheHit.answer["id"]`) or by its entry (`CacheHit.entry_id`). "bad"
        removes the entry and tightens its category's threshold; "good" may relax it slowly
        (`policies.feedback`). Each hit can be rated once.

        Raises `HitNotFound` (404) when no such hit was served to the caller's tenant and it owns
        no such entry, `AlreadyRated` (409), `InvalidRequest` (400) when `response_id` and
        `entry_id` name different hits, and `ServiceUnavailable` (503) when the store fails."""
        FeedbackRequest(rating=rating, response_id=response_id, entry_id=entry_id)  # raises InvalidRequest
        engine = self.engine
        tenant = tenant_for(api_key, self.config.tenant_by_key_sha256)
        hit = None
        if response_id is not None:
            hit = self._served.by_id(response_id, tenant=tenant) or await self._shared_hit(response_id, tenant)
            if hit is not None and entry_id is not None and hit.entry_id != entry_id:
                raise InvalidRequest(
                    f"'entry' {entry_id!r} is not the entry response {response_id!r} was served from", param="entry"
                )
            if hit is None and entry_id is None:
                raise HitNotFound(
                    f"no hit with id {response_id!r} was served to this caller recently enough to be "
                    "rated by id; rate it by 'entry'",
                    param="id",
                    code="hit_not_found",
                )
        if hit is None and entry_id is not None:
            hit = self._served.latest(entry_id, tenant=tenant)
        if hit is not None:
            if hit.rated:
                raise AlreadyRated("this hit was rated already", param="id", code="already_rated")
            hit.rated = True  # before any await: a concurrent second rating is refused
            if not await self._claim(hit):  # rated through another replica
                raise AlreadyRated("this hit was rated already", param="id", code="already_rated")
            trusted = self.config.feedback.moves_thresholds == "everyone" or is_listed(tenant)
            similarity = None if hit.exact or not trusted else hit.similarity
            observed = None if hit.exact else hit.similarity  # the entry's own observation: any caller's
            return await engine.rate(entry_id=hit.entry_id, category=hit.category, similarity=similarity,
                                     rating=rating, observed_similarity=observed)  # fmt: skip
        assert entry_id is not None
        try:
            entry = await engine.entry(entry_id)
        except Exception as exc:  # the store is down: say so, never a 500
            self.metrics.fail_open.labels(stage="feedback").inc()
            raise ServiceUnavailable("the cache store is unavailable; try again", code="store_unavailable") from exc
        if entry is None or not self._owned_by(entry, tenant):
            raise HitNotFound(f"no cache entry {entry_id!r} for this caller", param="entry", code="entry_not_found")
        # Not remembered (a restart, or long ago): its similarity is unknown, so only the entry goes.
        return await engine.rate(entry_id=entry_id, category=entry.category, similarity=None, rating=rating)

    def _owned_by(self, entry: CacheEntry, tenant: str) -> bool:
        """Whether `tenant` is the entry's tenant: its scope, rebuilt from the stored request for
        this tenant, is the entry's own (the scope digest includes the tenant)."""
        endpoint: Endpoint = "chat" if "messages" in entry.request else "text"
        stored = entry.request.get("cache")
        namespace = stored.get("namespace") if isinstance(stored, dict) else None
        try:
            key = cache_key(self.parse(entry.request, endpoint=endpoint), tenant=tenant, namespace=namespace)
        except InvalidRequest:
            return False
        return isinstance(key, CacheKey) and key.scope == entry.scope_key
