"""Caller authentication and the pass-through allow-list, end to end: with the gateway's own upstream
key, only listed client keys are served, on every /v1 route and method, and only the allowed routes
reach the upstream at all."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.config import ClientsConfig, GatewayConfig, PassthroughRoute, TenantConfig, key_digest
from gateway.errors import ConfigError
from tests.conftest import Gateway, GatewayFactory, Upstream

OPERATOR_KEY = "sk-operator-upstream-key"
LISTED_KEY = "sk-listed-client"
CHAT = {"model": "sim-large", "messages": [{"role": "user", "content": "How do I reverse a list in Python?"}]}

# Each client route and method, with a body it accepts.
ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/v1/completions", {"model": "sim-large", "prompt": "Say hi", "max_tokens": 5}),
    ("GET", "/v1/models", None),
    ("POST", "/v1/embeddings", {"model": "sim-embed", "input": ["a"]}),
    ("POST", "/v1/feedback", {"entry": "no-such-entry", "rating": "bad"}),
    ("GET", "/v1/files/file-abc", None),
    ("DELETE", "/v1/files/file-abc", None),
]


def operator_keyed(config: GatewayConfig, *, listed: bool = True, **clients: Any) -> GatewayConfig:
    """`config` as resolve_secrets leaves it for `upstream.api_key_env: OPENAI_API_KEY` and one
    listed client key (or none)."""
    tenants = (TenantConfig(name="team-a", api_key_sha256=key_digest(LISTED_KEY)),) if listed else ()
    return replace(
        config,
        upstream=replace(config.upstream, api_key_env="OPENAI_API_KEY", api_key=OPERATOR_KEY),
        tenants=tenants,
        tenant_by_key_sha256={key_digest(LISTED_KEY): "team-a"} if listed else {},
        clients=ClientsConfig(**clients),
    )


@pytest.fixture
def keyed(start_gateway: GatewayFactory, gateway_config: GatewayConfig) -> Iterator[Gateway]:
    with start_gateway(config=operator_keyed(gateway_config)) as gateway:
        yield gateway


def call(gateway: Gateway, method: str, path: str, body: Any, *, api_key: str | None) -> httpx.Response:
    headers = {} if api_key is None else {"authorization": f"Bearer {api_key}"}
    with gateway.http() as http:
        return http.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("route", ROUTES, ids=[f"{method} {path}" for method, path, _ in ROUTES])
@pytest.mark.parametrize("api_key", [None, "sk-garbage", OPERATOR_KEY[:-1]])
def test_without_a_listed_key_every_route_is_refused_with_401(
    keyed: Gateway, upstream: Upstream, route: tuple[str, str, Any], api_key: str | None
) -> None:
    method, path, body = route
    response = call(keyed, method, path, body, api_key=api_key)

    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == (None if api_key is None else "invalid_api_key")
    assert error["message"].startswith("You didn't provide an API key" if api_key is None else "Incorrect API key")
    assert (api_key or "sk-") not in error["message"]  # a presented key is never echoed
    assert upstream.state.received == []


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/chat/completions", CHAT, 200),
        ("POST", "/v1/completions", {"model": "sim-large", "prompt": "Say hi", "max_tokens": 5}, 200),
        ("GET", "/v1/models", None, 200),
        ("POST", "/v1/embeddings", {"model": "sim-embed", "input": ["a"]}, 200),
        ("POST", "/v1/feedback", {"entry": "no-such-entry", "rating": "bad"}, 404),  # authenticated, no such hit
        ("GET", "/v1/files/file-abc", None, 404),  # not on the pass-through allow-list
        ("DELETE", "/v1/files/file-abc", None, 404),
    ],
)
def test_a_listed_key_is_served_and_unlisted_routes_never_reach_the_upstream(
    keyed: Gateway, method: str, path: str, body: Any, status: int
) -> None:
    response = call(keyed, method, path, body, api_key=LISTED_KEY)

    assert response.status_code == status, response.text
    if path.startswith("/v1/files"):
        assert response.json()["error"]["code"] == "unknown_url"
        assert "x-simulated-upstream" not in response.headers  # the upstream's echo never ran


def test_the_operators_key_goes_upstream_only_for_listed_callers(keyed: Gateway, upstream: Upstream) -> None:
    response = call(keyed, "POST", "/v1/chat/completions", CHAT, api_key=LISTED_KEY)

    assert response.status_code == 200
    assert response.headers["x-semcache"] == "miss"
    assert len(upstream.state.received) == 1


def test_allow_anonymous_serves_anyone_but_only_on_allowed_routes(
    start_gateway: GatewayFactory, gateway_config: GatewayConfig, upstream: Upstream
) -> None:
    config = operator_keyed(gateway_config, listed=False, allow_anonymous=True)
    with start_gateway(config=config) as gateway:
        for api_key in (None, "sk-garbage"):
            assert call(gateway, "POST", "/v1/chat/completions", CHAT, api_key=api_key).status_code == 200
            assert call(gateway, "GET", "/v1/models", None, api_key=api_key).status_code == 200
            embedded = call(gateway, "POST", "/v1/embeddings", {"model": "e", "input": ["a"]}, api_key=api_key)
            assert embedded.status_code == 200
            feedback = call(gateway, "POST", "/v1/feedback", {"entry": "nope", "rating": "bad"}, api_key=api_key)
            assert feedback.status_code == 404
            assert feedback.json()["error"]["code"] == "entry_not_found"
            for method in ("GET", "DELETE"):
                refused = call(gateway, method, "/v1/files/file-abc", None, api_key=api_key)
                assert refused.status_code == 404
                assert refused.json()["error"] == {
                    "message": f"Unknown route {method} /v1/files/file-abc",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "unknown_url",
                }


def test_configured_passthrough_routes_are_forwarded_with_the_operators_key(
    start_gateway: GatewayFactory, gateway_config: GatewayConfig
) -> None:
    config = operator_keyed(gateway_config)
    upstream_config = replace(config.upstream, passthrough=(PassthroughRoute(method="GET", path="/v1/files/*"),))
    with start_gateway(config=replace(config, upstream=upstream_config)) as gateway:
        listed = call(gateway, "GET", "/v1/files/file-abc", None, api_key=LISTED_KEY)
        deleted = call(gateway, "DELETE", "/v1/files/file-abc", None, api_key=LISTED_KEY)
        anonymous = call(gateway, "GET", "/v1/files/file-abc", None, api_key=None)

    assert listed.status_code == 200
    assert listed.json()["authorization"] == f"Bearer {OPERATOR_KEY}"
    assert deleted.status_code == 404  # another method on the same path is not allowed
    assert anonymous.status_code == 401


def test_the_gateways_own_key_without_listed_keys_or_allow_anonymous_is_refused_at_start(
    gateway_config: GatewayConfig,
) -> None:
    with pytest.raises(ConfigError) as raised:
        create_app(operator_keyed(gateway_config, listed=False))

    assert raised.value.problems[0].startswith("clients: upstream.api_key_env is set")


def test_without_the_gateways_own_key_callers_keys_are_forwarded_and_not_checked(gateway: Gateway) -> None:
    response = call(gateway, "POST", "/v1/chat/completions", CHAT, api_key="sk-any-caller")

    assert response.status_code == 200
