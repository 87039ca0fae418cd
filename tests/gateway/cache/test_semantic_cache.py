"""The library API, `SemanticCache`, with the real embedding model and a real SQLite store."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import gateway
from embeddings import Embedder
from gateway import CacheControl, CacheHit, CacheMiss, GatewayConfig, InvalidRequest, NotCacheable, SemanticCache
from gateway.config import CacheConfig, EmbeddingConfig, StoreConfig
from tests.bodies import answer, chat
from tests.doubles import FakeClock

QUESTION = "How do I reverse a list in Python?"
PARAPHRASE = "python: reverse a list"
UNRELATED = "What is the boiling point of water at sea level?"


@pytest.fixture
def config(tmp_path: Path) -> GatewayConfig:
    return GatewayConfig(
        cache=CacheConfig(similarity_threshold=0.85, ttl_s=3600, store=StoreConfig(path=str(tmp_path / "cache.db")))
    )


@pytest.fixture
def cache(config: GatewayConfig, real_embedder: Embedder, clock: FakeClock) -> SemanticCache:
    return SemanticCache(config, embedder=real_embedder, clock=clock)


def test_lookup_remember_round_trip(cache: SemanticCache) -> None:
    async def scenario() -> tuple[Any, Any, Any, Any]:
        async with cache:
            first = await cache.lookup(chat(QUESTION), api_key="sk-a")
            assert isinstance(first, CacheMiss)
            assert await cache.remember(first, answer("Use reversed() or list.reverse()."))
            semantic = await cache.lookup(chat(PARAPHRASE), api_key="sk-a")
            exact = await cache.lookup(chat(f"  {QUESTION} "), api_key="sk-a")
            unrelated = await cache.lookup(chat(UNRELATED), api_key="sk-a")
            return first, semantic, exact, unrelated

    first, semantic, exact, unrelated = asyncio.run(scenario())

    assert first.best_similarity is None  # nothing stored yet
    assert isinstance(semantic, CacheHit)
    assert semantic.outcome == "hit"
    assert semantic.similarity >= 0.85
    assert semantic.answer["choices"][0]["message"]["content"] == "Use reversed() or list.reverse()."
    assert semantic.answer["id"] != "chatcmpl-original"  # a fresh id...
    assert semantic.answer["usage"]["total_tokens"] == 11  # ...and the original usage
    assert isinstance(exact, CacheHit)
    assert exact.outcome == "exact"
    assert isinstance(unrelated, CacheMiss)
    assert unrelated.best_similarity is not None
    assert unrelated.best_similarity < 0.85


def test_another_api_key_is_another_scope(cache: SemanticCache) -> None:
    async def scenario() -> tuple[Any, Any, Any]:
        async with cache:
            miss = await cache.lookup(chat(QUESTION), api_key="sk-a")
            assert isinstance(miss, CacheMiss)
            await cache.remember(miss, answer("tenant a's answer"))
            other_key = await cache.lookup(chat(QUESTION), api_key="sk-b")
            no_key = await cache.lookup(chat(QUESTION))
            same_key = await cache.lookup(chat(QUESTION), api_key="sk-a")
            return other_key, no_key, same_key

    other_key, no_key, same_key = asyncio.run(scenario())

    assert isinstance(other_key, CacheMiss)
    assert other_key.best_similarity is None  # not even a candidate from the other scope
    assert isinstance(no_key, CacheMiss)
    assert isinstance(same_key, CacheHit)


def test_parameters_that_change_the_answer_are_other_scopes(cache: SemanticCache) -> None:
    async def scenario() -> list[Any]:
        async with cache:
            miss = await cache.lookup(chat(QUESTION), api_key="sk-a")
            assert isinstance(miss, CacheMiss)
            await cache.remember(miss, answer("cold answer"))
            return [
                await cache.lookup(chat(QUESTION, temperature=1.5), api_key="sk-a"),
                await cache.lookup(chat(QUESTION, model="sim-small"), api_key="sk-a"),
                await cache.lookup(chat(QUESTION, user="someone-else", stream=True), api_key="sk-a"),
            ]

    hotter, other_model, neutral = asyncio.run(scenario())

    assert isinstance(hotter, CacheMiss)
    assert isinstance(other_model, CacheMiss)
    assert isinstance(neutral, CacheHit)  # `user` and `stream` do not change what the answer says


def test_not_cacheable_requests(cache: SemanticCache) -> None:
    async def scenario() -> list[Any]:
        async with cache:
            text_batch = cache.parse({"model": "sim-large", "prompt": ["a", "b"]}, endpoint="text")
            return [
                await cache.lookup(chat(QUESTION, n=2), api_key="sk-a"),
                await cache.lookup(text_batch, api_key="sk-a"),
            ]

    several, batch = asyncio.run(scenario())

    assert isinstance(several, NotCacheable)
    assert several.reason == "n>1"
    assert isinstance(batch, NotCacheable)
    assert batch.reason == "batch-or-token-prompt"


def test_incomplete_answer_is_not_remembered(cache: SemanticCache) -> None:
    async def scenario() -> tuple[bool, Any]:
        async with cache:
            miss = await cache.lookup(chat(QUESTION), api_key="sk-a")
            assert isinstance(miss, CacheMiss)
            remembered = await cache.remember(miss, answer("cut off mid", finish_reason=None))
            return remembered, await cache.lookup(chat(QUESTION), api_key="sk-a")

    remembered, again = asyncio.run(scenario())

    assert remembered is False
    assert isinstance(again, CacheMiss)


def test_cache_control_max_age_and_no_cache(cache: SemanticCache, clock: FakeClock) -> None:
    async def scenario() -> list[Any]:
        async with cache:
            miss = await cache.lookup(chat(QUESTION), api_key="sk-a")
            assert isinstance(miss, CacheMiss)
            await cache.remember(miss, answer("an answer"))
            clock.advance(120)
            return [
                await cache.lookup(chat(PARAPHRASE), api_key="sk-a", control=CacheControl(max_age_s=60)),
                await cache.lookup(chat(PARAPHRASE), api_key="sk-a", control=CacheControl(lookup=False)),
                await cache.lookup(chat(PARAPHRASE), api_key="sk-a", control=CacheControl(max_age_s=600)),
            ]

    too_old, skipped, fresh_enough = asyncio.run(scenario())

    assert isinstance(too_old, CacheMiss)
    assert isinstance(skipped, CacheMiss)
    assert isinstance(fresh_enough, CacheHit)


def test_the_configured_onnx_backend_serves_what_torch_stored(
    config: GatewayConfig, real_embedder: Embedder, onnx_graphs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Both backends give the same vectors under the same name: switching keeps the store's entries."""
    onnx_config = replace(config, embedding=EmbeddingConfig(backend="onnx", onnx_cache_dir=str(onnx_graphs)))

    async def with_torch() -> None:
        async with SemanticCache(config, embedder=real_embedder) as cache:
            miss = await cache.lookup(chat(QUESTION), api_key="sk-a")
            assert isinstance(miss, CacheMiss)
            assert await cache.remember(miss, answer("stored by torch"))

    async def with_onnx() -> Any:
        async with SemanticCache(onnx_config) as cache:  # the embedder is built from the config
            return await cache.lookup(chat(PARAPHRASE), api_key="sk-a")

    asyncio.run(with_torch())
    with caplog.at_level(logging.WARNING):
        found = asyncio.run(with_onnx())

    assert list(onnx_graphs.glob("*-fp32.onnx")), "the graph was exported (or found) in the configured folder"
    assert "torch instead" not in caplog.text and "dropped" not in caplog.text
    assert isinstance(found, CacheHit)
    assert found.answer["choices"][0]["message"]["content"] == "stored by torch"


