"""Per-request cache directives, from headers or from a `cache` object in the body (for clients
that cannot set headers). The body object is the gateway's own and never reaches the upstream.

    Cache-Control: no-cache        skip the lookup, still store the answer
    Cache-Control: no-store        do not store the answer
    Cache-Control: max-age=N       only accept entries younger than N seconds
    x-semcache-threshold: 0.95     a stricter similarity threshold for this request only
    {"cache": {"no_cache": true, "no_store": true, "max_age": 60, "threshold": 0.95}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheControl:
    lookup: bool = True
    store: bool = True
    max_age_s: float | None = None
    threshold: float | None = None
    # How long to keep this answer (never longer than its category allows).
    ttl_s: float | None = None
    # An extra partition of the scope: entries of one namespace are never served in another.
    namespace: str | None = None


_BODY_KEYS = frozenset({"no_cache", "no_store", "max_age", "threshold"})


def _max_age(value: Any, param: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{param} must be a number of seconds, got {value!r}", param=param) from None
    if isinstance(value, bool) or seconds < 0:
        raise InvalidRequest(f"{param} must be a number of seconds >= 0, got {value!r}", param=param)
    return seconds


def _threshold(value: Any, param: str) -> float:
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{param} must be a number in (0, 1], got {value!r}", param=param) from None
    if isinstance(value, bool) or not 0 < threshold <= 1:
        raise InvalidRequest(f"{param} must be a number in (0, 1], got {value!r}", param=param)
    return threshold


def parse_cache_control(headers: Mapping[str, str], body_cache: Any) -> CacheControl:
    lookup, store = True, True
    max_age_s: float | None = None
    threshold: float | None = None
    for directive in headers.get("cache-control", "").split(","):
        name, _, value = directive.strip().lower().partition("=")
        if name == "no-cache":
            lookup = False
        elif name == "no-store":
            store = False
        elif name == "max-age":
            max_age_s = _max_age(value.strip('"'), "Cache-Control max-age")
    if "x-semcache-threshold" in headers:
        threshold = _threshold(headers["x-semcache-threshold"], "x-semcache-threshold")
    if body_cache is not None:
        if not isinstance(body_cache, dict):
            raise InvalidRequest("'cache' must be an object", param="cache")
        unknown = set(body_cache) - _BODY_KEYS
        if unknown:
            raise InvalidRequest(
                f"unknown key(s) in 'cache': {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_BODY_KEYS))}",
                param="cache",
            )
        for flag in ("no_cache", "no_store"):
            if flag in body_cache and not isinstance(body_cache[flag], bool):
                raise InvalidRequest(f"'cache.{flag}' must be a boolean", param=f"cache.{flag}")
        lookup = lookup and not body_cache.get("no_cache", False)
        store = store and not body_cache.get("no_store", False)
        if "max_age" in body_cache:
            max_age_s = _max_age(body_cache["max_age"], "cache.max_age")
        if "threshold" in body_cache:
            threshold = _threshold(body_cache["threshold"], "cache.threshold")
    return CacheControl(lookup=lookup, store=store, max_age_s=max_age_s, threshold=threshold)
