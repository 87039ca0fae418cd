"""Which deployment a miss goes to. `SingleDeploymentRouter`: the one `upstream` section, for configs
without `deployments`. `LoadRouter`: several deployments in two tiers, chosen by
`policies.routing.choose` from each one's live load (`gateway.upstream.load`); it also holds each
category's load pressure (`policies.load.update_pressure`, with its hysteresis state) for the rules."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from gateway.config import DeploymentConfig, RoutingConfig, UpstreamConfig
from gateway.errors import ModelNotFound
from gateway.upstream.base import Call, Deployment, Route, RouteRequest, Shed, Tier
from gateway.upstream.load import LoadSettings, LoadTracker
from policies.load import Pressure, update_pressure
from policies.routing import Candidate, choose


class _Untracked:
    def end(self, *, status: int | None, tokens: int = 0) -> None:
        pass

    def first_byte(self) -> None:
        pass


class SingleDeploymentRouter:
    """Every miss goes to the one configured upstream; no load is measured, so nothing adapts."""

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

    def route(self, request: RouteRequest) -> Route | Shed:
        if request.exclude:
            return Shed(retry_after_s=1, reason="no-other-deployment")
        return self._route

    def call(self, deployment: Deployment) -> Call:
        return _Untracked()

    def pressure(self, category: str, tier: Tier) -> float:
        return 0.0


class _TrackedCall:
    def __init__(self, tracker: LoadTracker, clock: Callable[[], float]) -> None:
        self._tracker = tracker
        self._clock = clock
        self._started = clock()
        self._first_byte_s: float | None = None
        self._ended = False
        tracker.begin()

    def first_byte(self) -> None:
        if self._first_byte_s is None:
            self._first_byte_s = self._clock() - self._started

    def end(self, *, status: int | None, tokens: int = 0) -> None:
        if self._ended:
            return
        self._ended = True
        streamed = self._first_byte_s is not None
        latency_s = self._first_byte_s if self._first_byte_s is not None else self._clock() - self._started
        self._tracker.end(status=status, latency_s=latency_s, first_byte=streamed, tokens=tokens)


def deployment_of(config: DeploymentConfig) -> Deployment:
    provider, _, model = config.model.partition("/")
    return Deployment(name=config.name, model=model, provider=provider, api_base=config.api_base,
                      api_key=config.api_key, timeout_s=config.timeout_s, tier=config.tier)  # fmt: skip


class LoadRouter:
    """Clients that name a route (e.g. "auto") are routed by tier and load; a client that names a
    deployment, or its model, gets exactly that one ("pinned"), and is never retried elsewhere."""

    def __init__(
        self,
        deployments: Sequence[DeploymentConfig],
        *,
        routes: Sequence[str],
        settings: RoutingConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not deployments:
            raise ValueError("a LoadRouter needs deployments")
        self._settings = settings
        self._clock = clock
        self._routes = frozenset(routes)
        self._deployments = {config.name: deployment_of(config) for config in deployments}
        self._trackers = {
            config.name: LoadTracker(
                LoadSettings(
                    capacity=config.max_concurrency,
                    tokens_per_minute=config.tokens_per_minute,
                    target_latency_s=None if config.target_latency_ms is None else config.target_latency_ms / 1000,
                    cooldown_s=settings.cooldown_s,
                    alpha=settings.latency_alpha,
                    window_s=settings.error_window_s,
                ),
                clock=clock,
            )
            for config in deployments
        }
        self._pinned: dict[str, str] = {}
        for config in deployments:
            for alias in (config.model, config.model.partition("/")[2], config.name):
                self._pinned.setdefault(alias, config.name)
        self._pinned.update({config.name: config.name for config in deployments})  # a name wins over a model
        self._pressure: dict[str, Pressure] = {}

    @property
    def deployments(self) -> tuple[Deployment, ...]:
        return tuple(self._deployments.values())

    def tracker(self, name: str) -> LoadTracker:
        return self._trackers[name]

    def route(self, request: RouteRequest) -> Route | Shed:
        if request.model not in self._routes:
            pinned = self._pinned.get(request.model)
            if pinned is None:
                raise ModelNotFound(f"The model '{request.model}' does not exist or is not served here",
                                    param="model", code="model_not_found")  # fmt: skip
            if pinned in request.exclude:
                return Shed(retry_after_s=self._settings.retry_after_s, reason="pinned")
            return Route(deployment=self._deployments[pinned], reason="pinned")
        choice = choose(
            self._candidates(),
            preferred=request.tier or "large",
            offload=request.offload,
            high_watermark=self._settings.high_watermark,
            exclude=request.exclude,
        )
        if choice.name is None:
            return Shed(retry_after_s=self._settings.retry_after_s)
        return Route(deployment=self._deployments[choice.name], reason=choice.reason)

    def _candidates(self) -> list[Candidate]:
        return [
            Candidate(name=name, tier=self._deployments[name].tier, load=tracker.load(), healthy=tracker.healthy())
            for name, tracker in self._trackers.items()
        ]

    def call(self, deployment: Deployment) -> Call:
        tracker = self._trackers.get(deployment.name)
        return _Untracked() if tracker is None else _TrackedCall(tracker, self._clock)

    def loads(self) -> dict[str, float]:
        return {name: tracker.load() for name, tracker in self._trackers.items()}

    def tier_load(self, tier: Tier) -> float:
        """The load a miss of `tier` meets: that of its least-loaded deployment (one cooling down
        counts as full); a tier with no deployment sends its misses to the other tier."""
        candidates = self._candidates()
        in_tier = [c for c in candidates if c.tier == tier] or candidates
        return min(c.load if c.healthy else max(c.load, 1.0) for c in in_tier)

    def pressure(self, category: str, tier: Tier) -> float:
        state = update_pressure(self._pressure.get(category, Pressure()), self.tier_load(tier), self._settings.pressure)
        self._pressure[category] = state
        return state.value

    def pressures(self) -> dict[str, float]:
        """Each category's pressure as last updated (by its last request)."""
        return {category: state.value for category, state in self._pressure.items()}