def test_remember_later_is_drained_at_close_and_survives_a_restart(
    config: GatewayConfig, real_embedder: Embedder
) -> None:
    async def first_run() -> None:
        async with SemanticCache(config, embedder=real_embedder) as cache:
            miss = await cache.lookup(chat(QUESTION), api_key="sk-a")
            assert isinstance(miss, CacheMiss)
            cache.remember_later(miss, answer("stored in the background"))

    async def second_run() -> Any:
        async with SemanticCache(config, embedder=real_embedder) as cache:
            return await cache.lookup(chat(PARAPHRASE), api_key="sk-a")

    asyncio.run(first_run())
    found = asyncio.run(second_run())

    assert isinstance(found, CacheHit)
    assert found.answer["choices"][0]["message"]["content"] == "stored in the background"


def test_invalid_request_raises_an_openai_style_error(cache: SemanticCache) -> None:
    with pytest.raises(InvalidRequest) as caught:
        cache.parse({"model": "sim-large"})
    assert caught.value.param == "messages"
    assert caught.value.status_code == 400


def test_lookup_before_open_says_how_to_open(cache: SemanticCache) -> None:
    with pytest.raises(RuntimeError, match="async with SemanticCache"):
        asyncio.run(cache.lookup(chat(QUESTION)))


def test_public_surface_is_pinned() -> None:
    assert gateway.__all__ == [
        "Bypass",
        "CacheControl",
        "CacheHit",
        "CacheMiss",
        "Candidate",
        "ClientFacingError",
        "ConfigError",
        "Decision",
        "GatewayConfig",
        "GatewayError",
        "Hit",
        "InvalidRequest",
        "Lookup",
        "Miss",
        "NearMiss",
        "NotCacheable",
        "Outcome",
        "SemanticCache",
        "SemanticCacheMiddleware",
        "UpstreamError",
        "create_app",
        "load_config",
        "parse_config",
        "resolve_secrets",
    ]
    for name in gateway.__all__:
        assert getattr(gateway, name) is not None


def test_a_near_miss_is_a_miss_that_carries_its_candidates(tmp_path: Path, real_embedder: Embedder) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "categories:\n  - name: default\n    similarity_threshold: 0.99\n    near_miss_floor: 0.5\n    ttl_s: 3600\n"
    )
    config = GatewayConfig(policy=str(policy), cache=CacheConfig(store=StoreConfig(path=str(tmp_path / "c.db"))))

    async def scenario() -> tuple[Any, Any]:
        async with SemanticCache(config, embedder=real_embedder) as cache:
            first = await cache.lookup(chat(QUESTION), api_key="sk-a")
            assert isinstance(first, CacheMiss)
            await cache.remember(first, answer("Use reversed()."))
            near = await cache.lookup(chat(PARAPHRASE), api_key="sk-a")
            other_tenant = await cache.lookup(chat(PARAPHRASE), api_key="sk-b")
            return near, other_tenant

    near, other_tenant = asyncio.run(scenario())

    assert isinstance(near, gateway.NearMiss)
    assert isinstance(near, CacheMiss)  # callers that know only hits and misses treat it as a miss
    assert near.outcome == "near-miss"
    (candidate,) = near.candidates
    assert candidate.entry.prompt == QUESTION
    assert candidate.similarity == near.best_similarity
    assert near.rules is not None and near.rules.near_miss_floor == 0.5
    # Candidates come from the caller's own scope only: another tenant's entry is no example.
    assert not isinstance(other_tenant, gateway.NearMiss)
    assert other_tenant.best_similarity is None
