"""Routing by tier and load, end to end: two simulated models (small and large), each with a real
capacity (beyond it they answer 429, and their latency grows with the requests in flight), and the
gateway in front of them under uvicorn."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import CacheConfig, DeploymentConfig, GatewayConfig, RoutingConfig, StoreConfig, UpstreamConfig
from gateway.http.simulated_upstream import UpstreamState, create_upstream_app
from tests.conftest import Gateway, GatewayFactory, Upstream
from tests.servers import serve

POLICY = """
categories:
  - name: default
    similarity_threshold: 0.95
    ttl_s: 600
    tier: large
    bounds: {min_threshold: 0.8, max_ttl_s: 1200}
"""


@pytest.fixture
def small() -> Iterator[Upstream]:
    state = UpstreamState(capacity=8)
    with serve(create_upstream_app(state)) as running:
        yield Upstream(url=running.url, state=state)


@pytest.fixture
def large() -> Iterator[Upstream]:
    state = UpstreamState(capacity=2)
    with serve(create_upstream_app(state)) as running:
        yield Upstream(url=running.url, state=state)


def routed_config(tmp_path: Path, small: Upstream, large: Upstream, *, large_timeout_s: float = 60) -> GatewayConfig:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    return GatewayConfig(
        upstream=UpstreamConfig(api_base=f"{large.url}/v1", timeout_s=5),
        deployments=(
            DeploymentConfig(
                name="small-1", tier="small", model="openai/sim-small", api_base=f"{small.url}/v1", max_concurrency=8
            ),
            DeploymentConfig(
                name="large-1",
                tier="large",
                model="openai/sim-large",
                api_base=f"{large.url}/v1",
                max_concurrency=2,
                timeout_s=large_timeout_s,
            ),
        ),
        routes=("auto",),
        routing=RoutingConfig(high_watermark=0.8, cooldown_s=30, error_window_s=0.5),
        policy=str(policy),
        cache=CacheConfig(store=StoreConfig(path=str(tmp_path / "cache.db"))),
    )


@pytest.fixture
def routed(tmp_path: Path, small: Upstream, large: Upstream, start_gateway: GatewayFactory) -> Iterator[Gateway]:
    with start_gateway(config=routed_config(tmp_path, small, large)) as gateway:
        yield gateway


def ask(gateway: Gateway, prompt: str, *, model: str = "auto", **body: Any) -> httpx.Response:
    with gateway.http() as http:
        return http.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": prompt}], **body},
            headers={"authorization": "Bearer sk-test"},
        )


def until(condition: Callable[[], bool], *, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def in_background(gateway: Gateway, prompts: list[str]) -> tuple[list[threading.Thread], list[httpx.Response]]:
    responses: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda p=p: responses.append(ask(gateway, p))) for p in prompts]
    for thread in threads:
        thread.start()
    return threads, responses


def test_misses_go_to_the_preferred_tier_with_the_route_headers(routed: Gateway, large: Upstream) -> None:
    response = ask(routed, "What is the boiling point of water?")

    assert response.status_code == 200
    assert response.headers["x-semcache-model"] == "large-1"
    assert response.headers["x-semcache-route-reason"] == "preferred"
    assert response.headers["x-semcache-threshold"] == "0.9500"
    assert [body["model"] for body in large.state.received] == ["sim-large"]  # the deployment's model


def test_traffic_shifts_tier_under_overload_and_comes_back(routed: Gateway, small: Upstream, large: Upstream) -> None:
    large.set_faults(latency_ms=2000)
    threads, _ = in_background(routed, ["Large question one?", "Large question two?"])
    until(lambda: large.state.in_flight == 2)  # the large model is full

    offloaded = ask(routed, "Where does this one go?")

    assert offloaded.status_code == 200
    assert offloaded.headers["x-semcache-model"] == "small-1"
    assert offloaded.headers["x-semcache-route-reason"] in ("offload-overload", "fallback-unhealthy")
    # The large tier is at capacity: the category's threshold is at its bound.
    assert offloaded.headers["x-semcache-threshold"] == "0.8000"
    assert "sim-small" in [body["model"] for body in small.state.received]
    for thread in threads:
        thread.join()
    large.set_faults(latency_ms=0)

    back = ask(routed, "And now that the large model is free again?")
    assert back.headers["x-semcache-model"] == "large-1"
    assert back.headers["x-semcache-route-reason"] == "preferred"
    assert back.headers["x-semcache-threshold"] == "0.9500"
    metrics = httpx.get(f"{routed.url}/metrics").text
    assert 'semcache_route_decisions_total{deployment="small-1",reason=' in metrics
    assert 'semcache_deployment_load{deployment="large-1"} 0.0' in metrics
    assert 'semcache_similarity_threshold{category="default"} 0.95' in metrics


@pytest.mark.parametrize(("status", "reason"), [(429, "retry-after-429"), (503, "retry-after-5xx")])
def test_a_refused_or_failed_call_is_retried_once_on_another_deployment(
    routed: Gateway, small: Upstream, large: Upstream, status: int, reason: str
) -> None:
    large.set_faults(status=status, times=1)

    response = ask(routed, "Is this retried elsewhere?")

    assert response.status_code == 200
    assert response.headers["x-semcache-model"] == "small-1"
    assert response.headers["x-semcache-route-reason"] == reason
    assert len(large.state.received) == 1
    assert len(small.state.received) == 1
    # The deployment that refused cools down: the next miss goes to the other tier first.
    again = ask(routed, "Another question after the refusal?")
    assert again.headers["x-semcache-model"] == "small-1"


def test_when_every_deployment_fails_the_client_gets_the_last_error_after_one_retry(
    routed: Gateway, small: Upstream, large: Upstream
) -> None:
    large.set_faults(status=500)
    small.set_faults(status=500)

    response = ask(routed, "Does anything answer?")

    assert response.status_code == 500
    assert response.headers["x-semcache-route-reason"] == "retry-after-5xx"
    assert len(large.state.received) + len(small.state.received) == 2  # one retry, no more


def test_a_pinned_model_is_honoured_and_never_swapped(routed: Gateway, small: Upstream, large: Upstream) -> None:
    pinned = ask(routed, "Answer this with the small model", model="sim-small")  # the category prefers large
    assert pinned.headers["x-semcache-model"] == "small-1"
    assert pinned.headers["x-semcache-route-reason"] == "pinned"

    large.set_faults(status=429, headers={"retry-after": "2"}, times=1)
    refused = ask(routed, "Answer this with the large model", model="large-1")

    assert refused.status_code == 429  # the large model's own refusal, not a silent swap
    assert refused.headers["x-semcache-model"] == "large-1"
    assert refused.headers["x-semcache-route-reason"] == "pinned"
    assert refused.headers["retry-after"] == "2"
    assert len(small.state.received) == 1
    assert ask(routed, "x", model="gpt-unknown").status_code == 404


def test_past_capacity_everywhere_the_load_is_shed_with_retry_after(
    routed: Gateway, small: Upstream, large: Upstream
) -> None:
    small.set_faults(latency_ms=2000)
    large.set_faults(latency_ms=2000)
    threads, responses = in_background(routed, [f"Filling question {i}?" for i in range(10)])
    until(lambda: large.state.in_flight == 2 and small.state.in_flight == 8)

    shed = ask(routed, "One request too many?")

    assert shed.status_code == 429
    assert shed.headers["retry-after"] == "1"
    assert shed.headers["x-semcache-route-reason"] == "shed"
    assert shed.headers["x-semcache-threshold"] == "0.8000"  # the cache was asked under full pressure
    assert shed.json()["error"]["type"] == "rate_limit_error"
    for thread in threads:
        thread.join()
    assert all(response.status_code == 200 for response in responses)  # never more than capacity


def test_a_stream_refused_before_its_first_byte_is_retried(routed: Gateway, small: Upstream, large: Upstream) -> None:
    large.set_faults(status=429, times=1)

    with routed.http() as http, http.stream("POST", "/v1/chat/completions", json={
        "model": "auto", "stream": True, "messages": [{"role": "user", "content": "Stream me an answer"}]
    }) as response:  # fmt: skip
        text = response.read().decode()

    assert response.status_code == 200
    assert response.headers["x-semcache-model"] == "small-1"
    assert response.headers["x-semcache-route-reason"] == "retry-after-429"
    assert text.rstrip().endswith("data: [DONE]")


def test_a_stream_is_never_retried_after_its_first_byte(routed: Gateway, small: Upstream, large: Upstream) -> None:
    large.set_faults(truncate_stream=True, times=1)

    with routed.http() as http, http.stream("POST", "/v1/chat/completions", json={
        "model": "auto", "stream": True, "messages": [{"role": "user", "content": "Stream a long answer please"}]
    }) as response:  # fmt: skip
        text = response.read().decode()

    assert response.status_code == 200
    assert response.headers["x-semcache-model"] == "large-1"
    assert "[DONE]" not in text  # cut part-way: the client sees it, and nothing was sent elsewhere
    assert small.state.received == []


def test_a_call_that_times_out_is_retried_on_another_deployment(
    tmp_path: Path, small: Upstream, large: Upstream, start_gateway: GatewayFactory
) -> None:
    large.set_faults(stall_s=3, times=1)

    with start_gateway(config=routed_config(tmp_path, small, large, large_timeout_s=0.5)) as gateway:
        response = ask(gateway, "Does a slow model hold this up?")

    assert response.status_code == 200
    assert response.headers["x-semcache-model"] == "small-1"
    assert response.headers["x-semcache-route-reason"] == "retry-after-timeout"
