"""What the upstream says reaches the client as it said it, through the real gateway over HTTP:
its error status, body and retry headers, its request id and rate limits on a miss (never on a
hit), one log line per failure; and a bug of ours is a logged OpenAI-shaped 500, not the upstream's."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.config import GatewayConfig
from tests.conftest import Gateway, Upstream
from tests.doubles import BuggyUpstream, CountingEmbedder
from tests.servers import serve

QUESTION = "How do I reverse a list in Python?"
PARAPHRASE = "python: reverse a list"
RATE_LIMIT_HEADERS = {
    "retry-after": "2",
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "2s",
    "x-request-id": "req_rate_limited",
}
CONTEXT_MESSAGE = "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens."
UPSTREAM_HEADERS = (
    "x-request-id",
    "openai-processing-ms",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
)


def chat(gateway: Gateway, prompt: str, **params: Any) -> httpx.Response:
    body = {"model": "sim-large", "messages": [{"role": "user", "content": prompt}], **params}
    with gateway.http() as http:
        return http.post("/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-test"})


def upstream_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "semcache.upstream" and r.levelno == logging.WARNING]


def test_a_429_keeps_its_status_body_and_retry_headers(
    gateway: Gateway, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.set_faults(status=429, times=1, headers=RATE_LIMIT_HEADERS)
    caplog.set_level(logging.WARNING, logger="semcache.upstream")

    response = chat(gateway, QUESTION)

    assert response.status_code == 429
    assert response.json() == {
        "error": {"message": "simulated failure 429", "type": "rate_limit_error", "param": None, "code": None}
    }
    for name, value in RATE_LIMIT_HEADERS.items():
        assert response.headers[name] == value
    assert response.headers["x-semcache-model"] == "default"
    assert response.headers["x-semcache-route-reason"] == "only-deployment"
    (warning,) = upstream_warnings(caplog)
    assert warning.startswith("upstream default failed: status 429 (rate_limit_error) after ")
    assert QUESTION not in warning


def test_the_openai_sdk_sees_the_429_and_its_retry_after(gateway: Gateway, upstream: Upstream) -> None:
    upstream.set_faults(status=429, times=1, headers=RATE_LIMIT_HEADERS)

    with pytest.raises(openai.RateLimitError) as raised:
        gateway.client().chat.completions.create(model="sim-large", messages=[{"role": "user", "content": QUESTION}])

    assert raised.value.status_code == 429
    assert raised.value.response.headers["retry-after"] == "2"
    assert raised.value.type == "rate_limit_error"


def test_context_length_exceeded_keeps_the_upstreams_code_param_and_message(
    gateway: Gateway, upstream: Upstream
) -> None:
    upstream.set_faults(
        status=400,
        times=1,
        error_code="context_length_exceeded",
        error_param="messages",
        error_message=CONTEXT_MESSAGE,
    )

    with pytest.raises(openai.BadRequestError) as raised:
        gateway.client().chat.completions.create(model="sim-large", messages=[{"role": "user", "content": QUESTION}])

    assert raised.value.status_code == 400
    assert raised.value.body == {
        "message": CONTEXT_MESSAGE,
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
    assert raised.value.code == "context_length_exceeded"


def test_a_streaming_request_refused_with_429_gets_the_status_and_headers(
    gateway: Gateway, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.set_faults(status=429, times=1, headers=RATE_LIMIT_HEADERS)
    caplog.set_level(logging.WARNING, logger="semcache.upstream")

    response = chat(gateway, QUESTION, stream=True)

    assert response.status_code == 429
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert response.headers["retry-after"] == "2"
    assert response.headers["x-request-id"] == "req_rate_limited"
    assert len(upstream_warnings(caplog)) == 1


def test_a_500_is_logged_once_and_keeps_its_own_type(
    gateway: Gateway, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.set_faults(status=500, times=1)
    caplog.set_level(logging.WARNING, logger="semcache.upstream")

    response = chat(gateway, QUESTION)

    assert response.status_code == 500
    assert response.json()["error"] == {
        "message": "simulated failure 500",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    (warning,) = upstream_warnings(caplog)
    assert "status 500" in warning


def test_upstream_headers_come_with_a_miss_and_never_with_a_hit(gateway: Gateway, upstream: Upstream) -> None:
    miss = chat(gateway, QUESTION)
    assert miss.headers["x-semcache"] == "miss"
    assert miss.headers["x-request-id"].startswith("req_")
    assert miss.headers["openai-processing-ms"] == "7"
    assert miss.headers["x-ratelimit-remaining-requests"] == "9999"
    assert miss.headers["x-semcache-model"] == "default"
    assert miss.headers["x-semcache-route-reason"] == "only-deployment"
    gateway.wait_until_stored(1)

    for prompt in (QUESTION, PARAPHRASE):  # an exact and a semantic hit
        hit = chat(gateway, prompt)
        assert hit.headers["x-semcache"] in ("exact", "hit")
        assert not set(UPSTREAM_HEADERS) & set(hit.headers)
        assert "x-semcache-route-reason" not in hit.headers
        assert hit.json()["choices"] == miss.json()["choices"]


def test_upstream_headers_come_with_a_streaming_miss_and_never_with_its_replay(
    gateway: Gateway, upstream: Upstream
) -> None:
    miss = chat(gateway, QUESTION, stream=True)
    assert miss.headers["x-semcache"] == "miss"
    assert miss.headers["content-type"].startswith("text/event-stream")
    assert miss.headers["x-request-id"].startswith("req_")
    assert miss.headers["openai-processing-ms"] == "7"
    assert miss.headers["x-semcache-model"] == "default"
    gateway.wait_until_stored(1)

    hit = chat(gateway, PARAPHRASE, stream=True)

    assert hit.headers["x-semcache"] == "hit"
    assert not set(UPSTREAM_HEADERS) & set(hit.headers)


def test_a_bug_in_the_backend_is_a_logged_openai_shaped_500(
    gateway_config: GatewayConfig, embedder: CountingEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="semcache.app")
    app = create_app(gateway_config, embedder=embedder, upstream=BuggyUpstream())
    with serve(app) as running:
        for stream in (False, True):
            body = {"model": "sim-large", "messages": [{"role": "user", "content": QUESTION}], "stream": stream}
            # A connection each: the server closes one after an unhandled error.
            response = httpx.post(f"{running.url}/v1/chat/completions", json=body, timeout=30)

            assert response.status_code == 500  # never relabelled as the upstream's 502
            assert json.loads(response.content) == {
                "error": {"message": "internal gateway error", "type": "server_error", "param": None, "code": None}
            }
        assert httpx.get(f"{running.url}/healthz").status_code == 200  # the gateway is still serving
    logged = [r for r in caplog.records if r.name == "semcache.app" and r.levelno == logging.ERROR]
    assert len(logged) == 2
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in logged)
