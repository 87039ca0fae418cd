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
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from embeddings import BatcherConfig, Embedder, EmbeddingBatcher, SentenceTransformerEmbedder
from gateway.cache_control import CacheControl
from gateway.config import GatewayConfig
from gateway.engine import CacheEngine, Clock, Hit, LookupSettings, Miss
from gateway.index import VectorIndex
from gateway.metrics import Metrics
from gateway.scope import CacheKey, cache_key, tenant_for
from gateway.stores import SqliteStore, Store
from gateway.tasks import TaskTracker
from gateway.wire import (
    CompletionRequest,
    Endpoint,
    is_complete,
    parse_chat_request,
    parse_text_request,
    replay_completion,
)
from policies.verifier import Verifier

logger = logging.getLogger("semcache.cache")


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheHit:
    """A stored answer, under a fresh `id` and `created`; `usage` is the original one."""

    request: CompletionRequest
    answer: dict[str, Any]
    similarity: float
    entry_id: str
    exact: bool

    @property
    def outcome(self) -> Literal["hit", "exact"]:
        return "exact" if self.exact else "hit"


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheMiss:
    """Pass it back to `remember` with the answer: it carries the key and the prompt's embedding."""

    request: CompletionRequest
    key: CacheKey
    miss: Miss
    best_similarity: float | None
    reason: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class NotCacheable:
    request: CompletionRequest
    reason: str


Lookup = CacheHit | CacheMiss | NotCacheable

_PARSERS = {"chat": parse_chat_request, "text": parse_text_request}


async def _purge_periodically(engine: CacheEngine, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            purged = await engine.purge_expired()
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
        clock: Clock = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.tasks = TaskTracker()
        self._embedder = embedder
        self._store = store
        self._verifier = verifier
        self._clock = clock
        self._stack: contextlib.AsyncExitStack | None = None
        self._engine: CacheEngine | None = None

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
        stack, self._stack, self._engine = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def _open(self, stack: contextlib.AsyncExitStack) -> CacheEngine:
        config = self.config
        embedder = self._embedder
        if embedder is None:
            # Loading the model takes seconds: off the event loop.
            embedder = await asyncio.to_thread(
                SentenceTransformerEmbedder, config.embedding.model, threads=config.embedding.threads
            )
        store = self._store
        if store is None:
            store = await stack.enter_async_context(SqliteStore(config.cache.store.path))
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
        index = VectorIndex(embedder.dimension)
        stack.callback(index.close)
        settings = LookupSettings(
            similarity_threshold=config.cache.similarity_threshold,
            ttl_s=config.cache.ttl_s,
            search_k=config.cache.search_k,
        )
        engine = CacheEngine(
            store=store,
            index=index,
            batcher=batcher,
            settings=settings,
            metrics=self.metrics,
            clock=self._clock,
            verifier=self._verifier,
        )
        try:
            logger.info("index rebuilt with %d entries", await engine.rebuild_index())
        except Exception:  # fail-open boundary: start with an empty index, serve traffic
            self.metrics.fail_open.labels(stage="rebuild").inc()
            logger.exception("could not rebuild the index from the store")
        # Registered after the store and batcher, so pending writes finish before they close.
        stack.push_async_callback(self.tasks.drain, timeout_s=30.0)
        purger = asyncio.create_task(_purge_periodically(engine, config.cache.cleanup_interval_s))
        stack.callback(purger.cancel)
        return engine

    def parse(self, body: Mapping[str, Any], *, endpoint: Endpoint = "chat") -> CompletionRequest:
        """Validate an OpenAI request body; raises `InvalidRequest` with an OpenAI-style message."""
        return _PARSERS[endpoint](dict(body))

    async def lookup(
        self,
        request: Mapping[str, Any] | CompletionRequest,
        *,
        api_key: str | None = None,
        control: CacheControl | None = None,
    ) -> Lookup:
        """Never raises for a cache fault: a broken store or embedder gives a `CacheMiss`."""
        parsed = request if isinstance(request, CompletionRequest) else self.parse(request)
        control = control or CacheControl()
        key = cache_key(parsed, tenant=tenant_for(api_key, self.config.tenant_by_key_sha256))
        if not isinstance(key, CacheKey):
            return NotCacheable(request=parsed, reason=key.reason)
        decision = await self.engine.lookup(
            key, threshold=control.threshold, max_age_s=control.max_age_s, search=control.lookup
        )
        if isinstance(decision, Hit):
            self.tasks.spawn(self.engine.record_hit(decision), name="record-hit")
            answer = replay_completion(decision.entry.response, endpoint=parsed.endpoint, now=self._clock())
            return CacheHit(
                request=parsed,
                answer=answer,
                similarity=decision.similarity,
                entry_id=decision.entry.entry_id,
                exact=decision.exact,
            )
        reason = None
        if not decision.semantic and decision.fault is None:
            reason = "prompt-over-embedder-window"
        elif decision.fault is not None:
            reason = f"fail-open:{decision.fault}"
        return CacheMiss(
            request=parsed, key=key, miss=decision, best_similarity=decision.best_similarity, reason=reason
        )

    async def remember(self, miss: CacheMiss, answer: Mapping[str, Any]) -> bool:
        """Store a complete answer (finish_reason stop/length/tool_calls); returns whether it was."""
        if not is_complete(answer):
            return False
        await self.engine.remember(miss.key, miss.miss, request=dict(miss.request.body), response=answer)
        return True

    def remember_later(self, miss: CacheMiss, answer: Mapping[str, Any]) -> None:
        """`remember` as a tracked background task, drained when the cache closes."""
        self.tasks.spawn(self.remember(miss, answer), name="remember")
