"""`create_app(config)`: the Starlette app. The lifespan opens every resource and closes it again;
nothing is built at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from embeddings import Embedder
from gateway.cache.engine import Clock
from gateway.cache.semantic_cache import SemanticCache
from gateway.cache.serving import Serving
from gateway.config import GatewayConfig, client_problems, load_config, resolve_secrets
from gateway.errors import (
    ClientFacingError,
    ConfigError,
    InvalidRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
)
from gateway.http.admin import reload_on_sighup, reload_policy, stats
from gateway.http.auth import ClientKeys
from gateway.http.passthrough import Passthrough, allowed
from gateway.http.proxy import Proxy, not_found
from gateway.http.readiness import UpstreamProbe, readiness
from gateway.http.responses import error_response
from gateway.metrics import Metrics
from gateway.stores import Store
from gateway.upstream import LiteLLMUpstream, LoadRouter, Router, SingleDeploymentRouter, Upstream
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
    *,
    router: Router,
) -> Proxy:
    # Start-up takes seconds (model load, index rebuild, the litellm import): say what it is doing.
    started = time.perf_counter()
    logger.info("opening the cache: embedding model, store, index rebuild")
    await stack.enter_async_context(cache)
    logger.info("cache open in %.1f s", time.perf_counter() - started)
    if upstream is None:
        step = time.perf_counter()
        # The litellm import takes seconds: off the event loop.
        litellm_upstream = await asyncio.to_thread(LiteLLMUpstream)
        stack.push_async_callback(litellm_upstream.aclose)
        upstream = litellm_upstream
        logger.info("upstream client (litellm) ready in %.1f s", time.perf_counter() - step)
    passthrough = await stack.enter_async_context(Passthrough(config.upstream))
    return Proxy(
        cache=cache,
        upstream=upstream,
        passthrough=passthrough,
        serving=Serving(cache, router=router),
        router=router,
        clock=clock,
    )


def build_router(config: GatewayConfig) -> Router:
    """Routing by tier and load over `deployments`; without any, the one `upstream`."""
    if not config.deployments:
        return SingleDeploymentRouter(config.upstream)
    return LoadRouter(config.deployments, routes=config.routes, settings=config.routing)


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
    close; the rest is built from `config` in the lifespan and closed there. Raises `ConfigError`
    when the config would serve anyone with the gateway's own upstream key."""
    problems = client_problems(
        config.upstream, config.clients, listed=bool(config.tenant_by_key_sha256), own_key=config.spends_own_key
    )
    if problems:
        raise ConfigError("config", [f"{path}: {reason}" for path, reason in problems])
    clients = ClientKeys.from_config(config)
    probe = UpstreamProbe(config.upstream.api_base)
    runtime = _Runtime()
    metrics = Metrics()
    router = build_router(config)
    if isinstance(router, LoadRouter):
        metrics.watch_loads(router.loads)
    cache = SemanticCache(
        config, embedder=embedder, store=store, verifier=verifier, clock=clock, metrics=metrics, load=router
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            runtime.proxy = await _open(stack, config, cache, upstream, clock, router=router)
            stack.callback(reload_on_sighup(cache))
            try:
                yield
            finally:
                runtime.proxy = None

    def for_clients(serve: Callable[[Proxy, Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """A /v1 route: the caller's key is checked first, where the config requires listed keys."""

        async def endpoint(request: Request) -> Response:
            refused = clients.refusal(request)
            if refused is not None:
                return refused
            return await serve(runtime.require(), request)

        return endpoint

    async def forward(proxy: Proxy, request: Request) -> Response:
        # Starlette falls through to this catch-all when a gateway route matches the path but not
        # the method: such a request is for the gateway, not the upstream, and is refused here.
        methods = own_paths.get(request.url.path)
        if methods is not None:
            raise HTTPException(405, headers={"Allow": methods})
        if not allowed(config.upstream.passthrough, request.method, request.url.path):
            return await not_found(request)
        return await proxy.forward(request)

    async def readyz(request: Request) -> Response:
        proxy = runtime.proxy
        if proxy is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        engine = proxy.cache.engine
        return await readiness(engine.store, probe, index_ready=engine.catalog.ready)

    async def admin_reload(request: Request) -> Response:
        return await reload_policy(request, runtime.require().cache)

    async def admin_stats(request: Request) -> Response:
        return await stats(request, runtime.require().cache)

    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    own = [
        Route("/v1/chat/completions", for_clients(Proxy.chat_completions), methods=["POST"]),
        Route("/v1/completions", for_clients(Proxy.completions), methods=["POST"]),
        Route("/v1/models", for_clients(Proxy.models), methods=["GET"]),
        Route("/v1/feedback", for_clients(Proxy.feedback), methods=["POST"]),
    ]
    own_paths = {route.path: ", ".join(sorted((route.methods or set()) - {"HEAD"})) for route in own}
    app = Starlette(
        routes=[
            *own,
            Route("/v1/{rest:path}", for_clients(forward), methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
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


# Starlette's HTTPExceptions by status, as our own errors; any other status keeps its number.
_BY_STATUS: Mapping[int, type[ClientFacingError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    503: ServiceUnavailable,
}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return await not_found(request)
    if exc.status_code == 405:
        message = f"Method {request.method} not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    kind = _BY_STATUS.get(exc.status_code)
    if kind is not None:
        error = kind(message)
    else:
        error = ClientFacingError(message)
        error.status_code = exc.status_code
        if exc.status_code >= 500:
            error.error_type = "server_error"
    return error_response(error, exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("unexpected error", exc_info=exc)
    body = {"error": {"message": "internal gateway error", "type": "server_error", "param": None, "code": None}}
    return JSONResponse(body, status_code=500)


CONFIG_VARIABLE = "SEMCACHE_CONFIG"


def factory() -> Starlette:
    """For ASGI servers that build the app in each worker process, e.g.
    `SEMCACHE_CONFIG=config.yaml uvicorn gateway.app:factory --factory --workers 4`. This is an edge
    like the CLI: the config path and the secrets it names are read from the environment here."""
    return app_from_environment(os.environ)


def app_from_environment(environ: Mapping[str, str]) -> Starlette:
    path = environ.get(CONFIG_VARIABLE)
    if not path:
        raise ConfigError("environment", [f"{CONFIG_VARIABLE}: set it to the path of the gateway's YAML config"])
    if not logging.getLogger().handlers:  # the ASGI server configures its own loggers, not ours
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(resolve_secrets(load_config(path), environ))
