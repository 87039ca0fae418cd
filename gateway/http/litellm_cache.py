"""The semantic cache inside LiteLLM, through LiteLLM's own extension point for caches.

LiteLLM (1.110.2) asks `litellm.cache` before every supported call and, after a successful one, hands
it the answer; the `Cache` object there delegates storage to a `BaseCache` backend. This module's
backend, `LiteLLMSemanticCache`, turns the call's arguments back into an OpenAI request body and asks
`SemanticCache` — so LiteLLM SDK calls get the same scope partition, semantic hits, categories and
fail-open behaviour as the proxy, and share its store:

    semantic = LiteLLMSemanticCache(SemanticCache(config))
    litellm.cache = semantic.litellm_cache()
    response = await litellm.acompletion(model="openai/gpt-4o-mini", messages=[...], api_key=key)
    response._hidden_params["cache_hit"]      # True when it came from the cache
    ...
    await semantic.aclose()                   # or `async with semantic:`; LiteLLM's proxy calls disconnect()

How it is wired: `async_get_cache(key, **call_kwargs)` runs the lookup (a hit is returned as the stored
OpenAI response; LiteLLM turns it into a `ModelResponse`, or replays it as a stream for `stream=True`);
a miss is kept (bounded) until `async_set_cache` brings the complete answer, which LiteLLM does after
the call — for a stream, once it has assembled the whole stream — so the prompt is embedded once.
LiteLLM's `cache={"no-cache": True}` / `{"no-store": True}` are honoured by LiteLLM itself;
`{"s-maxage": N}` becomes the lookup's max age; `{"ttl": N}` (or the call's `ttl`, which the LiteLLM
proxy sets from a `Cache-Control: s-maxage=N` header) keeps the answer N seconds, never longer than
its category's `ttl_s`; `{"namespace": "..."}` (or the metadata's `redis_namespace`, as LiteLLM reads
it) partitions the scope like the proxy's `cache.namespace`. The values are checked as the proxy
checks its `cache` object; a bad one fails open (the provider is called, the fault counted).

Tenant (the hard partition of the scope): the caller's API key, as in the proxy. Under the LiteLLM
proxy that is the caller's virtual key (`user_api_key` in the request metadata, set by the proxy's
auth, already hashed by LiteLLM); in the SDK it is the call's `api_key` argument (a call without one —
the key read by LiteLLM from the environment — is the tenant "anonymous": one process, one key).
Keys listed under `tenants:` in the config share their tenant's cache. With `tenant_by="key_and_user"`
each end user is a tenant of its own within the key (the proxy's end-user id, else the `user`
argument). `user` and `metadata` do not partition otherwise: they do not change an answer.

Limits: only `acompletion` and `atext_completion` are cached; sync `completion()` and embeddings are
not (LiteLLM only asks for the call types given to `litellm_cache()`). The cache opens on first use in
the event loop of that call and must stay in that loop. LiteLLM 1.110.2's cache-hit path imports
modules of its proxy, which need `orjson` and `soundfile` (from the `litellm[proxy]` extra) even for
SDK use; `open()` checks this and names what is missing.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import replace
from types import TracebackType
from typing import Any, Literal

from gateway.cache.decisions import Hit, Miss
from gateway.cache.lifetime import CacheLifetime
from gateway.cache.scope import CacheKey, cache_key, tenant_for
from gateway.cache.semantic_cache import SemanticCache
from gateway.cache.serving import Forward, Reply, Serving
from gateway.errors import InvalidRequest, LiteLLMDependencyMissing
from gateway.upstream import import_litellm
from gateway.wire import CompletionRequest
from gateway.wire.cache_control import CacheControl, parse_cache_control

# LiteLLM must be imported through `import_litellm` (no price-list download, no telemetry) before
# any of its modules: this module subclasses LiteLLM's own `BaseCache` and `CustomLogger`.
import_litellm()

from litellm.caching.base_cache import BaseCache  # noqa: E402
from litellm.caching.caching import Cache  # noqa: E402
from litellm.integrations.custom_logger import CustomLogger  # noqa: E402
from litellm.litellm_core_utils.model_param_helper import ModelParamHelper  # noqa: E402
from litellm.types.caching import CachingSupportedCallTypes  # noqa: E402

logger = logging.getLogger("semcache.litellm")

TenantBy = Literal["key", "key_and_user"]

CACHED_CALL_TYPES: tuple[CachingSupportedCallTypes, ...] = ("acompletion", "atext_completion")
# What LiteLLM's cache-hit path imports in 1.110.2; a missing dependency there fails every hit.
_HIT_PATH_MODULE = "litellm.llms.anthropic.messages.native.response_cache"
# Litellm bookkeeping added to answers; not part of the OpenAI response.
_NOT_STORED = frozenset({"provider_specific_fields", "_hidden_params", "_response_ms"})


class LiteLLMSemanticCache(BaseCache):
    def __init__(self, cache: SemanticCache, *, tenant_by: TenantBy = "key", max_pending: int = 1024) -> None:
        super().__init__(default_ttl=int(cache.config.cache.ttl_s))
        self.semantic = cache
        self.tenant_by = tenant_by
        self._lifetime = CacheLifetime(cache)
        self._params = frozenset(ModelParamHelper.get_all_llm_api_params())
        # Misses waiting for their answer, by exact key (scope + prompt), oldest first.
        self._pending: OrderedDict[str, Forward] = OrderedDict()
        # No coalescing: LiteLLM never says when a call it made failed, so a flight could not end.
        self._serving = Serving(cache, coalesce=False)
        self._max_pending = max_pending

    def litellm_cache(self) -> Cache:
        """A LiteLLM `Cache` backed by this one, for `litellm.cache = ...`."""
        return Cache(_backend=self, supported_call_types=list(CACHED_CALL_TYPES), max_messages=None)

    # -- lifetime ----------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the semantic cache (done on first use otherwise); raises `LiteLLMDependencyMissing`."""
        try:
            importlib.import_module(_HIT_PATH_MODULE)
        except ModuleNotFoundError as exc:
            if exc.name is not None and not exc.name.startswith("litellm"):
                raise LiteLLMDependencyMissing(
                    f"litellm's cache-hit path needs '{exc.name}' (from the litellm[proxy] extra): "
                    f"pip install orjson soundfile"
                ) from exc
        await self._lifetime.open()

    async def aclose(self) -> None:
        self._pending.clear()
        await self._lifetime.aclose()

    async def __aenter__(self) -> LiteLLMSemanticCache:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def disconnect(self) -> None:
        """LiteLLM's proxy calls this at shutdown."""
        await self.aclose()

    # -- LiteLLM's BaseCache -----------------------------------------------------------------------

    async def async_get_cache(self, key: str, **kwargs: Any) -> dict[str, Any] | None:
        request = self._request(kwargs)
        if request is None:
            return None
        try:
            await self.open()
            return await self._lookup(request, kwargs)
        except Exception as exc:  # fail-open boundary: LiteLLM calls the provider
            self._fault("lookup", exc)
            return None

    async def async_set_cache(self, key: str, value: Any, **kwargs: Any) -> None:
        request = self._request(kwargs)
        answer = _answer(value)
        if request is None or answer is None:
            return
        try:
            await self.open()
            await self._remember(request, answer, kwargs)
        except Exception as exc:  # fail-open boundary: the caller has its answer already
            self._fault("remember", exc)

    async def batch_cache_write(self, key: str, value: Any, **kwargs: Any) -> None:
        await self.async_set_cache(key, value, **kwargs)

    async def async_set_cache_pipeline(self, cache_list: Any, **kwargs: Any) -> None:
        """Embedding results: not cached here."""

    def get_cache(self, key: str, **kwargs: Any) -> None:
        """Sync calls are not looked up: the cache lives on an event loop (see the module's limits)."""
        return None

    def set_cache(self, key: str, value: Any, **kwargs: Any) -> None:
        """Sync calls are not stored (see `get_cache`)."""

    async def ping(self) -> bool:
        await self.open()
        await self.semantic.engine.store.ping()
        return True

    async def test_connection(self) -> dict[str, Any]:
        try:
            await self.ping()
        except Exception as exc:  # reported, not raised: this is LiteLLM's health check
            return {"status": "failed", "message": "semantic cache store unreachable", "error": str(exc)}
        return {"status": "success", "message": "semantic cache store reachable"}

    # -- the translation ---------------------------------------------------------------------------

    async def _lookup(self, request: CompletionRequest, kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
        control = _control(kwargs)
        action = await self._serving.serve(request, api_key=self._identity(kwargs), control=control)
        decision = action.decision
        metadata = kwargs.get("metadata")
        if isinstance(metadata, dict) and decision.category is not None:
            metadata["semcache-category"] = decision.category
        if isinstance(action, Forward):
            if isinstance(decision, Miss):  # kept until LiteLLM brings the answer
                self._pending[decision.key.exact] = action
                self._pending.move_to_end(decision.key.exact)
                while len(self._pending) > self._max_pending:
                    self._pending.popitem(last=False)
            return None
        if not isinstance(action, Reply):  # no router here, so nothing is ever shed
            raise TypeError(f"LiteLLM's serving step cannot {type(action).__name__}")
        if isinstance(metadata, dict) and isinstance(decision, Hit):
            # LiteLLM's convention; its proxy answers x-litellm-semantic-similarity.
            metadata["semantic-similarity"] = decision.similarity
        return dict(action.answer)

    async def _remember(self, request: CompletionRequest, answer: dict[str, Any], kwargs: Mapping[str, Any]) -> None:
        identity = self._identity(kwargs)
        control = _control(kwargs)
        tenant = tenant_for(identity, self.semantic.config.tenant_by_key_sha256)
        key = cache_key(request, tenant=tenant, namespace=control.namespace)
        if not isinstance(key, CacheKey):
            return
        pending = self._pending.pop(key.exact, None)
        if pending is None:  # not looked up (LiteLLM's no-cache) or evicted: embed it now
            found = await self.semantic.lookup(request, api_key=identity, control=replace(control, lookup=False))
            if not isinstance(found, Miss):
                return
            miss = found
        elif pending.store and isinstance(pending.decision, Miss):
            miss = pending.decision
        else:
            return
        # Awaited, not `Forward.complete`'s background task: LiteLLM calls this after its caller
        # has the answer already.
        await self.semantic.remember(miss, answer)

    def _request(self, kwargs: Mapping[str, Any]) -> CompletionRequest | None:
        """The OpenAI request body of a LiteLLM call: its OpenAI parameters (and `extra_body`), with
        the model group's name under the LiteLLM proxy, so every deployment of a group shares entries."""
        body = {name: value for name, value in kwargs.items() if name in self._params and value is not None}
        extra_body = kwargs.get("extra_body")
        if isinstance(extra_body, dict):
            body.update({name: value for name, value in extra_body.items() if name not in body})
        model_group = _from_metadata(kwargs, "model_group")
        if model_group:
            body["model"] = str(model_group)
        endpoint: Literal["chat", "text"] = "chat" if "messages" in body else "text"
        try:
            return self.semantic.parse(json.loads(json.dumps(body, default=_jsonable)), endpoint=endpoint)
        except (InvalidRequest, TypeError, ValueError):
            return None  # not a request this cache understands: LiteLLM goes to the provider

    def _identity(self, kwargs: Mapping[str, Any]) -> str | None:
        key = _from_metadata(kwargs, "user_api_key") or kwargs.get("api_key")
        if self.tenant_by == "key_and_user":
            user = _from_metadata(kwargs, "user_api_key_end_user_id") or kwargs.get("user")
            if user:
                return f"{key or ''}\nuser:{user}"
        return str(key) if key else None

    def _fault(self, stage: str, exc: Exception) -> None:
        self.semantic.metrics.fail_open.labels(stage=f"litellm-{stage}").inc()
        logger.warning("semantic cache %s failed for a LiteLLM call, calling the provider: %s", stage, exc)


class SemanticCacheHeaders(CustomLogger):
    """A LiteLLM proxy callback that adds `x-semcache: hit|miss`, the similarity of a hit and the
    prompt's category to the proxy's responses, like the semcache proxy does. Register it under
    `litellm_settings.callbacks`."""

    async def async_post_call_response_headers_hook(
        self,
        data: dict[str, Any],
        user_api_key_dict: Any,
        response: Any,
        request_headers: dict[str, str] | None = None,
        litellm_call_info: dict[str, Any] | None = None,
    ) -> dict[str, str] | None:
        if response is None:
            return None
        hidden = getattr(response, "_hidden_params", None) or {}
        metadata = data.get("metadata") or {}
        headers = {"x-semcache": "hit" if hidden.get("cache_hit") else "miss"}
        similarity = metadata.get("semantic-similarity")
        if hidden.get("cache_hit") and isinstance(similarity, int | float):
            headers["x-semcache-similarity"] = f"{similarity:.4f}"
        if isinstance(metadata.get("semcache-category"), str):
            headers["x-semcache-category"] = metadata["semcache-category"]
        return headers


def _from_metadata(kwargs: Mapping[str, Any], name: str) -> Any:
    """A field of the call's metadata, wherever LiteLLM (or its proxy) put it."""
    params = kwargs.get("litellm_params") or {}
    for source in (kwargs, params):
        for field in ("metadata", "litellm_metadata"):
            metadata = source.get(field)
            if isinstance(metadata, dict) and metadata.get(name) is not None:
                return metadata[name]
    return None


# The keys of LiteLLM's DynamicCacheControl (and its `use-cache`); anything else there is LiteLLM's.
_LITELLM_KEYS = frozenset({"ttl", "namespace", "s-maxage", "s-max-age", "no-cache", "no-store", "use-cache"})


def _control(kwargs: Mapping[str, Any]) -> CacheControl:
    """A LiteLLM call's cache control, with LiteLLM's meaning (gateway.wire.cache_control); raises
    `InvalidRequest` for a bad value. `ttl`: the `cache` dict's, else the call's (LiteLLM's order)."""
    given = kwargs.get("cache")
    body = {key: value for key, value in given.items() if key in _LITELLM_KEYS} if isinstance(given, dict) else {}
    if body.get("ttl") is None and kwargs.get("ttl") is not None:
        body["ttl"] = kwargs["ttl"]
    if body.get("namespace") is None and _from_metadata(kwargs, "redis_namespace") is not None:
        body["namespace"] = _from_metadata(kwargs, "redis_namespace")
    return parse_cache_control({}, body)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):  # LiteLLM / pydantic message and tool objects
        return value.model_dump(exclude_none=True)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _answer(value: Any) -> dict[str, Any] | None:
    """LiteLLM hands over {"timestamp": ..., "response": <the answer as JSON text>}."""
    response = value.get("response") if isinstance(value, dict) and "response" in value else value
    if isinstance(response, str | bytes):
        try:
            response = json.loads(response)
        except ValueError:
            return None
    elif response is not None and hasattr(response, "model_dump"):
        response = response.model_dump()
    if not isinstance(response, dict):
        return None
    plain: dict[str, Any] = _plain(response)
    return plain


def _plain(value: Any) -> Any:
    """The OpenAI shape: no nulls, no LiteLLM bookkeeping."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None and k not in _NOT_STORED}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
