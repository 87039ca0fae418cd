"""Cache keys. The scope is a hard partition: an answer is only ever served inside its own scope.

It is a digest of everything that can change an answer besides the wording of the last user
message: the tenant, the model, every earlier message (system prompt and prior turns) and every
request parameter. Parameters are excluded only when they are known not to change the answer,
so a parameter we have never heard of partitions the cache instead of leaking across it.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.wire import CompletionRequest

# Transport and bookkeeping fields: they change how an answer is delivered or billed, not what it says.
_ANSWER_NEUTRAL = frozenset(
    {"messages", "prompt", "stream", "stream_options", "user", "metadata", "store", "n", "cache"}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheKey:
    scope: str
    exact: str
    prompt: str
    # The request's `cache.namespace`, a part of `scope`; stored with the entry's request so that its
    # scope can be rebuilt from it (ownership checks).
    namespace: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Uncacheable:
    reason: str


def tenant_for(api_key: str | None, tenant_by_key_sha256: Mapping[str, str]) -> str:
    """A listed key maps to its tenant; any other key is a tenant of its own (per-key isolation)."""
    # Three disjoint namespaces, so a tenant named "anonymous" or "key:..." cannot collide.
    if not api_key:
        return "anonymous"
    digest = hashlib.sha256(api_key.encode()).hexdigest()
    tenant = tenant_by_key_sha256.get(digest)
    return f"tenant:{tenant}" if tenant is not None else f"key:{digest[:32]}"


def is_listed(tenant: str) -> bool:
    """Whether `tenant` (from `tenant_for`) is one of the config's listed tenants."""
    return tenant.startswith("tenant:")


def normalize_prompt(text: str) -> str:
    """Whitespace and Unicode form only: anything more (case, punctuation) could change meaning."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def _digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def cache_key(request: CompletionRequest, *, tenant: str, namespace: str | None = None) -> CacheKey | Uncacheable:
    """`namespace` (a request's `cache.namespace`) partitions the scope further, within the tenant:
    an entry stored in one namespace, or in none, is never served in another."""
    if request.uncacheable is not None or request.prompt is None:
        return Uncacheable(reason=request.uncacheable or "no-prompt")
    parameters = {name: value for name, value in request.body.items() if name not in _ANSWER_NEUTRAL}
    scoped: dict[str, Any] = {
        "tenant": tenant,
        "endpoint": request.endpoint,
        "parameters": parameters,  # includes "model"
        "context": list(request.context),
    }
    if namespace is not None:  # absent, not null, without one: the keys of stored entries stay valid
        scoped["namespace"] = namespace
    scope = _digest(scoped)
    normalized = normalize_prompt(request.prompt)
    return CacheKey(scope=scope, exact=_digest([scope, normalized]), prompt=normalized, namespace=namespace)
