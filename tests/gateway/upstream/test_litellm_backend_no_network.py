"""The litellm upstream: it reaches nothing but the configured upstream, and what the upstream says
comes through as it said it.

litellm downloads a price list, sends telemetry and fetches hub tokenizers by default.
`import_litellm` switches all of them off; a fresh interpreter proves it, with every socket call
beyond loopback recorded and refused (tests/network_guard.py). The same run takes the upstream
through its failures (429 with retry headers, 400 context_length_exceeded, 500, a stall past the
timeout, a closed port) and through models litellm maps to hub tokenizers, so litellm's
process-wide state never mixes with the test process's event loops.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.errors import UpstreamError
from gateway.http.simulated_upstream import UpstreamState, create_upstream_app
from gateway.upstream import LiteLLMUpstream, Upstream, import_litellm, translate_error
from tests.network_guard import run_guarded
from tests.servers import free_port, serve

PROMPT = "How do I reverse a list in Python?"

# argv[1]: the simulated upstream's URL; argv[2]: JSON list of scenarios
# {name, faults, timeout_s, prompt, model?, stream?, api_base?}.
SCRIPT = r"""
from tests.network_guard import install

guard = install()  # before anything else is imported

import asyncio, json, logging, sys

from gateway.upstream import import_litellm

import_litellm()

import httpx

from gateway.errors import UpstreamError
from gateway.upstream import Deployment, LiteLLMUpstream
from gateway.wire import parse_chat_request

url, scenarios = sys.argv[1], json.loads(sys.argv[2])
warnings = []


class Recorder(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())


logging.getLogger("semcache.upstream").addHandler(Recorder(logging.WARNING))


async def run(upstream, scenario):
    deployment = Deployment(
        name="default",
        model=None,
        provider="openai",
        api_base=scenario.get("api_base", f"{url}/v1"),
        timeout_s=scenario["timeout_s"],
    )
    body = {"model": scenario.get("model", "sim-large"), "messages": [{"role": "user", "content": scenario["prompt"]}]}
    if scenario.get("stream"):
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    request = parse_chat_request(body)
    if not scenario.get("stream"):
        answer = await upstream.complete(request, deployment=deployment, api_key="sk-caller")
        return {"response": answer.body, "model": answer.model, "headers": dict(answer.headers)}
    stream = await upstream.stream(request, deployment=deployment, api_key="sk-caller")
    try:
        chunks = [chunk async for chunk in stream]
    finally:
        await stream.aclose()
    return {"chunks": chunks, "model": stream.model, "headers": dict(stream.headers)}


async def main():
    results = {}
    upstream = LiteLLMUpstream()
    async with httpx.AsyncClient() as control:
        for scenario in scenarios:
            (await control.post(f"{url}/control", json=scenario["faults"])).raise_for_status()
            before = len(warnings)
            try:
                results[scenario["name"]] = await run(upstream, scenario)
            except UpstreamError as exc:
                results[scenario["name"]] = {
                    "status": exc.status_code,
                    "type": exc.error_type,
                    "message": exc.message,
                    "body": exc.body(),
                    "headers": dict(exc.headers),
                }
            results[scenario["name"]]["warnings"] = warnings[before:]
    await upstream.aclose()
    return results


