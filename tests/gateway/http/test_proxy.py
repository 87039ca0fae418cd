"""End to end: the real `openai` SDK → the gateway under uvicorn → the simulated upstream over HTTP."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import openai
import pytest
from starlette.exceptions import HTTPException
from starlette.requests import Request

from gateway.app import _http_error
from gateway.config import CacheConfig, EmbeddingConfig, GatewayConfig
from tests.conftest import Gateway, GatewayFactory, Upstream
from tests.doubles import BrokenStore, CountingEmbedder, FailingEmbedder, FakeClock, StallingEmbedder
from tests.servers import free_port

QUESTION = "How do I reverse a list in Python?"
PARAPHRASE = "python: reverse a list"
UNRELATED = "What is the boiling point of water at sea level?"


def ask(
    gateway: Gateway, prompt: str, *, api_key: str = "sk-test-tenant-a", model: str = "sim-large", **params: Any
) -> tuple[str, dict[str, str], str | None]:
    """Send one chat completion; return (x-semcache, headers, answer text)."""
    messages = params.pop("messages", None) or [{"role": "user", "content": prompt}]
    raw = gateway.client(api_key).chat.completions.with_raw_response.create(model=model, messages=messages, **params)
    completion = raw.parse()
    return raw.headers["x-semcache"], dict(raw.headers), completion.choices[0].message.content


def test_miss_then_paraphrase_hit_serves_the_stored_answer(gateway: Gateway, upstream: Upstream) -> None:
    outcome, headers, first = ask(gateway, QUESTION)
    assert outcome == "miss"
    gateway.wait_until_stored(1)

    outcome, headers, second = ask(gateway, PARAPHRASE)

    assert outcome == "hit"
    assert float(headers["x-semcache-similarity"]) >= 0.85
    assert headers["x-semcache-entry"]
    assert second == first  # the stored answer, which names the original question
    assert QUESTION in (second or "")
    assert len(upstream.state.received) == 1


def test_hit_has_fresh_id_and_original_usage(gateway: Gateway) -> None:
    client = gateway.client()
    first = client.chat.completions.create(model="sim-large", messages=[{"role": "user", "content": QUESTION}])
    gateway.wait_until_stored(1)
    second = client.chat.completions.create(model="sim-large", messages=[{"role": "user", "content": QUESTION}])
    assert second.id != first.id
    assert second.usage == first.usage
    assert second.choices[0].message.content == first.choices[0].message.content


def test_unrelated_prompt_misses(gateway: Gateway, upstream: Upstream) -> None:
    ask(gateway, QUESTION)
    gateway.wait_until_stored(1)

    outcome, headers, answer = ask(gateway, UNRELATED)

    assert outcome == "miss"
    assert float(headers["x-semcache-similarity"]) < 0.85  # the best candidate is reported on a miss too
    assert UNRELATED in (answer or "")
    assert len(upstream.state.received) == 2


def test_exact_hit_skips_the_embedder(gateway: Gateway, embedder: CountingEmbedder, upstream: Upstream) -> None:
    ask(gateway, QUESTION)
    gateway.wait_until_stored(1)
    embedded_before = len(embedder.texts)

    outcome, _, _ = ask(gateway, "  How do I reverse a list   in Python? ")

    assert outcome == "exact"
    assert len(embedder.texts) == embedded_before
    assert len(upstream.state.received) == 1


@pytest.mark.parametrize(
    ("label", "variant"),
    [
        ("tenant", {"api_key": "sk-another-tenant"}),
        ("model", {"model": "sim-small"}),
        (
            "system prompt",
            {"messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": QUESTION}]},
        ),
        ("temperature", {"temperature": 1.5}),
        (
            "tools",
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "run_python", "parameters": {"type": "object", "properties": {}}},
                    }
                ]
            },
        ),
        (
            "prior turns",
            {
                "messages": [
                    {"role": "user", "content": "I am writing Rust, not Python."},
                    {"role": "assistant", "content": "Understood."},
                    {"role": "user", "content": QUESTION},
                ]
            },
        ),
    ],
)
def test_answers_never_cross_scopes(gateway: Gateway, upstream: Upstream, label: str, variant: dict[str, Any]) -> None:
    ask(gateway, QUESTION, temperature=0.2)
    gateway.wait_until_stored(1)
    params: dict[str, Any] = {"temperature": 0.2, **variant}

    outcome, _, _ = ask(gateway, QUESTION, **params)

    assert outcome == "miss", f"a different {label} must not be served the cached answer"
    assert len(upstream.state.received) == 2


def test_tenants_listed_in_config_share_their_cache(
    start_gateway: GatewayFactory, gateway_config: GatewayConfig
) -> None:
    from gateway.config import key_digest

    shared = {key_digest("sk-alice"): "team-a", key_digest("sk-bob"): "team-a"}
    with start_gateway(tenant_by_key_sha256=shared) as gateway:
        ask(gateway, QUESTION, api_key="sk-alice")
        gateway.wait_until_stored(1)
        assert ask(gateway, QUESTION, api_key="sk-bob")[0] == "exact"
        assert ask(gateway, QUESTION, api_key="sk-mallory")[0] == "miss"


def test_expired_entries_are_never_served(gateway: Gateway, clock: FakeClock, upstream: Upstream) -> None:
    ask(gateway, QUESTION)
    gateway.wait_until_stored(1)
    clock.advance(3599)
    assert ask(gateway, PARAPHRASE)[0] == "hit"

    clock.advance(2)  # past ttl_s=3600

    outcome, _, answer = ask(gateway, PARAPHRASE)
    assert outcome == "miss"
    assert PARAPHRASE in (answer or "")  # a fresh answer to this wording, not the expired one
    assert len(upstream.state.received) == 2


def test_entries_survive_a_restart(start_gateway: GatewayFactory, upstream: Upstream) -> None:
    with start_gateway() as gateway:
        ask(gateway, QUESTION)
        gateway.wait_until_stored(1)

    with start_gateway() as restarted:
        assert ask(restarted, QUESTION)[0] == "exact"
        outcome, _, answer = ask(restarted, PARAPHRASE)
        assert outcome == "hit"  # the index was rebuilt from the store
        assert QUESTION in (answer or "")
    assert len(upstream.state.received) == 1


@pytest.mark.parametrize(
    ("faults", "status", "error_class"),
    [
        ({"status": 500}, 500, openai.InternalServerError),
        ({"status": 429}, 429, openai.RateLimitError),
        ({"stall_s": 8}, 504, openai.APIStatusError),
    ],
)
def test_upstream_errors_reach_the_client_and_are_not_stored(
    gateway: Gateway, upstream: Upstream, faults: dict[str, Any], status: int, error_class: type[Exception]
) -> None:
    upstream.set_faults(times=1, **faults)

    with pytest.raises(error_class) as raised:
        ask(gateway, QUESTION)

    assert isinstance(raised.value, openai.APIStatusError)
    assert raised.value.status_code == status
    body = raised.value.response.json()
    assert body["error"]["message"]
    assert body["error"]["type"]
    # Not stored: the next identical request goes upstream again and is a plain miss.
    assert ask(gateway, QUESTION)[0] == "miss"
    assert len(upstream.state.received) == 2


def test_truncated_answers_with_finish_reason_content_filter_are_not_stored(
    gateway: Gateway, upstream: Upstream
) -> None:
    upstream.set_faults(finish_reason="content_filter", times=1)
    ask(gateway, QUESTION)
    assert ask(gateway, QUESTION)[0] == "miss"
    gateway.wait_until_stored(1)  # only the second, complete answer
    assert ask(gateway, QUESTION)[0] == "exact"


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "sim-large"}', "messages"),
        (b'{"model": "sim-large", "messages": []}', "messages"),
        (b'{"model": "sim-large", "messages": "hi"}', "messages"),
        (b'{"model": "sim-large", "messages": [{"role": "wizard", "content": "hi"}]}', "messages[0].role"),
        (b'{"model": "sim-large", "messages": [{"role": "user", "content": 42}]}', "messages[0].content"),
        (
            b'{"model": "sim-large", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
            "temperature",
        ),
        (b'{"model": "sim-large", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream"),
        (b'{"model": "sim-large", "messages": [{"role": "user", "content": "hi"}], "n": 0}', "n"),
    ],
)
def test_malformed_requests_get_openai_style_400(
    gateway: Gateway, upstream: Upstream, payload: bytes, param: str | None
) -> None:
    with gateway.http() as http:
        response = http.post("/v1/chat/completions", content=payload, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert error["param"] == param
    assert "code" in error
    assert upstream.state.received == []


def test_oversized_body_gets_413(start_gateway: GatewayFactory, gateway_config: GatewayConfig) -> None:
    from dataclasses import replace

    with start_gateway(server=replace(gateway_config.server, max_body_bytes=2048)) as gateway, gateway.http() as http:
        big = {"model": "sim-large", "messages": [{"role": "user", "content": "x" * 4096}]}
        response = http.post("/v1/chat/completions", json=big)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"


def test_unknown_model_gets_404_and_models_are_listed(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError):
        ask(gateway, QUESTION, model="gpt-unknown")
    models = [model.id for model in gateway.client().models.list()]
    assert models == ["sim-large", "sim-small"]


def test_health_and_readiness(gateway: Gateway) -> None:
    with gateway.http() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").status_code == 200
        missing = http.get("/nothing-here")
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "invalid_request_error"
        assert http.post("/healthz").status_code == 405


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/completions", "POST"),
        ("GET", "/v1/feedback", "POST"),
        ("DELETE", "/v1/models", "GET"),
    ],
)
def test_the_gateways_own_paths_refuse_other_methods_instead_of_forwarding(
    gateway: Gateway, method: str, path: str, allowed: str
) -> None:
    with gateway.http() as http:
        response = http.request(method, path)

    # Forwarded, the simulated upstream's catch-all would have echoed the request with a 200.
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_readiness_reports_an_unreachable_upstream_without_saying_more(
    start_gateway: GatewayFactory, gateway_config: GatewayConfig
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with start_gateway(upstream=replace(gateway_config.upstream, api_base=nowhere)) as gateway, gateway.http() as http:
        response = http.get("/readyz")

    assert response.status_code == 503
    checks = {"store": "ok", "upstream": "unreachable", "index": "ok"}
    assert response.json() == {"status": "not ready", "checks": checks}


def test_readiness_names_a_failing_store_but_never_its_exception(start_gateway: GatewayFactory) -> None:
    with start_gateway(store=BrokenStore()) as gateway, gateway.http() as http:
        response = http.get("/readyz")

    assert response.status_code == 503
    checks = {"store": "unavailable", "upstream": "ok", "index": "ok"}
    assert response.json() == {"status": "not ready", "checks": checks}


def test_store_outage_fails_open(start_gateway: GatewayFactory, upstream: Upstream) -> None:
    store = BrokenStore()
    with start_gateway(store=store) as gateway:
        for _ in range(2):
            outcome, _, answer = ask(gateway, QUESTION)
            assert outcome == "miss"
            assert QUESTION in (answer or "")
        with gateway.http() as http:
            assert http.get("/readyz").status_code == 503
            metrics = http.get("/metrics").text
    assert store.calls > 0
    assert len(upstream.state.received) == 2
    assert 'semcache_fail_open_total{stage="store"}' in metrics


def test_crashing_embedder_fails_open(start_gateway: GatewayFactory, real_embedder: Any, upstream: Upstream) -> None:
    with start_gateway(embedder_=FailingEmbedder(real_embedder)) as gateway:
        outcome, _, answer = ask(gateway, QUESTION)
        assert outcome == "miss"
        assert QUESTION in (answer or "")


def test_stalled_embedder_turns_into_a_miss_at_its_deadline(
    start_gateway: GatewayFactory, real_embedder: Any, upstream: Upstream
) -> None:
    stalling = StallingEmbedder(real_embedder, stall_s=2.0)
    with start_gateway(embedder_=stalling, embedding=EmbeddingConfig(deadline_ms=100)) as gateway:
        outcome, headers, answer = ask(gateway, QUESTION)
    assert outcome == "miss"
    assert "x-semcache-similarity" not in headers
    assert QUESTION in (answer or "")


def test_n_greater_than_one_is_passed_through_and_marked(gateway: Gateway, upstream: Upstream) -> None:
    outcome, headers, _ = ask(gateway, QUESTION, n=2)
    assert outcome == "bypass"
    assert headers["x-semcache-reason"] == "n>1"
    assert ask(gateway, QUESTION, n=2)[0] == "bypass"
    assert len(upstream.state.received) == 2


def test_prompt_longer_than_the_embedder_window_is_exact_match_only(gateway: Gateway, upstream: Upstream) -> None:
    shared_start = "Please review this Python function carefully. " * 60
    long_prompt = shared_start + "Does it reverse a list?"
    other_long_prompt = shared_start + "Does it sort a dictionary?"

    outcome, headers, _ = ask(gateway, long_prompt)
    assert outcome == "miss"
    assert headers["x-semcache-reason"] == "prompt-over-embedder-window"
    gateway.wait_until_stored(1)

    assert ask(gateway, other_long_prompt)[0] == "miss"  # the same first 256 tokens: no semantic hit
    assert ask(gateway, long_prompt)[0] == "exact"
    assert len(upstream.state.received) == 2


def test_semantic_threshold_comes_from_config(start_gateway: GatewayFactory, gateway_config: GatewayConfig) -> None:
    from dataclasses import replace

    strict = replace(gateway_config.cache, similarity_threshold=0.999)
    with start_gateway(cache=strict) as gateway:
        ask(gateway, QUESTION)
        gateway.wait_until_stored(1)
        outcome, headers, _ = ask(gateway, PARAPHRASE)
    assert outcome == "miss"
    assert 0.85 < float(headers["x-semcache-similarity"]) < 0.999


def test_store_holds_the_answer_with_scope_and_expiry(gateway: Gateway, clock: FakeClock) -> None:
    import sqlite3

    ask(gateway, QUESTION)
    gateway.wait_until_stored(1)
    cache: CacheConfig = gateway.config.cache
    with sqlite3.connect(cache.store.path) as db:
        rows = db.execute("SELECT prompt, created_at, expires_at, embedding IS NOT NULL FROM entries").fetchall()
    assert rows == [(QUESTION, clock.now, clock.now + cache.ttl_s, 1)]


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(400, "invalid_request_error"), (401, "invalid_request_error"), (413, "invalid_request_error"),
     (429, "invalid_request_error"), (503, "server_error"), (502, "server_error")],
)  # fmt: skip
def test_http_exceptions_keep_their_status_in_an_openai_shaped_body(status: int, error_type: str) -> None:
    """Starlette's own HTTPExceptions (raised by the framework, not by a route of ours) as clients see them."""
    request = Request({"type": "http", "method": "POST", "path": "/v1/x", "headers": [], "query_string": b""})

    response = asyncio.run(_http_error(request, HTTPException(status, "what went wrong", headers={"x-a": "1"})))

    assert response.status_code == status
    assert json.loads(bytes(response.body)) == {
        "error": {"message": "what went wrong", "type": error_type, "param": None, "code": None}
    }
    assert response.headers["x-a"] == "1"


