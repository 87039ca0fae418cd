"""`create_app(config)`: the Starlette app. The lifespan opens every resource and closes it again;
nothing is built at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from embeddings import BatcherConfig, Embedder, EmbeddingBatcher, SentenceTransformerEmbedder
from gateway.config import GatewayConfig
from gateway.engine import CacheEngine, Clock, LookupSettings
from gateway.errors import ClientFacingError, MethodNotAllowed, ServiceUnavailable
from gateway.index import VectorIndex
from gateway.metrics import Metrics
from gateway.proxy import Proxy, error_response, not_found
from gateway.stores import SqliteStore, Store
from gateway.tasks import TaskTracker
from gateway.upstream import LiteLLMUpstream, Upstream

logger = logging.getLogger("semcache.app")

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(slots=True)
class _Runtime:
    """What the lifespan built; None outside it."""

    proxy: Proxy | None = None

    def require(self) -> Proxy:
        if self.proxy is None:
            raise HTTPException(503, "gateway is starting or stopping")
        return self.proxy


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


def create_app(
    config: GatewayConfig,
    *,
    embedder: Embedder | None = None,
    store: Store | None = None,
    upstream: Upstream | None = None,
    clock: Clock = time.time,
) -> Starlette:
    """Parts passed in are used as they are and stay the caller's to close; the rest is built from
    `config` in the lifespan and closed there."""
    runtime = _Runtime()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            # Model loading and the litellm import take seconds: off the event loop.
            model: Embedder = (
                embedder
                if embedder is not None
                else await asyncio.to_thread(
                    SentenceTransformerEmbedder, config.embedding.model, threads=config.embedding.threads
                )
            )
            documents: Store = (
                store if store is not None else await stack.enter_async_context(SqliteStore(config.cache.store.path))
            )
            answers: Upstream
            if upstream is not None:
                answers = upstream
            else:
                litellm_upstream = await asyncio.to_thread(LiteLLMUpstream, config.upstream)
                stack.push_async_callback(litellm_upstream.aclose)
                answers = litellm_upstream
            batcher = await stack.enter_async_context(
                EmbeddingBatcher(
                    model,
                    BatcherConfig(
                        max_batch=config.embedding.max_batch,
                        max_wait_ms=config.embedding.max_wait_ms,
                        max_queue=config.embedding.max_queue,
                        deadline_ms=config.embedding.deadline_ms,
                    ),
                )
            )
            index = VectorIndex(model.dimension)
            stack.callback(index.close)
            engine = CacheEngine(
                store=documents,
                index=index,
                batcher=batcher,
                settings=LookupSettings(
                    similarity_threshold=config.cache.similarity_threshold,
                    ttl_s=config.cache.ttl_s,
                    search_k=config.cache.search_k,
                ),
                metrics=metrics,
                clock=clock,
            )
            try:
                loaded = await engine.rebuild_index()
                logger.info("index rebuilt with %d entries", loaded)
            except Exception:  # fail-open boundary: start with an empty index, serve traffic
                metrics.fail_open.labels(stage="rebuild").inc()
                logger.exception("could not rebuild the index from the store")
            tasks = TaskTracker()
            # Registered after the store and batcher, so it runs before they close.
            stack.push_async_callback(tasks.drain, timeout_s=30.0)
            purger = asyncio.create_task(_purge_periodically(engine, config.cache.cleanup_interval_s))
            stack.callback(purger.cancel)
            runtime.proxy = Proxy(
                config=config, engine=engine, upstream=answers, metrics=metrics, tasks=tasks, clock=clock
            )
            try:
                yield
            finally:
                runtime.proxy = None

    async def chat_completions(request: Request) -> Response:
        return await runtime.require().chat_completions(request)

    async def models(request: Request) -> Response:
        return await runtime.require().models(request)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        proxy = runtime.proxy
        if proxy is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            await proxy.engine.store.ping()
        except Exception as exc:  # readiness reports the fault instead of raising it
            return JSONResponse({"status": "store unavailable", "detail": str(exc)}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error: ClientFacingError
        if exc.status_code == 404:
            return await not_found(request)
        if exc.status_code == 405:
            error = MethodNotAllowed(f"Method {request.method} not allowed on {request.url.path}")
        else:
            error = ServiceUnavailable(str(exc.detail))
        return error_response(error)

    async def unexpected_error(request: Request, exc: Exception) -> Response:
        logger.exception("unexpected error", exc_info=exc)
        return JSONResponse(
            {"error": {"message": "internal gateway error", "type": "server_error", "param": None, "code": None}},
            status_code=500,
        )

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: unexpected_error},
    )
    app.state.metrics = metrics
    return app