results = asyncio.run(main())
print("RESULT " + json.dumps({"results": results, "non_loopback": guard.attempts, "loopback": guard.loopback}))
"""


@dataclass(frozen=True, slots=True)
class Run:
    results: dict[str, dict[str, Any]]
    non_loopback: list[str]
    loopback: list[str]
    received: list[dict[str, Any]]


RATE_LIMIT_HEADERS = {
    "retry-after": "3",
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "3s",
    "x-request-id": "req_rate_limited",
    "set-cookie": "session=upstream",  # not one the gateway forwards
}
CONTEXT_MESSAGE = "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens."
# Names litellm maps to a Hugging Face tokenizer it would download from the hub to count tokens.
HUB_TOKENIZER_MODELS = ("meta-llama/Meta-Llama-3-8B-Instruct", "llama-3-8b")


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    closed_port = free_port()
    scenarios = [
        {"name": "ok", "faults": {}, "timeout_s": 10, "prompt": PROMPT},
        {
            "name": "429",
            "faults": {"status": 429, "times": 1, "headers": RATE_LIMIT_HEADERS},
            "timeout_s": 10,
            "prompt": "rate limited",
        },
        {
            "name": "context",
            "faults": {
                "status": 400,
                "times": 1,
                "error_code": "context_length_exceeded",
                "error_param": "messages",
                "error_message": CONTEXT_MESSAGE,
            },
            "timeout_s": 10,
            "prompt": "far too long",
        },
        {"name": "500", "faults": {"status": 500, "times": 1}, "timeout_s": 10, "prompt": "server error"},
        {"name": "stall", "faults": {"stall_s": 2, "times": 1}, "timeout_s": 0.3, "prompt": "stalled"},
        {
            "name": "closed",
            "faults": {},
            "timeout_s": 5,
            "prompt": "nobody listens",
            "api_base": f"http://127.0.0.1:{closed_port}/v1",
        },
        *(
            {"name": f"{kind} {model}", "faults": {}, "timeout_s": 10, "prompt": f"{kind} {model}", "model": model}
            | ({"stream": True} if kind == "stream" else {})
            for model in HUB_TOKENIZER_MODELS
            for kind in ("stream", "complete")
        ),
    ]
    state = UpstreamState()
    with serve(create_upstream_app(state)) as upstream:
        report = run_guarded(SCRIPT, upstream.url, json.dumps(scenarios), timeout_s=300)
    yield Run(
        results=report["results"],
        non_loopback=report["non_loopback"],
        loopback=report["loopback"],
        received=list(state.received),
    )


def test_litellm_reaches_nothing_beyond_loopback(run: Run) -> None:
    assert run.non_loopback == []
    # The recorder was live: it saw the real connections to the simulated upstream.
    assert any(entry.startswith("connect 127.0.0.1:") for entry in run.loopback)


def test_a_completion_through_litellm_succeeds(run: Run) -> None:
    result = run.results["ok"]
    response = result["response"]

    assert result["model"] == "default"  # the deployment that answered
    assert response["object"] == "chat.completion"
    assert response["model"] == "sim-large"
    (choice,) = response["choices"]
    assert choice["finish_reason"] == "stop"
    answer = f"Simulated answer from sim-large (turns=1, t=None) to: {PROMPT}"
    assert choice["message"] == {"role": "assistant", "content": answer}
    # The upstream's own token accounting (words, in the simulation) comes through unchanged.
    assert response["usage"] == {
        "prompt_tokens": len(PROMPT.split()),
        "completion_tokens": len(answer.split()),
        "total_tokens": len(PROMPT.split()) + len(answer.split()),
    }
    assert result["warnings"] == []


def test_an_answer_carries_the_upstreams_own_headers(run: Run) -> None:
    headers = run.results["ok"]["headers"]

    assert headers["x-request-id"].startswith("req_")
    assert headers["openai-processing-ms"] == "7"
    assert headers["x-ratelimit-remaining-requests"] == "9999"
    assert not {"date", "server", "content-type", "content-length"} & set(headers)


def test_the_upstream_receives_the_request_as_sent(run: Run) -> None:
    first = run.received[0]

    assert first["model"] == "sim-large"  # litellm's provider prefix is not forwarded
    assert first["messages"] == [{"role": "user", "content": PROMPT}]
    assert not first.get("stream")
    # Every scenario but the closed port reached the upstream.
    prompts = [body["messages"][0]["content"] for body in run.received]
    assert prompts[:5] == [PROMPT, "rate limited", "far too long", "server error", "stalled"]


def test_upstream_429_keeps_its_status_body_and_retry_headers(run: Run) -> None:
    result = run.results["429"]

    assert result["status"] == 429
    assert result["body"] == {
        "error": {"message": "simulated failure 429", "type": "rate_limit_error", "param": None, "code": None}
    }
    expected = {name: value for name, value in RATE_LIMIT_HEADERS.items() if name != "set-cookie"}
    assert result["headers"] == expected


def test_context_length_exceeded_keeps_the_upstreams_code_param_and_message(run: Run) -> None:
    result = run.results["context"]

    assert result["status"] == 400
    assert result["body"] == {
        "error": {
            "message": CONTEXT_MESSAGE,
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }


def test_upstream_500_stays_a_500_with_its_own_type(run: Run) -> None:
    result = run.results["500"]

    assert result["status"] == 500
    assert result["type"] == "server_error"
    assert result["message"] == "simulated failure 500"


def test_a_stall_past_the_timeout_is_a_504(run: Run) -> None:
    result = run.results["stall"]

    assert result["status"] == 504
    assert result["type"] == "timeout"


def test_an_unreachable_upstream_is_a_502(run: Run) -> None:
    result = run.results["closed"]

    assert result["status"] == 502
    assert result["type"] == "upstream_error"
    assert result["message"].startswith("upstream unreachable")


@pytest.mark.parametrize("name", ["429", "context", "500", "stall", "closed"])
def test_each_upstream_failure_is_logged_once_without_the_prompt(run: Run, name: str) -> None:
    (warning,) = run.results[name]["warnings"]

    assert warning.startswith(f"upstream default failed: status {run.results[name]['status']} ")
    assert warning.endswith(" ms")
    assert not any(prompt in warning for prompt in ("rate limited", "far too long", "server error", "stalled"))


@pytest.mark.parametrize("model", HUB_TOKENIZER_MODELS)
def test_a_model_with_a_hub_tokenizer_streams_offline(run: Run, model: str) -> None:
    result = run.results[f"stream {model}"]

    text = "".join(
        choice["delta"].get("content") or "" for chunk in result["chunks"] for choice in chunk.get("choices", [])
    )
    assert text == f"Simulated answer from {model} (turns=1, t=None) to: stream {model}"
    assert result["chunks"][-1]["usage"]["prompt_tokens"] == 2  # the upstream's count, not litellm's
    assert result["headers"]["x-request-id"].startswith("req_")


@pytest.mark.parametrize("model", HUB_TOKENIZER_MODELS)
def test_a_model_with_a_hub_tokenizer_completes_offline(run: Run, model: str) -> None:
    response = run.results[f"complete {model}"]["response"]

    (choice,) = response["choices"]
    assert choice["message"]["content"] == f"Simulated answer from {model} (turns=1, t=None) to: complete {model}"


def _status_error(cls: Any, status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None) -> Any:
    """A litellm exception as litellm builds it from an upstream's error response."""
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    content = json.dumps(body).encode() if body is not None else b""
    response = httpx.Response(status, content=content, headers=headers, request=request)
    message = (body or {}).get("error", {}).get("message", "the reason")
    return cls(message=f"OpenAIException - {message}", model="m", llm_provider="openai", response=response)


