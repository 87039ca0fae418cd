"""Answers are stored in the background, after the client has its answer: tests wait for the counter."""

from __future__ import annotations

import asyncio
import time

from gateway.cache.semantic_cache import SemanticCache


def stored(cache: SemanticCache) -> int:
    return int(cache.metrics.registry.get_sample_value("semcache_stored_total") or 0)


def wait_until_stored(cache: SemanticCache, count: int, *, timeout_s: float = 30.0) -> None:
    """From a test thread, while the cache serves in a server's own thread."""
    deadline = time.monotonic() + timeout_s
    while stored(cache) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} answers were stored (stored: {stored(cache)})")
        time.sleep(0.01)


async def until_stored(cache: SemanticCache, count: int, *, timeout_s: float = 30.0) -> None:
    """From a coroutine on the cache's own event loop."""
    deadline = time.monotonic() + timeout_s
    while stored(cache) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} answers were stored (stored: {stored(cache)})")
        await asyncio.sleep(0.01)
