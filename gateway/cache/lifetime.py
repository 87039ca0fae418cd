"""Opening a `SemanticCache` for a host that has no `async with` of its own to give it: the
middleware (an ASGI lifespan, or none at all) and the LiteLLM backend (LiteLLM's own lifecycle)."""

from __future__ import annotations

import asyncio

from gateway.cache.semantic_cache import SemanticCache


def is_open(cache: SemanticCache) -> bool:
    try:
        cache.engine  # noqa: B018 - raises RuntimeError while the cache is closed
    except RuntimeError:
        return False
    return True


class CacheLifetime:
    """Opens the cache on first need, once, under a lock; closes it only if it was the one that opened
    it. A cache already open when handed over stays its owner's to close."""

    def __init__(self, cache: SemanticCache) -> None:
        self.cache = cache
        self._lock = asyncio.Lock()
        self._ready = False
        self._close_on_exit = False

    async def open(self) -> None:
        if self._ready:  # the common case, without touching the lock
            return
        async with self._lock:
            if self._ready:
                return
            if not is_open(self.cache):
                await self.cache.__aenter__()
                self._close_on_exit = True
            self._ready = True

    async def aclose(self) -> None:
        async with self._lock:
            close, self._close_on_exit, self._ready = self._close_on_exit, False, False
            if close:
                await self.cache.aclose()
