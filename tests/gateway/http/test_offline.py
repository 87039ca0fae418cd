"""The whole gateway reaches nothing but its upstream, and a miss never stalls it.

A model name litellm maps to a Hugging Face tokenizer ("llama-3-...") once made the first streaming
miss download that tokenizer from the hub, with retries, on the event loop: the gateway froze for
24 s. Here the real gateway (real embedder, real litellm backend) runs in a fresh interpreter with
every socket call beyond loopback recorded and refused, and answers streaming and non-streaming
misses for such models from the simulated upstream over HTTP while /healthz is polled throughout.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.network_guard import run_guarded

HUB_TOKENIZER_MODELS = ("meta-llama/Meta-Llama-3-8B-Instruct", "llama-3-8b")

# argv[1]: JSON list of model names.
SCRIPT = r"""
from tests.network_guard import install

guard = install()  # before anything else is imported

import json, sys, tempfile, threading

import httpx

from gateway.http.simulated_upstream import UpstreamState, create_upstream_app
from gateway.app import create_app
from gateway.config import CacheConfig, GatewayConfig, StoreConfig, UpstreamConfig
from tests.servers import serve


class HealthProbe(threading.Thread):
    # Polls /healthz; a poll unanswered within its client timeout (far below the 24 s stall this
    # guards against) is a failure.
    def __init__(self, url):
        super().__init__(daemon=True)
        self.url, self.answered, self.failures = url, 0, []
        self.done = threading.Event()

    def run(self):
        with httpx.Client(timeout=5) as http:
            while not self.done.is_set():
                try:
                    http.get(f"{self.url}/healthz").raise_for_status()
                    self.answered += 1
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.done.wait(0.02)


models = json.loads(sys.argv[1])
results = {}
with tempfile.TemporaryDirectory() as tmp, serve(create_upstream_app(UpstreamState())) as upstream:
    config = GatewayConfig(
        upstream=UpstreamConfig(api_base=f"{upstream.url}/v1", timeout_s=60),
        cache=CacheConfig(store=StoreConfig(path=f"{tmp}/cache.db")),
    )
    # Every answer takes a while, so the probe runs while each miss is in flight.
    httpx.post(f"{upstream.url}/control", json={"latency_ms": 300, "chunk_delay_s": 0.05}).raise_for_status()
    with serve(create_app(config)) as gateway, httpx.Client(base_url=gateway.url, timeout=120) as http:
        for model in models:
            for stream in (True, False):
                name = f"{'stream' if stream else 'complete'} {model}"
                body = {"model": model, "messages": [{"role": "user", "content": name}], "stream": stream}
                probe = HealthProbe(gateway.url)
                probe.start()
                response = http.post("/v1/chat/completions", json=body)
                probe.done.set()
                probe.join()
                results[name] = {
                    "status": response.status_code,
                    "x-semcache": response.headers.get("x-semcache"),
                    "text": response.text,
                    "probe_answered": probe.answered,
                    "probe_failures": probe.failures,
                }
print("RESULT " + json.dumps({"results": results, "non_loopback": guard.attempts, "loopback": guard.loopback}))
"""


@pytest.fixture(scope="module")
def report() -> Iterator[dict[str, Any]]:
    yield run_guarded(SCRIPT, json.dumps(HUB_TOKENIZER_MODELS), timeout_s=600)


def test_the_gateway_reaches_nothing_beyond_loopback(report: dict[str, Any]) -> None:
    assert report["non_loopback"] == []
    assert any(entry.startswith("connect 127.0.0.1:") for entry in report["loopback"])  # the guard was live


@pytest.mark.parametrize("model", HUB_TOKENIZER_MODELS)
def test_a_streaming_miss_for_a_hub_tokenizer_model_is_answered(report: dict[str, Any], model: str) -> None:
    result = report["results"][f"stream {model}"]

    assert (result["status"], result["x-semcache"]) == (200, "miss")
    events = [line.removeprefix("data: ") for line in result["text"].splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(
        choice["delta"].get("content") or "" for event in events[:-1] for choice in json.loads(event)["choices"]
    )
    assert text == f"Simulated answer from {model} (turns=1, t=None) to: stream {model}"


@pytest.mark.parametrize("model", HUB_TOKENIZER_MODELS)
def test_a_miss_for_a_hub_tokenizer_model_is_answered(report: dict[str, Any], model: str) -> None:
    result = report["results"][f"complete {model}"]

    assert (result["status"], result["x-semcache"]) == (200, "miss")
    content = json.loads(result["text"])["choices"][0]["message"]["content"]
    assert content == f"Simulated answer from {model} (turns=1, t=None) to: complete {model}"


@pytest.mark.parametrize("kind", ["stream", "complete"])
@pytest.mark.parametrize("model", HUB_TOKENIZER_MODELS)
def test_healthz_stays_responsive_during_the_miss(report: dict[str, Any], model: str, kind: str) -> None:
    result = report["results"][f"{kind} {model}"]

    assert result["probe_failures"] == []
    assert result["probe_answered"] > 0  # it was answered while the miss was in flight
