"""The LiteLLM integration: real `litellm.acompletion` calls against the simulated upstream over HTTP,
with `LiteLLMSemanticCache` as LiteLLM's cache (the real embedding model, a real SQLite store)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest

from embeddings import Embedder
from gateway.cache.semantic_cache import SemanticCache
from gateway.config import CacheConfig, GatewayConfig, StoreConfig
from gateway.litellm_cache import LiteLLMSemanticCache, SemanticCacheHeaders
from gateway.upstream import import_litellm
from tests.conftest import Upstream
from tests.stored import stored, until_stored

QUESTION = "How do I reverse a list in Python?"
PARAPHRASE = "python: reverse a list"
OTHER_QUESTION = "What is the capital of France?"
OTHER_PARAPHRASE = "Which city is the capital of France?"

T = TypeVar("T")


def test_backend_is_a_litellm_base_cache() -> None:
    from litellm.caching.base_cache import BaseCache

    assert issubclass(LiteLLMSemanticCache, BaseCache)


@pytest.fixture
def litellm() -> Iterator[Any]:
    """litellm, imported without network access; its process-wide cache settings restored after."""
    module = import_litellm()
    saved = (
        module.cache,
        list(module.input_callback),
        list(module.success_callback),
        list(module._async_success_callback),
    )
    yield module
    module.cache = saved[0]
    module.input_callback[:] = saved[1]
    module.success_callback[:] = saved[2]
    module._async_success_callback[:] = saved[3]


@pytest.fixture
def semantic(tmp_path: Path, real_embedder: Embedder) -> SemanticCache:
    config = GatewayConfig(
        cache=CacheConfig(similarity_threshold=0.85, ttl_s=3600, store=StoreConfig(path=str(tmp_path / "cache.db")))
    )
    return SemanticCache(config, embedder=real_embedder)


async def _close_litellm_clients() -> None:
    """litellm keeps HTTP clients and a logging worker bound to this event loop: close them with it."""
    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER
    from litellm.llms.custom_httpx.async_client_cleanup import close_litellm_async_clients

    await close_litellm_async_clients()
    module = import_litellm()
    module.in_memory_llm_clients_cache.flush_cache()  # closed clients must not serve the next loop
    if getattr(GLOBAL_LOGGING_WORKER, "_bound_loop", None) is asyncio.get_running_loop():
        await GLOBAL_LOGGING_WORKER.stop(discard_pending=True, timeout=5.0)


def run(litellm: Any, backend: LiteLLMSemanticCache, scenario: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        litellm.cache = backend.litellm_cache()
        try:
            async with backend:
                return await scenario()
        finally:
            await _close_litellm_clients()

    return asyncio.run(main())


def ask(litellm: Any, upstream: Upstream, prompt: str, **params: Any) -> Awaitable[Any]:
    params.setdefault("api_key", "sk-tenant-a")
    return litellm.acompletion(  # type: ignore[no-any-return]
        model="openai/sim-large",
        messages=[{"role": "user", "content": prompt}],
        api_base=f"{upstream.url}/v1",
        max_retries=0,
        **params,
    )


def hit(response: Any) -> bool:
    return bool(response._hidden_params.get("cache_hit"))


def test_acompletion_paraphrase_is_a_semantic_hit(litellm: Any, upstream: Upstream, semantic: SemanticCache) -> None:
    backend = LiteLLMSemanticCache(semantic)
    metadata: dict[str, Any] = {}

    async def scenario() -> tuple[Any, Any]:
        first = await ask(litellm, upstream, QUESTION)
        await until_stored(semantic, 1)
        second = await ask(litellm, upstream, PARAPHRASE, metadata=metadata)
        return first, second

    first, second = run(litellm, backend, scenario)

    assert not hit(first)
    assert hit(second)
    assert second.choices[0].message.content == first.choices[0].message.content
    assert QUESTION in second.choices[0].message.content
    assert metadata["semantic-similarity"] >= 0.85  # LiteLLM's convention for semantic caches
    assert metadata["semcache-category"] == "default"  # the one category a config without a policy implies
    assert len(upstream.state.received) == 1


def test_another_api_key_is_another_tenant(litellm: Any, upstream: Upstream, semantic: SemanticCache) -> None:
    backend = LiteLLMSemanticCache(semantic)

    async def scenario() -> list[bool]:
        await ask(litellm, upstream, QUESTION)
        await until_stored(semantic, 1)
        other_tenant = await ask(litellm, upstream, QUESTION, api_key="sk-tenant-b")
        same_tenant = await ask(litellm, upstream, PARAPHRASE)
        return [hit(other_tenant), hit(same_tenant)]

    assert run(litellm, backend, scenario) == [False, True]
    assert len(upstream.state.received) == 2


def test_proxy_caller_key_in_metadata_is_the_tenant(litellm: Any, upstream: Upstream, semantic: SemanticCache) -> None:
    """Under the LiteLLM proxy every call carries the deployment's api_key; the caller is the virtual
    key the proxy puts in the metadata."""
    backend = LiteLLMSemanticCache(semantic)

    async def scenario() -> list[bool]:
        await ask(litellm, upstream, QUESTION, metadata={"user_api_key": "hashed-key-1"})
        await until_stored(semantic, 1)
        other_caller = await ask(litellm, upstream, QUESTION, metadata={"user_api_key": "hashed-key-2"})
        same_caller = await ask(litellm, upstream, PARAPHRASE, metadata={"user_api_key": "hashed-key-1"})
        return [hit(other_caller), hit(same_caller)]

    assert run(litellm, backend, scenario) == [False, True]


def test_key_and_user_rule_isolates_end_users(litellm: Any, upstream: Upstream, semantic: SemanticCache) -> None:
    backend = LiteLLMSemanticCache(semantic, tenant_by="key_and_user")

    async def scenario() -> list[bool]:
        await ask(litellm, upstream, QUESTION, user="alice")
        await until_stored(semantic, 1)
        bob = await ask(litellm, upstream, QUESTION, user="bob")
        alice = await ask(litellm, upstream, PARAPHRASE, user="alice")
        return [hit(bob), hit(alice)]

    assert run(litellm, backend, scenario) == [False, True]


def test_streams_are_stored_once_complete_and_hits_replay_as_streams(
    litellm: Any, upstream: Upstream, semantic: SemanticCache
) -> None:
    backend = LiteLLMSemanticCache(semantic)

    async def text(stream: Any) -> str:
        return "".join([chunk.choices[0].delta.content or "" async for chunk in stream])

    async def scenario() -> tuple[str, str, Any]:
        streamed = await text(await ask(litellm, upstream, OTHER_QUESTION, stream=True))
        await until_stored(semantic, 1)
        replayed = await text(await ask(litellm, upstream, OTHER_PARAPHRASE, stream=True))
        as_json = await ask(litellm, upstream, OTHER_PARAPHRASE)
        return streamed, replayed, as_json

    streamed, replayed, as_json = run(litellm, backend, scenario)

    assert OTHER_QUESTION in streamed
    assert replayed == streamed
    assert hit(as_json)
    assert as_json.choices[0].message.content == streamed
    assert len(upstream.state.received) == 1


def test_text_completions(litellm: Any, upstream: Upstream, semantic: SemanticCache) -> None:
    backend = LiteLLMSemanticCache(semantic)

    async def scenario() -> tuple[Any, Any]:
        # litellm builds (and never closes) an HTTP client per text-completion call unless given one.
        async with openai.AsyncOpenAI(base_url=f"{upstream.url}/v1", api_key="sk-a", max_retries=0) as client:
            arguments = {"model": "openai/sim-large", "api_base": f"{upstream.url}/v1", "api_key": "sk-a"}
            first = await litellm.atext_completion(prompt=QUESTION, client=client, **arguments)
            await until_stored(semantic, 1)
            second = await litellm.atext_completion(prompt=PARAPHRASE, client=client, **arguments)
            return first, second

    first, second = run(litellm, backend, scenario)

    assert hit(second)
    assert second.choices[0].text == first.choices[0].text
    assert len(upstream.state.received) == 1


def test_failed_call_is_not_stored(litellm: Any, upstream: Upstream, semantic: SemanticCache) -> None:
    backend = LiteLLMSemanticCache(semantic)
    upstream.set_faults(status=500, times=1)

    async def scenario() -> bool:
        with pytest.raises(litellm.InternalServerError):
            await ask(litellm, upstream, QUESTION)
        retried = await ask(litellm, upstream, QUESTION)
        await until_stored(semantic, 1)
        return hit(retried)

    assert run(litellm, backend, scenario) is False
    assert stored(semantic) == 1  # only the answer that succeeded
    assert len(upstream.state.received) == 2


def test_litellm_no_cache_still_stores_and_no_store_does_not(
    litellm: Any, upstream: Upstream, semantic: SemanticCache
) -> None:
    backend = LiteLLMSemanticCache(semantic)

    async def scenario() -> list[bool]:
        await ask(litellm, upstream, QUESTION, cache={"no-store": True})
        not_stored = await ask(litellm, upstream, QUESTION)  # a miss: nothing was stored
        await until_stored(semantic, 1)
        skipped = await ask(litellm, upstream, PARAPHRASE, cache={"no-cache": True})
        await until_stored(semantic, 2)  # stored although it was not looked up
        return [hit(not_stored), hit(skipped)]

    assert run(litellm, backend, scenario) == [False, False]
    assert len(upstream.state.received) == 3


def test_sync_completion_is_not_cached(litellm: Any, upstream: Upstream, semantic: SemanticCache) -> None:
    backend = LiteLLMSemanticCache(semantic)
    litellm.cache = backend.litellm_cache()
    arguments = {"model": "openai/sim-large", "api_base": f"{upstream.url}/v1", "api_key": "sk-a", "max_retries": 0}

    with openai.OpenAI(base_url=f"{upstream.url}/v1", api_key="sk-a", max_retries=0) as client:
        for _ in range(2):
            response = litellm.completion(messages=[{"role": "user", "content": QUESTION}], client=client, **arguments)
            assert not hit(response)

    assert len(upstream.state.received) == 2
    assert stored(semantic) == 0


def test_proxy_headers_callback(litellm: Any) -> None:
    hook = SemanticCacheHeaders()
    cached = litellm.ModelResponse()
    cached._hidden_params["cache_hit"] = True
    fresh = litellm.ModelResponse()

    async def scenario() -> list[Any]:
        call = hook.async_post_call_response_headers_hook
        return [
            await call(
                data={"metadata": {"semantic-similarity": 0.93, "semcache-category": "default"}},
                user_api_key_dict=None,
                response=cached,
            ),
            await call(data={"metadata": {}}, user_api_key_dict=None, response=fresh),
            await call(data={}, user_api_key_dict=None, response=None),
        ]

    assert asyncio.run(scenario()) == [
        {"x-semcache": "hit", "x-semcache-similarity": "0.9300", "x-semcache-category": "default"},
        {"x-semcache": "miss"},
        None,
    ]


def test_litellm_namespace_partitions_and_ttl_shortens(
    litellm: Any, upstream: Upstream, semantic: SemanticCache
) -> None:
    import sqlite3

    backend = LiteLLMSemanticCache(semantic)

    async def scenario() -> list[bool]:
        await ask(litellm, upstream, QUESTION, cache={"namespace": "team-a", "ttl": 60})
        await until_stored(semantic, 1)
        same = await ask(litellm, upstream, PARAPHRASE, cache={"namespace": "team-a"})
        other = await ask(litellm, upstream, QUESTION, cache={"namespace": "team-b"})
        none = await ask(litellm, upstream, QUESTION)
        await ask(litellm, upstream, OTHER_QUESTION, cache={"ttl": 10**9})
        await until_stored(semantic, 4)
        return [hit(same), hit(other), hit(none)]

    assert run(litellm, backend, scenario) == [True, False, False]
    with sqlite3.connect(semantic.config.cache.store.path) as db:
        lives = db.execute("SELECT prompt, expires_at - created_at FROM entries").fetchall()
    assert (QUESTION, 60) in lives  # LiteLLM's `ttl`, in seconds
    assert (OTHER_QUESTION, semantic.config.cache.ttl_s) in lives  # clamped to the category's
    assert len(upstream.state.received) == 4
