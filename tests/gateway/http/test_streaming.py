"""Streams, cache control, the legacy and passthrough endpoints and single-flight, end to end with
the real `openai` SDK against the gateway and a simulated upstream that really streams."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Any

import httpx
import openai
import pytest

from gateway.config import GatewayConfig, PassthroughRoute
from gateway.wire.streams import decode_sse
from tests.conftest import Gateway, GatewayFactory, Upstream

QUESTION = "How do I reverse a list in Python?"
PARAPHRASE = "python: reverse a list"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search_docs",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]


def stream_chat(gateway: Gateway, prompt: str, **params: Any) -> tuple[str, dict[str, str], list[Any]]:
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="sim-large", messages=[{"role": "user", "content": prompt}], stream=True, **params
    )
    chunks = list(raw.parse())
    return raw.headers["x-semcache"], dict(raw.headers), chunks


def text_of(chunks: list[Any]) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def plain_chat(gateway: Gateway, prompt: str, headers: dict[str, str] | None = None, **params: Any) -> Any:
    return gateway.client().chat.completions.with_raw_response.create(
        model="sim-large", messages=[{"role": "user", "content": prompt}], extra_headers=headers, **params
    )


def test_streaming_miss_then_streaming_hit_give_the_same_text(gateway: Gateway, upstream: Upstream) -> None:
    outcome, _, first = stream_chat(gateway, QUESTION)
    assert outcome == "miss"
    assert first[-1].choices[0].finish_reason == "stop"
    gateway.wait_until_stored(1)

    outcome, headers, second = stream_chat(gateway, PARAPHRASE)

    assert outcome == "hit"
    assert headers["content-type"].startswith("text/event-stream")
    assert text_of(second) == text_of(first)
    assert second[0].choices[0].delta.role == "assistant"
    assert second[-1].choices[0].finish_reason == "stop"
    assert len(second) > 3  # replayed as a stream of pieces, not one blob
    assert len(upstream.state.received) == 1


def test_usage_chunk_only_when_asked(gateway: Gateway) -> None:
    _, _, plain = stream_chat(gateway, QUESTION)
    assert all(chunk.usage is None for chunk in plain)
    gateway.wait_until_stored(1)

    _, _, with_usage = stream_chat(gateway, QUESTION, stream_options={"include_usage": True})
    _, _, without = stream_chat(gateway, QUESTION)

    assert with_usage[-1].choices == []
    assert with_usage[-1].usage is not None
    assert with_usage[-1].usage.total_tokens > 0
    assert all(chunk.usage is None for chunk in without)


def test_non_stream_answer_replays_as_stream_and_back(gateway: Gateway) -> None:
    stored = plain_chat(gateway, QUESTION).parse()
    gateway.wait_until_stored(1)
    outcome, _, replayed = stream_chat(gateway, PARAPHRASE, stream_options={"include_usage": True})
    assert outcome == "hit"
    assert text_of(replayed) == stored.choices[0].message.content
    assert replayed[-1].usage is not None
    assert replayed[-1].usage.total_tokens == stored.usage.total_tokens

    other = "What is the capital of Australia?"
    _, _, streamed = stream_chat(gateway, other, stream_options={"include_usage": True})
    gateway.wait_until_stored(2)
    raw = plain_chat(gateway, other)
    assert raw.headers["x-semcache"] == "exact"
    completion = raw.parse()
    assert completion.choices[0].message.content == text_of(streamed)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens == streamed[-1].usage.total_tokens


def tool_calls_of_stream(chunks: list[Any]) -> list[dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = delta.id or call["id"]
            if delta.function is not None:
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
    return [calls[i] for i in sorted(calls)]


def test_tool_calls_survive_both_ways(gateway: Gateway) -> None:
    stored = plain_chat(gateway, QUESTION, tools=TOOLS).parse()
    gateway.wait_until_stored(1)
    outcome, _, replayed = stream_chat(gateway, QUESTION, tools=TOOLS)
    assert outcome == "exact"
    expected = stored.choices[0].message.tool_calls
    assert expected
    assert tool_calls_of_stream(replayed) == [
        {"id": call.id, "name": call.function.name, "arguments": call.function.arguments} for call in expected
    ]
    assert replayed[-1].choices[0].finish_reason == "tool_calls"

    other = "Find the docs for asyncio.timeout"
    _, _, streamed = stream_chat(gateway, other, tools=TOOLS)
    gateway.wait_until_stored(2)
    completion = plain_chat(gateway, other, tools=TOOLS).parse()
    calls = completion.choices[0].message.tool_calls
    assert [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in calls] == (
        tool_calls_of_stream(streamed)
    )
    assert json.loads(calls[0].function.arguments) == {"query": other}
    assert completion.choices[0].finish_reason == "tool_calls"


def test_stream_cut_off_by_the_upstream_is_not_stored(gateway: Gateway, upstream: Upstream) -> None:
    upstream.set_faults(truncate_stream=True, times=1)
    with pytest.raises(openai.APIError):
        stream_chat(gateway, QUESTION)

    outcome, _, chunks = stream_chat(gateway, QUESTION)

    assert outcome == "miss"
    assert chunks[-1].choices[0].finish_reason == "stop"
    gateway.wait_until_stored(1)
    assert gateway.metric("semcache_stored_total") == 1
    assert len(upstream.state.received) == 2


def test_a_client_hanging_up_mid_stream_stops_the_upstream_and_leaves_nothing_stored(
    gateway: Gateway, upstream: Upstream
) -> None:
    upstream.set_faults(chunk_delay_s=0.05, times=1)
    body = {"model": "sim-large", "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    with (
        httpx.Client(base_url=gateway.url, timeout=30) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.headers["x-semcache"] == "miss"
        next(response.iter_bytes())  # the first event, then hang up
    # The gateway hangs up on the upstream in turn: its stream ends unfinished (a bounded poll for
    # that event, not a fixed sleep), so there is no complete answer to store.
    deadline = time.monotonic() + 30
    while upstream.state.streams_abandoned + upstream.state.streams_finished == 0:
        assert time.monotonic() < deadline, "the upstream's stream never ended"
        time.sleep(0.01)
    assert (upstream.state.streams_abandoned, upstream.state.streams_finished) == (1, 0)

    assert gateway.metric("semcache_stored_total") == 0
    assert plain_chat(gateway, QUESTION).headers["x-semcache"] == "miss"


def test_cache_control_no_cache_skips_lookup_but_stores(gateway: Gateway, upstream: Upstream) -> None:
    plain_chat(gateway, QUESTION)
    gateway.wait_until_stored(1)

    raw = plain_chat(gateway, QUESTION, headers={"Cache-Control": "no-cache"})

    assert raw.headers["x-semcache"] == "miss"
    assert len(upstream.state.received) == 2
    gateway.wait_until_stored(2)  # the fresh answer replaced the old one


def test_cache_control_no_store_is_not_stored(gateway: Gateway, upstream: Upstream) -> None:
    plain_chat(gateway, QUESTION, headers={"Cache-Control": "no-store"})
    assert plain_chat(gateway, QUESTION).headers["x-semcache"] == "miss"
    gateway.wait_until_stored(1)
    assert plain_chat(gateway, QUESTION).headers["x-semcache"] == "exact"


def test_cache_control_max_age(gateway: Gateway, clock: Any) -> None:
    plain_chat(gateway, QUESTION)
    gateway.wait_until_stored(1)
    clock.advance(120)

    assert plain_chat(gateway, PARAPHRASE, headers={"Cache-Control": "max-age=300"}).headers["x-semcache"] == "hit"
    assert plain_chat(gateway, QUESTION, headers={"Cache-Control": "max-age=60"}).headers["x-semcache"] == "miss"


def test_stricter_per_request_threshold_and_looser_one_refused(gateway: Gateway, upstream: Upstream) -> None:
    plain_chat(gateway, QUESTION)
    gateway.wait_until_stored(1)

    strict = plain_chat(gateway, PARAPHRASE, headers={"x-semcache-threshold": "0.999"})
    assert strict.headers["x-semcache"] == "miss"

    with pytest.raises(openai.BadRequestError) as refused:
        plain_chat(gateway, PARAPHRASE, headers={"x-semcache-threshold": "0.5"})
    assert refused.value.status_code == 400
    assert refused.value.body["param"] == "x-semcache-threshold"
    assert len(upstream.state.received) == 2


def test_cache_object_in_body_works_like_headers_and_is_stripped(gateway: Gateway, upstream: Upstream) -> None:
    plain_chat(gateway, QUESTION)
    gateway.wait_until_stored(1)

    raw = plain_chat(gateway, QUESTION, extra_body={"cache": {"no_cache": True, "no_store": True}})

    assert raw.headers["x-semcache"] == "miss"
    assert "cache" not in upstream.state.received[-1]
    with pytest.raises(openai.BadRequestError):
        plain_chat(gateway, QUESTION, extra_body={"cache": {"threshold": 0.1}})
    with pytest.raises(openai.BadRequestError):
        plain_chat(gateway, QUESTION, extra_body={"cache": {"ttl_s": 5}})  # unknown: ours is LiteLLM's `ttl`


def test_legacy_completions_are_cached_streamed_and_replayed(gateway: Gateway, upstream: Upstream) -> None:
    client = gateway.client()
    first = client.completions.with_raw_response.create(model="sim-large", prompt=QUESTION, max_tokens=50)
    assert first.headers["x-semcache"] == "miss"
    text = first.parse().choices[0].text
    gateway.wait_until_stored(1)

    again = client.completions.with_raw_response.create(model="sim-large", prompt=PARAPHRASE, max_tokens=50)
    assert again.headers["x-semcache"] == "hit"
    assert again.parse().choices[0].text == text

    streamed = client.completions.create(model="sim-large", prompt=PARAPHRASE, max_tokens=50, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == text
    # A chat request for the same words is another endpoint, another scope.
    assert plain_chat(gateway, QUESTION, max_tokens=50).headers["x-semcache"] == "miss"
    assert len(upstream.state.received) == 2


def test_embeddings_and_allowed_routes_pass_through_unchanged(
    start_gateway: GatewayFactory, gateway_config: GatewayConfig
) -> None:
    allowed = (PassthroughRoute(method="PUT", path="/v1/files/*"),)  # beyond embeddings, only if configured
    with start_gateway(upstream=replace(gateway_config.upstream, passthrough=allowed)) as gateway:
        raw = gateway.client(api_key="sk-caller").embeddings.with_raw_response.create(
            model="sim-embed", input=["a", "bb"]
        )
        with gateway.http() as http:
            echoed = http.put(
                "/v1/files/file-1?purpose=test", content=b"raw bytes", headers={"authorization": "Bearer sk-caller"}
            )
    assert raw.headers["x-semcache"] == "bypass"
    embeddings = raw.parse()
    assert [item.embedding for item in embeddings.data] == [[0.01, 0.0, 1.0], [0.02, 1.0, 1.0]]
    assert echoed.status_code == 200
    assert echoed.headers["x-simulated-upstream"] == "echo"
    assert echoed.json() == {
        "method": "PUT",
        "path": "/v1/files/file-1",
        "query": "purpose=test",
        "body": "raw bytes",
        "authorization": "Bearer sk-caller",
    }


def test_concurrent_identical_misses_go_upstream_once(gateway: Gateway, upstream: Upstream) -> None:
    upstream.set_faults(latency_ms=300)

    async def burst() -> list[tuple[str, str]]:
        client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="sk-test-tenant-a", max_retries=0)
        async with client:

            async def one() -> tuple[str, str]:
                raw = await client.chat.completions.with_raw_response.create(
                    model="sim-large", messages=[{"role": "user", "content": QUESTION}]
                )
                return raw.headers["x-semcache"], raw.parse().choices[0].message.content or ""

            return await asyncio.gather(*(one() for _ in range(20)))

    results = asyncio.run(burst())

    assert len(upstream.state.received) == 1
    assert {text for _, text in results} == {results[0][1]}
    outcomes = sorted(outcome for outcome, _ in results)
    assert outcomes.count("miss") == 1
    # The 19 that waited got the leader's answer, labelled coalesced (it was never stored), unless
    # the leader's answer was stored before they looked (then they are exact hits).
    assert set(outcomes) <= {"miss", "coalesced", "exact"}
    assert outcomes.count("coalesced") >= 1


def test_sse_replay_is_well_formed(gateway: Gateway) -> None:
    plain_chat(gateway, QUESTION)
    gateway.wait_until_stored(1)
    body = {"model": "sim-large", "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    with httpx.Client(base_url=gateway.url) as http:
        raw = http.post("/v1/chat/completions", json=body).content
    events = list(decode_sse(raw))
    assert events[-1] == "[DONE]"
    assert raw.endswith(b"data: [DONE]\n\n")
    chunks = [event for event in events[:-1] if isinstance(event, dict)]
    assert len(chunks) == len(events) - 1
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks].count("stop") == 1
