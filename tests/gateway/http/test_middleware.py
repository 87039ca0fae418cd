"""`SemanticCacheMiddleware` in front of real Starlette and FastAPI apps under uvicorn, driven by the
real `openai` SDK and httpx, with the real embedding model and a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from embeddings import Embedder
from gateway.cache.semantic_cache import SemanticCache
from gateway.config import CacheConfig, GatewayConfig, StoreConfig
from gateway.http.middleware import SemanticCacheMiddleware
from gateway.http.simulated_upstream import UpstreamState, create_upstream_app
from gateway.wire.streams import decode_sse
from tests.servers import serve
from tests.stored import stored, until_stored, wait_until_stored

QUESTION = "How do I reverse a list in Python?"
PARAPHRASE = "python: reverse a list"
OTHER_PARAPHRASE = "How can I reverse a list in Python?"


@pytest.fixture
def config(tmp_path: Path) -> GatewayConfig:
    return GatewayConfig(
        cache=CacheConfig(similarity_threshold=0.85, ttl_s=3600, store=StoreConfig(path=str(tmp_path / "cache.db")))
    )


@pytest.fixture
def cache(config: GatewayConfig, real_embedder: Embedder) -> SemanticCache:
    return SemanticCache(config, embedder=real_embedder)


@dataclass(frozen=True, slots=True)
class Served:
    url: str
    cache: SemanticCache

    def client(self, api_key: str = "sk-tenant-a") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0)

    def ask(self, prompt: str, *, api_key: str = "sk-tenant-a", **params: Any) -> tuple[dict[str, str], str | None]:
        with self.client(api_key) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="sim-large", messages=[{"role": "user", "content": prompt}], **params
            )
            return dict(raw.headers), raw.parse().choices[0].message.content

    def ask_streaming(self, prompt: str, **params: Any) -> tuple[dict[str, str], str, list[Any]]:
        with self.client() as client:
            raw = client.chat.completions.with_raw_response.create(
                model="sim-large", messages=[{"role": "user", "content": prompt}], stream=True, **params
            )
            chunks = list(raw.parse())
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        return dict(raw.headers), text, chunks


@contextmanager
def served(app: Any, cache: SemanticCache) -> Iterator[Served]:
    with serve(app) as running:
        yield Served(url=running.url, cache=cache)


# -- a Starlette app: the simulated upstream itself, wrapped ------------------------------------


@pytest.fixture
def starlette_app(cache: SemanticCache) -> Iterator[tuple[Served, UpstreamState]]:
    state = UpstreamState()
    app = SemanticCacheMiddleware(create_upstream_app(state), cache=cache)
    with served(app, cache) as running:
        yield running, state


def test_miss_calls_the_app_once_and_the_paraphrase_hit_never_does(
    starlette_app: tuple[Served, UpstreamState],
) -> None:
    app, state = starlette_app
    headers, first = app.ask(QUESTION)
    assert headers["x-semcache"] == "miss"
    assert len(state.received) == 1
    wait_until_stored(app.cache, 1)

    headers, second = app.ask(PARAPHRASE)

    assert headers["x-semcache"] == "hit"
    assert float(headers["x-semcache-similarity"]) >= 0.85
    assert headers["x-semcache-entry"]
    assert headers["x-semcache-category"] == "default"  # the one category a config without a policy implies
    assert second == first
    assert QUESTION in (second or "")
    assert len(state.received) == 1  # the app was not called for the hit


def test_concurrent_identical_misses_call_the_app_once(starlette_app: tuple[Served, UpstreamState]) -> None:
    app, state = starlette_app
    state.latency_ms = 2000  # far longer than 8 lookups take, even on a loaded 2-core machine
    prompt = "Name three rivers that flow through Germany."

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: app.ask(prompt), range(8)))

    assert len(state.received) == 1
    assert {text for _, text in answers} == {answers[0][1]}
    outcomes = sorted(headers["x-semcache"] for headers, _ in answers)
    # Coalesced answers were never stored: labelled as such, not as exact hits, and name no entry.
    assert outcomes == ["coalesced"] * 7 + ["miss"]
    assert not any("x-semcache-entry" in headers for headers, _ in answers if headers["x-semcache"] == "coalesced")


def test_streamed_miss_is_forwarded_stored_and_replayed_as_sse(starlette_app: tuple[Served, UpstreamState]) -> None:
    app, state = starlette_app
    headers, first, chunks = app.ask_streaming(QUESTION)
    assert headers["x-semcache"] == "miss"
    assert chunks[-1].choices[0].finish_reason == "stop"
    wait_until_stored(app.cache, 1)

    headers, second, chunks = app.ask_streaming(PARAPHRASE)

    assert headers["x-semcache"] == "hit"
    assert headers["content-type"].startswith("text/event-stream")
    assert second == first
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    # ...and the answer stored from a stream serves a JSON client too.
    headers, answer = app.ask(OTHER_PARAPHRASE)
    assert headers["x-semcache"] == "hit"
    assert answer == first
    assert len(state.received) == 1


def test_streamed_answer_reaches_the_client_as_the_app_sends_it(cache: SemanticCache) -> None:
    """The app holds its stream after the first event until the client has that event: a middleware
    that buffered the stream would never deliver it (the read times out)."""
    release = threading.Event()

    async def gated() -> AsyncIterator[bytes]:
        events = [event async for event in _sse("sim-large", f"Gated answer to: {QUESTION}")]
        yield events[0]
        await asyncio.to_thread(release.wait, 30)
        for event in events[1:]:
            yield event

    async def endpoint(request: StarletteRequest) -> StreamingResponse:
        await request.body()
        return StreamingResponse(gated(), media_type="text/event-stream")

    inner = Starlette(routes=[Route("/v1/chat/completions", endpoint, methods=["POST"])])
    app = SemanticCacheMiddleware(inner, cache=cache)
    body = {"model": "sim-large", "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    with served(app, cache) as running, httpx.Client(base_url=running.url, timeout=10) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            events = response.iter_bytes()
            first = next(events)
            assert b'"role":"assistant"' in first.replace(b" ", b"")
            release.set()
            rest = b"".join(events)
        assert rest.endswith(b"data: [DONE]\n\n")
        wait_until_stored(cache, 1)


def test_truncated_stream_is_forwarded_but_never_stored(starlette_app: tuple[Served, UpstreamState]) -> None:
    app, state = starlette_app
    httpx.post(f"{app.url}/control", json={"truncate_stream": True, "times": 1})
    body = {"model": "sim-large", "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    response = httpx.post(f"{app.url}/v1/chat/completions", json=body, timeout=30)
    assert response.headers["x-semcache"] == "miss"
    assert b"[DONE]" not in response.content

    headers, _ = app.ask(QUESTION)  # a complete answer this time

    assert headers["x-semcache"] == "miss"
    assert len(state.received) == 2
    wait_until_stored(app.cache, 1)
    assert stored(app.cache) == 1  # only the complete one


def test_app_error_is_forwarded_and_not_stored(starlette_app: tuple[Served, UpstreamState]) -> None:
    app, state = starlette_app
    httpx.post(f"{app.url}/control", json={"status": 500, "times": 1})
    body = {"model": "sim-large", "messages": [{"role": "user", "content": QUESTION}]}

    response = httpx.post(f"{app.url}/v1/chat/completions", json=body, timeout=30)

    assert response.status_code == 500
    assert response.json()["error"]["message"] == "simulated failure 500"
    assert response.headers["x-semcache"] == "miss"
    headers, _ = app.ask(QUESTION)
    assert headers["x-semcache"] == "miss"  # nothing was stored from the failure
    assert len(state.received) == 2


def test_cache_object_is_stripped_and_no_store_honoured(starlette_app: tuple[Served, UpstreamState]) -> None:
    app, state = starlette_app
    headers, _ = app.ask(QUESTION, extra_body={"cache": {"no_store": True}})
    assert headers["x-semcache"] == "miss"
    assert "cache" not in state.received[0]
    assert state.received[0]["messages"][0]["content"] == QUESTION

    headers, _ = app.ask(QUESTION)

    assert headers["x-semcache"] == "miss"
    assert len(state.received) == 2
    wait_until_stored(app.cache, 1)
    headers, _ = app.ask(QUESTION, extra_headers={"Cache-Control": "no-cache"})
    assert headers["x-semcache"] == "miss"  # no-cache skips the lookup
    assert len(state.received) == 3


def test_different_api_key_never_sees_another_tenants_answer(starlette_app: tuple[Served, UpstreamState]) -> None:
    app, state = starlette_app
    app.ask(QUESTION)
    wait_until_stored(app.cache, 1)

    headers, _ = app.ask(QUESTION, api_key="sk-tenant-b")

    assert headers["x-semcache"] == "miss"
    assert len(state.received) == 2


def test_not_cacheable_request_bypasses_to_the_app(starlette_app: tuple[Served, UpstreamState]) -> None:
    app, state = starlette_app
    headers, _ = app.ask(QUESTION, n=2)
    assert headers["x-semcache"] == "bypass"
    assert headers["x-semcache-reason"] == "n>1"
    assert len(state.received) == 1


def test_other_routes_and_methods_pass_through_untouched(starlette_app: tuple[Served, UpstreamState]) -> None:
    app, _ = starlette_app
    with httpx.Client(base_url=app.url, timeout=30) as http:
        models = http.get("/v1/models")
        echoed = http.post("/v1/files?purpose=x", content=b"raw bytes", headers={"authorization": "Bearer sk-x"})
        wrong_method = http.get("/v1/chat/completions")

    assert models.status_code == 200
    assert models.json()["data"][0]["id"] == "sim-large"
    assert "x-semcache" not in models.headers
    assert echoed.json() == {
        "method": "POST",
        "path": "/v1/files",
        "query": "purpose=x",
        "body": "raw bytes",
        "authorization": "Bearer sk-x",
    }
    assert "x-semcache" not in echoed.headers
    assert wrong_method.json()["method"] == "GET"  # the app's own answer (its catch-all echo)
    assert "x-semcache" not in wrong_method.headers
    assert stored(app.cache) == 0


def test_bad_cache_directive_is_answered_here_with_400(starlette_app: tuple[Served, UpstreamState]) -> None:
    app, state = starlette_app
    with pytest.raises(openai.BadRequestError) as caught:
        app.ask(QUESTION, extra_headers={"x-semcache-threshold": "0.5"})
    assert caught.value.code == "threshold_too_loose"
    with pytest.raises(openai.BadRequestError) as caught:
        app.ask(QUESTION, extra_body={"cache": {"bogus": True}})
    assert caught.value.param == "cache"
    assert state.received == []  # the app never saw either


def test_custom_path_prefix(cache: SemanticCache) -> None:
    state = UpstreamState()

    async def mounted(scope: Scope, receive: Receive, send: Send) -> None:
        await create_upstream_app(state)({**scope, "path": scope["path"].removeprefix("/llm")}, receive, send)

    app = SemanticCacheMiddleware(mounted, cache=cache, path_prefix="/llm/v1/")
    with served(app, cache) as running, openai.OpenAI(base_url=f"{running.url}/llm/v1", api_key="sk-a") as client:
        create = client.chat.completions.with_raw_response.create
        first = create(model="sim-large", messages=[{"role": "user", "content": QUESTION}])
        wait_until_stored(cache, 1)
        second = create(model="sim-large", messages=[{"role": "user", "content": PARAPHRASE}])

    assert first.headers["x-semcache"] == "miss"
    assert second.headers["x-semcache"] == "hit"
    assert len(state.received) == 1


# -- a FastAPI app that answers itself -------------------------------------------------------------


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[dict[str, Any]]
    stream: bool = False


def _completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": len(text.split()), "total_tokens": 5 + len(text.split())},
    }


async def _sse(model: str, text: str) -> AsyncIterator[bytes]:
    header = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": 0, "model": model}
    deltas: list[tuple[dict[str, Any], str | None]] = [({"role": "assistant", "content": ""}, None)]
    deltas += [({"content": f"{word} "}, None) for word in text.split()]
    deltas.append(({}, "stop"))
    for delta, finish in deltas:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        yield f"data: {json.dumps({**header, 'choices': [choice]})}\n\n".encode()
        await asyncio.sleep(0)
    yield b"data: [DONE]\n\n"


def create_fastapi_app(calls: list[dict[str, Any]]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.prefix = "FastAPI answer"  # the app's own lifespan still runs under the middleware
        yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody, request: Request) -> Any:
        calls.append(body.model_dump())
        question = str(body.messages[-1]["content"])
        if "fail" in question:
            error = {"message": "the model is down", "type": "server_error", "param": None, "code": None}
            return JSONResponse({"error": error}, status_code=500)
        text = f"{request.app.state.prefix} to: {question}"
        if body.stream:
            return StreamingResponse(_sse(body.model, text), media_type="text/event-stream")
        return _completion(body.model, text)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


@pytest.fixture
def fastapi_app(cache: SemanticCache) -> Iterator[tuple[Served, list[dict[str, Any]]]]:
    calls: list[dict[str, Any]] = []
    app = create_fastapi_app(calls)
    app.add_middleware(SemanticCacheMiddleware, cache=cache)
    with served(app, cache) as running:
        yield running, calls


def test_fastapi_miss_then_hit_never_calls_the_endpoint(fastapi_app: tuple[Served, list[dict[str, Any]]]) -> None:
    app, calls = fastapi_app
    headers, first = app.ask(QUESTION)
    assert headers["x-semcache"] == "miss"
    assert first == f"FastAPI answer to: {QUESTION}"
    wait_until_stored(app.cache, 1)

    headers, second = app.ask(PARAPHRASE)

    assert headers["x-semcache"] == "hit"
    assert second == first
    assert len(calls) == 1


def test_fastapi_streaming_endpoint(fastapi_app: tuple[Served, list[dict[str, Any]]]) -> None:
    app, calls = fastapi_app
    headers, first, _ = app.ask_streaming(QUESTION)
    assert headers["x-semcache"] == "miss"
    assert first.strip() == f"FastAPI answer to: {QUESTION}"
    wait_until_stored(app.cache, 1)

    headers, second, chunks = app.ask_streaming(PARAPHRASE)

    assert headers["x-semcache"] == "hit"
    assert second == first
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len(calls) == 1


def test_fastapi_error_is_not_stored_and_invalid_body_is_the_apps_to_answer(
    fastapi_app: tuple[Served, list[dict[str, Any]]],
) -> None:
    app, calls = fastapi_app
    with httpx.Client(base_url=app.url, timeout=30) as http:
        failing = {"model": "sim-large", "messages": [{"role": "user", "content": "please fail now"}]}
        first = http.post("/v1/chat/completions", json=failing)
        second = http.post("/v1/chat/completions", json=failing)
        invalid = http.post("/v1/chat/completions", json={"model": "sim-large"})
        not_json = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        health = http.get("/health")

    assert first.status_code == second.status_code == 500
    assert second.headers["x-semcache"] == "miss"
    assert len(calls) == 2  # the failure was not stored
    assert stored(app.cache) == 0
    # Invalid requests are the app's own to answer: FastAPI's 422, not a 400 of ours.
    assert invalid.status_code == 422
    assert invalid.headers["x-semcache"] == "bypass"
    assert invalid.headers["x-semcache-reason"] == "invalid-request"
    assert not_json.status_code == 422
    assert health.json() == {"status": "ok"}
    assert "x-semcache" not in health.headers


def test_fastapi_with_config_builds_its_own_cache(config: GatewayConfig) -> None:
    """`config=` alone: the middleware builds the cache (the packaged model) and closes it at shutdown."""
    calls: list[dict[str, Any]] = []
    app = create_fastapi_app(calls)
    middleware = SemanticCacheMiddleware(app, config=config)
    with serve(middleware) as running:
        served_app = Served(url=running.url, cache=middleware.cache)
        headers, first = served_app.ask(QUESTION)
        wait_until_stored(middleware.cache, 1)
        headers, second = served_app.ask(PARAPHRASE)
        assert headers["x-semcache"] == "hit"
        assert second == first
        assert len(calls) == 1
    with pytest.raises(RuntimeError, match="not open"):
        middleware.cache.engine  # noqa: B018 - closed with the lifespan


# -- lifespan edge cases ------------------------------------------------------------------------------


def test_app_without_lifespan_support_still_gets_the_cache_opened(cache: SemanticCache) -> None:
    """A bare ASGI app that refuses the lifespan scope: the middleware runs the lifespan itself."""
    inner = create_upstream_app(UpstreamState())

    async def http_only(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http", "this app does not speak lifespan"
        await inner(scope, receive, send)

    with served(SemanticCacheMiddleware(http_only, cache=cache), cache) as running:
        cache.engine  # noqa: B018 - open at startup, before any request
        headers, _ = running.ask(QUESTION)
        wait_until_stored(cache, 1)
        headers, _ = running.ask(PARAPHRASE)
    assert headers["x-semcache"] == "hit"
    with pytest.raises(RuntimeError, match="not open"):
        cache.engine  # noqa: B018 - closed at shutdown


def test_server_without_lifespan_opens_the_cache_on_first_request(cache: SemanticCache) -> None:
    state = UpstreamState()
    middleware = SemanticCacheMiddleware(create_upstream_app(state), cache=cache)

    async def scenario() -> list[str]:
        outcomes = []
        transport = httpx.ASGITransport(app=middleware)  # runs no lifespan
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            for prompt in (QUESTION, PARAPHRASE):
                body = {"model": "sim-large", "messages": [{"role": "user", "content": prompt}]}
                response = await client.post("/v1/chat/completions", json=body)
                outcomes.append(response.headers["x-semcache"])
                await until_stored(cache, 1)
        await middleware.aclose()
        return outcomes

    assert asyncio.run(scenario()) == ["miss", "hit"]
    assert len(state.received) == 1


def test_a_cache_opened_by_its_owner_stays_open(cache: SemanticCache) -> None:
    state = UpstreamState()

    async def scenario() -> str:
        async with cache:
            middleware = SemanticCacheMiddleware(create_upstream_app(state), cache=cache)
            transport = httpx.ASGITransport(app=middleware)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                body = {"model": "sim-large", "messages": [{"role": "user", "content": QUESTION}], "stream": True}
                response = await client.post("/v1/chat/completions", json=body)
            await middleware.aclose()
            cache.engine  # noqa: B018 - still open: not the middleware's to close
            await until_stored(cache, 1)
            events = list(decode_sse(response.content))
            return str(events[-1])

    assert asyncio.run(scenario()) == "[DONE]"


def test_exactly_one_of_cache_or_config(config: GatewayConfig, cache: SemanticCache) -> None:
    app = create_upstream_app()
    with pytest.raises(TypeError, match="exactly one"):
        SemanticCacheMiddleware(app)
    with pytest.raises(TypeError, match="exactly one"):
        SemanticCacheMiddleware(app, cache=cache, config=config)
