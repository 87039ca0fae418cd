"""Per-request cache directives, from headers or from a `cache` object in the body (for clients
that cannot set headers). The body object is the gateway's own and never reaches the upstream.

    Cache-Control: no-cache        skip the lookup, still store the answer
    Cache-Control: no-store        do not store the answer
    Cache-Control: max-age=N       only accept entries younger than N seconds
    Cache-Control: s-maxage=N      the same (LiteLLM's spelling of it)
    x-semcache-threshold: 0.95     a stricter similarity threshold for this request only
    {"cache": {"no_cache": true, "no_store": true, "max_age": 60, "threshold": 0.95,
               "ttl": 300, "namespace": "team-a"}}

The body object also takes LiteLLM's spellings (`litellm.types.caching.DynamicCacheControl`), with
LiteLLM's meaning: `no-cache`, `no-store`, `s-maxage` / `s-max-age` (the lookup's max age, in
seconds), `ttl` (seconds to keep this answer stored; here never longer than its category's `ttl_s`)
and `namespace` (a partition of the cache: an entry stored in one is served only in that one).
`use-cache` (LiteLLM's opt-in for a cache that is off by default) is accepted and changes nothing:
this cache is always on. A null value is unset, as in LiteLLM.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest

MAX_NAMESPACE_CHARS = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheControl:
    lookup: bool = True
    store: bool = True
    # Only entries younger than this are served.
    max_age_s: float | None = None
    # Stricter than the category's only (the engine refuses a looser one).
    threshold: float | None = None
    # How long to keep this answer stored; whoever stores it clamps it to the category's ttl_s.
    ttl_s: float | None = None
    # An extra partition of the scope (part of the scope digest): never served across namespaces.
    namespace: str | None = None


_FLAGS = {"no_cache": "lookup", "no-cache": "lookup", "no_store": "store", "no-store": "store"}
_MAX_AGES = ("max_age", "s-maxage", "s-max-age")
_BODY_KEYS = frozenset({*_FLAGS, *_MAX_AGES, "threshold", "ttl", "namespace", "use-cache"})


def _seconds(value: Any, param: str, *, positive: bool = False) -> float:
    """A max age (>= 0; infinite: no limit) or, `positive`, a TTL (> 0 and finite)."""
    bound = "> 0" if positive else ">= 0"
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{param} must be a number of seconds {bound}, got {value!r}", param=param) from None
    if isinstance(value, bool) or not seconds >= 0 or (positive and not 0 < seconds < float("inf")):
        raise InvalidRequest(f"{param} must be a number of seconds {bound}, got {value!r}", param=param)
    return seconds


def _threshold(value: Any, param: str) -> float:
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{param} must be a number in (0, 1], got {value!r}", param=param) from None
    if isinstance(value, bool) or not 0 < threshold <= 1:
        raise InvalidRequest(f"{param} must be a number in (0, 1], got {value!r}", param=param)
    return threshold


def _namespace(value: Any, param: str) -> str:
    # It only goes into a digest, so any text would be safe; the bound keeps keys and logs sane.
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAMESPACE_CHARS or not value.isprintable():
        raise InvalidRequest(
            f"{param} must be a string of 1-{MAX_NAMESPACE_CHARS} printable characters, got {value!r}", param=param
        )
    return value


def _stricter(one: float | None, other: float | None) -> float | None:
    return other if one is None else one if other is None else min(one, other)


def parse_cache_control(headers: Mapping[str, str], body_cache: Any) -> CacheControl:
    """Headers and the body's `cache` object together; a directive in either counts, and where both
    give a max age the shorter one applies. Raises `InvalidRequest` (400) naming the bad param."""
    from_headers = _from_headers(headers)
    return from_headers if body_cache is None else _with_body(from_headers, body_cache)


def _from_headers(headers: Mapping[str, str]) -> CacheControl:
    lookup, store = True, True
    max_age_s: float | None = None
    for directive in headers.get("cache-control", "").split(","):
        name, _, value = directive.strip().lower().partition("=")
        if name == "no-cache":
            lookup = False
        elif name == "no-store":
            store = False
        elif name in ("max-age", "s-maxage"):
            max_age_s = _stricter(max_age_s, _seconds(value.strip().strip('"'), f"Cache-Control {name}"))
    threshold = None
    if "x-semcache-threshold" in headers:
        threshold = _threshold(headers["x-semcache-threshold"], "x-semcache-threshold")
    return CacheControl(lookup=lookup, store=store, max_age_s=max_age_s, threshold=threshold)


def _with_body(control: CacheControl, body_cache: Any) -> CacheControl:
    if not isinstance(body_cache, dict):
        raise InvalidRequest("'cache' must be an object", param="cache")
    unknown = set(body_cache) - _BODY_KEYS
    if unknown:
        raise InvalidRequest(
            f"unknown key(s) in 'cache': {', '.join(sorted(map(str, unknown)))}; "
            f"allowed: {', '.join(sorted(_BODY_KEYS))}",
            param="cache",
        )
    # LiteLLM's DynamicCacheControl allows null for every key: unset, as there.
    body = {key: value for key, value in body_cache.items() if value is not None}
    for flag in (*_FLAGS, "use-cache"):
        if flag in body and not isinstance(body[flag], bool):
            raise InvalidRequest(f"'cache.{flag}' must be a boolean", param=f"cache.{flag}")
    max_age_s = control.max_age_s
    for name in _MAX_AGES:
        if name in body:
            max_age_s = _stricter(max_age_s, _seconds(body[name], f"cache.{name}"))
    return CacheControl(
        lookup=control.lookup and not any(body.get(flag) for flag, what in _FLAGS.items() if what == "lookup"),
        store=control.store and not any(body.get(flag) for flag, what in _FLAGS.items() if what == "store"),
        max_age_s=max_age_s,
        threshold=_threshold(body["threshold"], "cache.threshold") if "threshold" in body else control.threshold,
        ttl_s=_seconds(body["ttl"], "cache.ttl", positive=True) if "ttl" in body else None,
        namespace=_namespace(body["namespace"], "cache.namespace") if "namespace" in body else None,
    )
