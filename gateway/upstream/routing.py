"""Which deployment a miss goes to. Today there is one, built from the `upstream` config section;
routing across several by load and tier is a router of its own, a peer of this one."""

from __future__ import annotations

from gateway.config import UpstreamConfig
from gateway.upstream.base import Deployment, Route, RouteRequest


class SingleDeploymentRouter:
    """Every miss goes to the one configured upstream."""

    def __init__(self, config: UpstreamConfig) -> None:
        deployment = Deployment(
            name="default",
            model=None,  # the model the client asked for
            provider=config.provider,
            api_base=config.api_base,
            api_key=config.api_key,
            timeout_s=config.timeout_s,
        )
        self._route = Route(deployment=deployment, reason="only-deployment")

    def route(self, request: RouteRequest) -> Route:
        return self._route