@pytest.fixture(scope="module")
def litellm_errors() -> Any:
    return import_litellm().exceptions


@pytest.mark.parametrize(
    ("name", "status", "error_type"),
    [
        ("BadRequestError", 400, "invalid_request_error"),
        ("AuthenticationError", 401, "authentication_error"),
        ("PermissionDeniedError", 403, "permission_error"),
        ("NotFoundError", 404, "not_found_error"),
        ("RateLimitError", 429, "rate_limit_error"),
        ("InternalServerError", 500, "upstream_error"),
        ("ServiceUnavailableError", 503, "upstream_error"),
    ],
)
def test_translate_error_without_a_json_body_keeps_the_status(
    litellm_errors: Any, name: str, status: int, error_type: str
) -> None:
    error = translate_error(_status_error(getattr(litellm_errors, name), status, None))

    assert isinstance(error, UpstreamError)
    assert (error.status_code, error.error_type) == (status, error_type)
    assert error.message == "the reason"  # litellm's own prefixes are gone


def test_translate_error_of_context_window_exceeded_before_bad_request(litellm_errors: Any) -> None:
    error = translate_error(_status_error(litellm_errors.ContextWindowExceededError, 400, None))

    assert error is not None
    assert (error.status_code, error.error_type, error.code) == (
        400,
        "invalid_request_error",
        "context_length_exceeded",
    )


def test_translate_error_takes_the_upstreams_body_verbatim(litellm_errors: Any) -> None:
    body = {
        "error": {"message": "bad temperature", "type": "invalid_request_error", "param": "temperature", "code": "x"}
    }
    headers = {"x-request-id": "req_1", "openai-processing-ms": "3", "server": "nginx"}

    error = translate_error(_status_error(litellm_errors.BadRequestError, 400, body, headers))

    assert error is not None
    assert error.body() == body
    assert error.headers == {"x-request-id": "req_1", "openai-processing-ms": "3"}


def test_translate_error_of_a_timeout_is_a_504(litellm_errors: Any) -> None:
    error = translate_error(litellm_errors.Timeout(message="Request timed out.", model="m", llm_provider="openai"))

    assert error is not None
    assert (error.status_code, error.error_type) == (504, "timeout")
    assert error.message.startswith("upstream timed out")


@pytest.mark.parametrize("exc", [RuntimeError("a bug of ours"), KeyError("choices"), ValueError("x")])
def test_translate_error_leaves_anything_else_unmapped(exc: Exception) -> None:
    # Not the upstream's fault: it propagates and the app answers a logged 500.
    assert translate_error(exc) is None


def test_litellm_upstream_satisfies_the_protocol() -> None:
    _: type[Upstream] = LiteLLMUpstream
