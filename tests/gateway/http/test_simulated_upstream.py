"""The simulated upstream the demo, the benches and the tests stand a real LLM with: paraphrases of
one class are answered alike, and a capacity is a real limit."""

from __future__ import annotations

import asyncio

import httpx

from gateway.http.simulated_upstream import UpstreamState, create_upstream_app


def ask(client: httpx.AsyncClient, prompt: str) -> asyncio.Task[httpx.Response]:
    body = {"model": "sim-small", "messages": [{"role": "user", "content": prompt}]}
    return asyncio.ensure_future(client.post("/v1/chat/completions", json=body))


def test_prompts_of_one_class_get_one_answer_and_other_prompts_their_own() -> None:
    state = UpstreamState(classes={"how do i reset my card pin?": "pin", "change my pin please": "pin"})

    async def scenario() -> list[str]:
        transport = httpx.ASGITransport(app=create_upstream_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            answers = [await ask(client, prompt) for prompt in ("How do I reset my card PIN?", "change my  PIN please",
                                                                 "What is my balance?")]  # fmt: skip
        return [answer.json()["choices"][0]["message"]["content"] for answer in answers]

    reset, change, balance = asyncio.run(scenario())

    assert reset == change
    assert "class pin" in reset
    assert balance != reset and "What is my balance?" in balance


def test_beyond_its_capacity_it_answers_429_with_retry_after() -> None:
    state = UpstreamState(capacity=2, latency_ms=300)

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_upstream_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://sim", timeout=30) as client:
            return list(await asyncio.gather(*(ask(client, f"question {i}") for i in range(5))))

    responses = asyncio.run(scenario())

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 200, 429, 429, 429]
    refused = next(response for response in responses if response.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert state.in_flight == 0