def test_cache_control_s_maxage_is_the_lookups_max_age(gateway: Gateway, clock: FakeClock) -> None:
    ask(gateway, QUESTION)
    gateway.wait_until_stored(1)
    clock.advance(120)

    assert ask(gateway, PARAPHRASE, extra_headers={"Cache-Control": "s-maxage=60"})[0] == "miss"
    gateway.wait_until_stored(2)  # the fresh answer to the paraphrase
    clock.advance(120)
    assert ask(gateway, QUESTION, extra_body={"cache": {"s-maxage": 60}})[0] == "miss"  # both too old
    gateway.wait_until_stored(3)
    clock.advance(120)
    assert ask(gateway, PARAPHRASE, extra_headers={"Cache-Control": "s-maxage=300"})[0] == "exact"


def test_a_namespace_is_served_only_inside_itself(gateway: Gateway, upstream: Upstream) -> None:
    def in_namespace(prompt: str, namespace: str | None) -> str:
        cache = {} if namespace is None else {"cache": {"namespace": namespace}}
        return ask(gateway, prompt, extra_body=cache)[0]

    assert in_namespace(QUESTION, "team-a") == "miss"
    gateway.wait_until_stored(1)

    assert in_namespace(PARAPHRASE, "team-a") == "hit"
    assert in_namespace(QUESTION, None) == "miss"  # not in the un-namespaced cache either
    assert in_namespace(QUESTION, "team-b") == "miss"
    assert in_namespace(QUESTION, "team-a") == "exact"
    assert ask(gateway, QUESTION, api_key="sk-other-tenant", extra_body={"cache": {"namespace": "team-a"}})[0] == "miss"
    assert len(upstream.state.received) == 4


