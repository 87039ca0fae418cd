"""`create_app(config)`: the Starlette app. The lifespan opens every resource and closes it again;
nothing is built at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from embeddings import Embedder
from gateway.cache.engine import Clock
from gateway.cache.semantic_cache import SemanticCache
from gateway.cache.singleflight import SingleFlight
from gateway.config import GatewayConfig
from gateway.errors import ClientFacingError, MethodNotAllowed, ServiceUnavailable
from gateway.http.admin import reload_on_sighup, reload_policy, stats
from gateway.http.passthrough import Passthrough
from gateway.http.proxy import Proxy, not_found
from gateway.http.responses import error_response
from gateway.metrics import Metrics
from gateway.stores import Store
from gateway.upstream import LiteLLMUpstream, SingleDeploymentRouter, Upstream
from policies.verifier import Verifier

logger = logging.getLogger("semcache.app")


@dataclass(slots=True)
class _Runtime:
    """What the lifespan built; None outside it."""

    proxy: Proxy | None = None

    def require(self) -> Proxy:
        if self.proxy is None:
            raise HTTPException(503, "gateway is starting or stopping")
        return self.proxy


async def _open(
    stack: contextlib.AsyncExitStack,
    config: GatewayConfig,
    cache: SemanticCache,
    upstream: Upstream | None,
    clock: Clock,
) -> Proxy:
    await stack.enter_async_context(cache)
    if upstream is None:
        # The litellm import takes seconds: off the event loop.
        litellm_upstream = await asyncio.to_thread(LiteLLMUpstream)
        stack.push_async_callback(litellm_upstream.aclose)
        upstream = litellm_upstream
    passthrough = await stack.enter_async_context(Passthrough(config.upstream))
    return Proxy(
        cache=cache,
        upstream=upstream,
        router=SingleDeploymentRouter(config.upstream),
        passthrough=passthrough,
        flights=SingleFlight(max_lifetime_s=config.upstream.timeout_s),
        clock=clock,
    )


def create_app(
    config: GatewayConfig,
    *,
    embedder: Embedder | None = None,
    store: Store | None = None,
    upstream: Upstream | None = None,
    verifier: Verifier | None = None,
    clock: Clock = time.time,
) -> Starlette:
    """Parts passed in (embedder, store, upstream) are used as they are and stay the caller's to
    close; the rest is built from `config` in the lifespan and closed there."""
    runtime = _Runtime()
    metrics = Metrics()
    cache = SemanticCache(config, embedder=embedder, store=store, verifier=verifier, clock=clock, metrics=metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            runtime.proxy = await _open(stack, config, cache, upstream, clock)
            stack.callback(reload_on_sighup(cache))
            try:
                yield
            finally:
                runtime.proxy = None

    async def chat_completions(request: Request) -> Response:
        return await runtime.require().chat_completions(request)

    async def completions(request: Request) -> Response:
        return await runtime.require().completions(request)

    async def models(request: Request) -> Response:
        return await runtime.require().models(request)

    async def forward(request: Request) -> Response:
        # Starlette falls through to this catch-all when a gateway route matches the path but not
        # the method: such a request is for the gateway, not the upstream, and is refused here.
        allowed = own_paths.get(request.url.path)
        if allowed is not None:
            raise HTTPException(405, headers={"Allow": allowed})
        return await runtime.require().forward(request)

    async def readyz(request: Request) -> Response:
        proxy = runtime.proxy
        if proxy is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            await proxy.cache.engine.store.ping()
        except Exception as exc:  # readiness reports the fault instead of raising it
            return JSONResponse({"status": "store unavailable", "detail": str(exc)}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def admin_reload(request: Request) -> Response:
        return await reload_policy(request, runtime.require().cache)

    async def rate_hit(request: Request) -> Response:
        return await runtime.require().feedback(request)

    async def admin_stats(request: Request) -> Response:
        return await stats(request, runtime.require().cache)

    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    own = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/feedback", rate_hit, methods=["POST"]),
    ]
    own_paths = {route.path: ", ".join(sorted((route.methods or set()) - {"HEAD"})) for route in own}
    app = Starlette(
        routes=[
            *own,
            Route("/v1/{rest:path}", forward, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
            Route("/healthz", _healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
            Route("/admin/reload", admin_reload, methods=["POST"]),
            Route("/admin/stats", admin_stats, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _unexpected_error},
    )
    app.state.metrics = metrics
    return app


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: ClientFacingError
    if exc.status_code == 404:
        return await not_found(request)
    if exc.status_code == 405:
        error = MethodNotAllowed(f"Method {request.method} not allowed on {request.url.path}")
        response = error_response(error)
        response.headers.update(exc.headers or {})
        return response
    else:
        error = ServiceUnavailable(str(exc.detail))
    return error_response(error)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("unexpected error", exc_info=exc)
    body = {"error": {"message": "internal gateway error", "type": "server_error", "param": None, "code": None}}
    return JSONResponse(body, status_code=500)
