"""The routers: the single deployment (every miss to the configured upstream) and routing by tier and load."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import DeploymentConfig, RoutingConfig, UpstreamConfig
from gateway.errors import ModelNotFound
from gateway.upstream import Deployment, LoadRouter, Route, Router, RouteRequest, Shed, SingleDeploymentRouter
from tests.doubles import FakeClock

_single: type[Router] = SingleDeploymentRouter


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

    assert isinstance(route, Route)
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

    assert isinstance(route, Route)
    assert route.deployment.api_key is None


# -- routing by tier and load ------------------------------------------------------------------


def _deployment(name: str, tier: str, model: str, capacity: int = 2) -> DeploymentConfig:
    return DeploymentConfig(name=name, tier=tier, model=f"openai/{model}",  # type: ignore[arg-type]
                            api_base="http://127.0.0.1:9/v1", max_concurrency=capacity)  # fmt: skip


def _router(clock: FakeClock, **settings: Any) -> LoadRouter:
    deployments = [_deployment("small-a", "small", "sim-small"), _deployment("small-b", "small", "sim-small"),
                   _deployment("large-a", "large", "sim-large")]  # fmt: skip
    return LoadRouter(deployments, routes=["auto"], settings=RoutingConfig(**settings), clock=clock)


_: type[Router] = LoadRouter


def _ask(model: str = "auto", tier: Any = "large", **fields: Any) -> RouteRequest:
    return RouteRequest(model=model, category="c", tier=tier, near_miss=False, **fields)


def test_a_route_goes_to_the_preferred_tier_then_offloads_when_it_is_busy() -> None:
    clock = FakeClock()
    router = _router(clock, high_watermark=0.5)
    route = router.route(_ask())
    assert isinstance(route, Route)
    assert (route.deployment.name, route.reason) == ("large-a", "preferred")
    assert route.deployment.model == "sim-large" and route.deployment.provider == "openai"

    call = router.call(route.deployment)  # one of two slots: at the watermark
    route = router.route(_ask())
    assert isinstance(route, Route)
    assert (route.deployment.tier, route.reason) == ("small", "offload-overload")
    assert router.route(_ask(offload=False)) == Route(deployment=router.deployments[2], reason="preferred")

    call.end(status=None)
    route = router.route(_ask())
    assert isinstance(route, Route) and route.reason == "preferred"  # and back


def test_within_a_tier_the_least_loaded_healthy_deployment() -> None:
    clock = FakeClock()
    router = _router(clock)
    busy = router.call(router.deployments[0])
    route = router.route(_ask(tier="small"))
    assert isinstance(route, Route) and route.deployment.name == "small-b"
    busy.end(status=None)
    router.call(router.deployments[1]).end(status=503)  # cooling down now
    route = router.route(_ask(tier="small"))
    assert isinstance(route, Route) and route.deployment.name == "small-a"


def test_past_capacity_everywhere_the_load_is_shed() -> None:
    router = _router(FakeClock(), retry_after_s=3)
    for deployment in router.deployments:
        for _ in range(2):
            router.call(deployment)
    assert router.route(_ask()) == Shed(retry_after_s=3)


def test_a_named_deployment_or_model_is_pinned_and_never_swapped() -> None:
    router = _router(FakeClock())
    for _ in range(5):
        router.call(router.deployments[2])  # far past capacity: still that one
    for model in ("large-a", "sim-large", "openai/sim-large"):
        route = router.route(_ask(model=model, tier="small"))
        assert isinstance(route, Route)
        assert (route.deployment.name, route.reason) == ("large-a", "pinned")
    assert router.route(_ask(model="large-a", exclude=frozenset({"large-a"}))) == Shed(retry_after_s=1, reason="pinned")
    with pytest.raises(ModelNotFound):
        router.route(_ask(model="gpt-nothing"))


def test_a_retry_excludes_the_deployment_that_failed() -> None:
    router = _router(FakeClock())
    route = router.route(_ask(tier="small", exclude=frozenset({"small-a"})))
    assert isinstance(route, Route) and route.deployment.name == "small-b"


def test_the_pressure_on_a_category_follows_its_tiers_load_with_hysteresis() -> None:
    router = _router(FakeClock())  # pressure: watermark 0.7, full at 1.0, hysteresis 0.05
    large = router.deployments[2]
    assert router.pressure("c", "large") == 0.0
    calls = [router.call(large), router.call(large)]
    assert router.pressure("c", "large") == 1.0
    assert router.pressure("other", "small") == 0.0  # the small tier is idle
    calls.pop().end(status=None)
    assert router.pressure("c", "large") == 0.0  # load 0.5: well below the watermark
    assert router.pressures() == {"c": 0.0, "other": 0.0}
    assert router.loads() == {"small-a": 0.0, "small-b": 0.0, "large-a": 0.5}


def test_a_router_without_load_never_moves_the_rules_nor_retries() -> None:
    router = SingleDeploymentRouter(UpstreamConfig())
    assert router.pressure("c", "large") == 0.0
    assert isinstance(router.route(_ask(exclude=frozenset({"default"}))), Shed)