def test_a_requests_ttl_shortens_its_entrys_life_and_a_longer_one_is_clamped(
    gateway: Gateway, clock: FakeClock
) -> None:
    import sqlite3

    ask(gateway, QUESTION, extra_body={"cache": {"ttl": 60}})
    ask(gateway, UNRELATED, extra_body={"cache": {"ttl": 10**9}})
    gateway.wait_until_stored(2)
    with sqlite3.connect(gateway.config.cache.store.path) as db:
        lives = dict(db.execute("SELECT prompt, expires_at - created_at FROM entries").fetchall())
    assert lives == {QUESTION: 60, UNRELATED: gateway.config.cache.ttl_s}  # never longer than the category's

    clock.advance(59)
    assert ask(gateway, PARAPHRASE)[0] == "hit"
    clock.advance(2)
    assert ask(gateway, PARAPHRASE)[0] == "miss"  # expired at 60 s, not at the category's 3600
    assert ask(gateway, UNRELATED)[0] == "exact"


def test_a_requests_shorter_ttl_survives_a_restart(start_gateway: GatewayFactory, clock: FakeClock) -> None:
    # A restart retimes every entry to its category's TTL (a changed policy applies to old entries):
    # an entry whose request asked for less keeps its own.
    with start_gateway() as first:
        ask(first, QUESTION, extra_body={"cache": {"ttl": 60}})
        first.wait_until_stored(1)
    with start_gateway() as second:
        clock.advance(59)
        assert ask(second, QUESTION)[0] == "exact"
        clock.advance(2)
        assert ask(second, QUESTION)[0] == "miss"


