"""The decision family through the gateway: near misses, the threshold in force, the rules that run
once (even over a prompt long enough that they run on a worker thread)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.config import GatewayConfig
from tests.conftest import Gateway, GatewayFactory

POLICY = {
    "categories": [
        {"name": "realtime", "cacheable": False, "keywords": ["stock price"]},
        {
            "name": "python",
            "keywords": ["python"],
            "similarity_threshold": 0.99,
            "near_miss_floor": 0.6,
            "ttl_s": 1000,
        },
        {"name": "default", "similarity_threshold": 0.95},
    ]
}


@pytest.fixture
def gateway(start_gateway: GatewayFactory, gateway_config: GatewayConfig, tmp_path: Path) -> Iterator[Gateway]:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    with start_gateway(config=replace(gateway_config, policy=str(path))) as started:
        yield started


def ask(gateway: Gateway, prompt: str) -> httpx.Response:
    body = {"model": "sim-large", "messages": [{"role": "user", "content": prompt}]}
    with gateway.http() as http:
        response = http.post("/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-a"})
    assert response.status_code == 200, response.text
    return response


def test_a_similar_prompt_under_the_threshold_is_a_near_miss_answered_by_the_upstream(gateway: Gateway) -> None:
    first = ask(gateway, "How do I reverse a list in Python?")
    gateway.wait_until_stored(1)

    near = ask(gateway, "python: reverse a list")
    far = ask(gateway, "python: what is a metaclass and when would I write one myself?")

    assert first.headers["x-semcache"] == "miss"
    assert near.headers["x-semcache"] == "near-miss"
    similarity = float(near.headers["x-semcache-similarity"])
    assert 0.6 <= similarity < 0.99
    assert near.headers["x-semcache-threshold"] == "0.9900"
    assert "reverse a list" in near.json()["choices"][0]["message"]["content"]  # the upstream's own answer
    assert far.headers["x-semcache"] == "miss"  # below the band's floor
    assert float(far.headers["x-semcache-similarity"]) < 0.6
    gateway.wait_until_stored(3)  # near misses are stored like misses


def test_every_decided_response_says_the_threshold_in_force(gateway: Gateway) -> None:
    ask(gateway, "How do I reverse a list in Python?")
    gateway.wait_until_stored(1)

    exact = ask(gateway, "How do I reverse a list in Python?")
    stricter = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "sim-large", "messages": [{"role": "user", "content": "python: sort a dict by value"}]},
        headers={"authorization": "Bearer sk-a", "x-semcache-threshold": "0.995"},
    )

    assert exact.headers["x-semcache"] == "exact"
    assert "x-semcache-threshold" not in exact.headers  # no similarity was judged
    assert stricter.headers["x-semcache-threshold"] == "0.9950"


def test_a_keyword_deep_in_a_long_prompt_still_bypasses_the_cache(gateway: Gateway) -> None:
    # Over the inline limit the policy's regexes run on a worker thread; the decision is the same.
    prompt = "Please summarise the following notes. " + "lorem ipsum dolor sit amet " * 200 + "and the stock price?"
    assert len(prompt) > 4096

    response = ask(gateway, prompt)

    assert response.headers["x-semcache"] == "bypass"
    assert response.headers["x-semcache-reason"] == "category-not-cacheable"
    assert response.headers["x-semcache-category"] == "realtime"
