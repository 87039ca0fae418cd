"""The single-deployment router: every miss goes to the configured upstream."""

from __future__ import annotations

import pytest

from gateway.config import UpstreamConfig
from gateway.upstream import Deployment, Router, RouteRequest, SingleDeploymentRouter

_: type[Router] = SingleDeploymentRouter


@pytest.mark.parametrize(
    "request_",
    [
        RouteRequest(model="sim-large", category=None, tier=None, near_miss=False),
        RouteRequest(model="sim-small", category="coding", tier="small", near_miss=True),
    ],
)
def test_every_request_goes_to_the_configured_upstream(request_: RouteRequest) -> None:
    config = UpstreamConfig(api_base="http://127.0.0.1:9/v1", provider="openai", api_key="sk-operator", timeout_s=7)

    route = SingleDeploymentRouter(config).route(request_)

    assert route.reason == "only-deployment"
    assert route.deployment == Deployment(
        name="default",
        model=None,  # the model the client asked for
        provider="openai",
        api_base="http://127.0.0.1:9/v1",
        api_key="sk-operator",
        timeout_s=7,
        tier="large",
    )
    assert "sk-operator" not in repr(route)


def test_without_an_operator_key_the_callers_is_forwarded() -> None:
    route = SingleDeploymentRouter(UpstreamConfig()).route(
        RouteRequest(model="m", category=None, tier=None, near_miss=False)
    )

    assert route.deployment.api_key is None