@pytest.mark.parametrize(
    ("headers", "cache", "param"),
    [
        ({}, {"ttl": 0}, "cache.ttl"),
        ({}, {"namespace": "x" * 129}, "cache.namespace"),
        ({}, {"no-cache": "yes"}, "cache.no-cache"),
        ({"Cache-Control": "s-maxage=-1"}, None, "Cache-Control s-maxage"),
    ],
)
def test_bad_cache_directives_get_openai_style_400(
    gateway: Gateway, upstream: Upstream, headers: dict[str, str], cache: dict[str, Any] | None, param: str
) -> None:
    body: dict[str, Any] = {"model": "sim-large", "messages": [{"role": "user", "content": QUESTION}]}
    if cache is not None:
        body["cache"] = cache
    with gateway.http() as http:
        response = http.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert upstream.state.received == []


def test_every_answer_names_its_response_id_in_a_header(gateway: Gateway) -> None:
    body = {"model": "sim-large", "messages": [{"role": "user", "content": QUESTION}]}
    auth = {"authorization": "Bearer sk-test-tenant-a"}
    with gateway.http() as http:
        miss = http.post("/v1/chat/completions", json=body, headers=auth)
        gateway.wait_until_stored(1)
        hit = http.post("/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": PARAPHRASE}]},
                        headers=auth)  # fmt: skip
        streamed = http.post("/v1/chat/completions", json={**body, "stream": True}, headers=auth)
        rated = http.post("/v1/feedback", json={"id": hit.headers["x-semcache-response-id"], "rating": "good"},
                          headers=auth)  # fmt: skip

    assert miss.headers["x-semcache-response-id"] == miss.json()["id"]
    assert hit.headers["x-semcache"] == "hit"
    assert hit.headers["x-semcache-response-id"] == hit.json()["id"] != miss.json()["id"]
    first_chunk = json.loads(streamed.text.split("\n\n")[0].removeprefix("data: "))
    assert streamed.headers["x-semcache-response-id"] == first_chunk["id"]
    assert rated.status_code == 200, rated.text  # the header's id is the one feedback takes
