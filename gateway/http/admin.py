"""Operator endpoints behind the admin key (policy reload, cache statistics), and reload on SIGHUP."""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import threading
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.cache.semantic_cache import SemanticCache
from gateway.config import AdminConfig
from gateway.errors import ClientFacingError, RouteNotFound, Unauthorized
from gateway.http.responses import bearer_key, error_response
from policies import PolicyError

logger = logging.getLogger("semcache.admin")


def _authorize(request: Request, admin: AdminConfig) -> None:
    if admin.api_key is None:
        raise RouteNotFound("admin routes are disabled (set admin.api_key_env)", code="unknown_url")
    if not hmac.compare_digest((bearer_key(request) or "").encode(), admin.api_key.encode()):
        raise Unauthorized("a valid admin key is required", code="invalid_api_key")


async def reload_policy(request: Request, cache: SemanticCache) -> Response:
    try:
        _authorize(request, cache.config.admin)
        result = await cache.reload_policy()
    except ClientFacingError as error:
        return error_response(error)
    except PolicyError as error:
        body = {
            "error": {
                "message": f"policy rejected, the previous one stays in force: {error}",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_policy",
            },
            "problems": error.problems,
        }
        return JSONResponse(body, status_code=400)
    return JSONResponse({"status": "reloaded", "categories": list(result.categories), "dropped": dict(result.dropped)})


async def stats(request: Request, cache: SemanticCache) -> Response:
    try:
        _authorize(request, cache.config.admin)
    except ClientFacingError as error:
        return error_response(error)
    engine = cache.engine
    sizes = engine.index_sizes()
    categories = {
        category.name: {
            "indexed": sizes.get(category.name, 0),
            "max_entries": category.max_entries,
            "similarity_threshold": category.similarity_threshold,
            # What a semantic hit needs now: the configured threshold (or the verifier's floor),
            # raised by bad feedback.
            "effective_threshold": engine.threshold(category),
            "feedback": engine.feedback_summary(category),
            "ttl_s": category.ttl_s,
            "cacheable": category.cacheable,
        }
        for category in engine.policy.categories
    }
    return JSONResponse({"categories": categories})


def reload_on_sighup(cache: SemanticCache) -> Callable[[], None]:
    """Reload the policy on SIGHUP (only where the loop runs in the main thread, as under
    `semcache serve`). Returns the function that removes the handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()

    async def reload() -> None:
        try:
            result = await cache.reload_policy()
        except PolicyError as error:
            logger.error("SIGHUP: policy rejected, the previous one stays in force: %s", error)  # noqa: TRY400
        except Exception:  # a signal handler has nobody to raise to
            logger.exception("SIGHUP: policy reload failed")
        else:
            logger.info("SIGHUP: policy reloaded (%s)", ", ".join(result.categories))

    loop.add_signal_handler(signal.SIGHUP, lambda: cache.tasks.spawn(reload(), name="sighup-reload"))

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return remove
