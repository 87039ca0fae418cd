"""From a request to what to do with it, with no transport in sight: reply from the cache, or forward
to a deployment (the proxy), the app (the middleware) or the provider (the LiteLLM hook).

    action = await serving.serve(request, api_key=key, control=control)
    if isinstance(action, Reply):
        ...answer action.answer as JSON or a replayed stream...
    elif isinstance(action, Refuse):  # only with a router: every deployment is past capacity
        ...answer 429 with Retry-After (action.shed.retry_after_s)...
    else:
        try:
            ...send action.request to action.route (or the app); on a complete answer:
            action.complete(answer)
        finally:
            action.end()

The branching exists here once: the proxy, the middleware and the LiteLLM hook only carry it out.
Concurrent identical misses coalesce when a `SingleFlight` is given: one goes upstream, the others
wait for its answer and are replied to with it (`x-semcache: coalesced`: it was never stored).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.cache.decisions import Bypass, Decision, Hit, Miss, NearMiss, Outcome
from gateway.cache.semantic_cache import SemanticCache
from gateway.cache.singleflight import Flight, SingleFlight
from gateway.upstream import Route, Router, RouteRequest, Shed
from gateway.wire import CompletionRequest, replay_completion
from gateway.wire.cache_control import CacheControl


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """Answer from the cache: a hit, or the answer an identical request in flight just got."""

    request: CompletionRequest
    answer: Mapping[str, Any]
    decision: Hit | Miss
    outcome: Outcome


@dataclass(slots=True, kw_only=True)
class Forward:
    """Ask the upstream. `request` is what to send (today the client's own; in-context examples
    will change its messages); `route` is None where the caller has no router (the middleware's
    app, LiteLLM's provider)."""

    request: CompletionRequest
    decision: Miss | Bypass
    route: Route | None
    cache: SemanticCache
    # What the router was asked (None without a router): a retry asks again, excluding the failed.
    route_request: RouteRequest | None = None
    flight: Flight | None = None
    # Whether a complete answer is remembered (not for a bypass, nor under Cache-Control: no-store).
    store: bool = False

    @property
    def outcome(self) -> Outcome:
        return self.decision.outcome

    def complete(self, answer: Mapping[str, Any]) -> None:
        """A complete answer arrived: release the followers with it and remember it, or judge it
        when the miss explored a candidate (after the client has it: background tasks)."""
        if self.flight is not None:
            self.flight.finish(answer)
        if isinstance(self.decision, Miss):
            # An explored miss is judged too (verified thresholds), whether or not it is stored.
            self.cache.complete(self.decision, answer, store=self.store)

    def end(self) -> None:
        """The exchange is over (for a stream: when it ended, not when it began). Without a complete
        answer the followers go upstream themselves. Idempotent."""
        if self.flight is not None:
            self.flight.finish()


@dataclass(frozen=True, slots=True, kw_only=True)
class Refuse:
    """Shed load: the cache could not answer (its lookup ran under the load-adapted rules) and every
    deployment that could is past capacity: 429 with Retry-After, never an unbounded queue."""

    request: CompletionRequest
    decision: Miss | Bypass
    shed: Shed

    @property
    def outcome(self) -> Outcome:
        return self.decision.outcome


Action = Reply | Forward | Refuse


class Serving:
    def __init__(self, cache: SemanticCache, *, router: Router | None = None, coalesce: bool = True) -> None:
        self.cache = cache
        self._router = router
        self._flights = SingleFlight(max_lifetime_s=cache.config.upstream.timeout_s) if coalesce else None

    @property
    def in_flight(self) -> int:
        return 0 if self._flights is None else len(self._flights)

    async def serve(self, request: CompletionRequest, *, api_key: str | None, control: CacheControl) -> Action:
        """Raises what `SemanticCache.lookup` raises for a bad request (`ThresholdTooLoose`)."""
        decision = await self.cache.lookup(request, api_key=api_key, control=control)
        return await self.act(decision, control=control)

    async def act(self, decision: Decision, *, control: CacheControl) -> Action:
        if isinstance(decision, Hit):
            return Reply(request=decision.request, answer=decision.answer, decision=decision, outcome=decision.outcome)
        if isinstance(decision, Bypass):
            route_request = self._route_request(decision)
            route = self._route(route_request)
            if isinstance(route, Shed):
                return Refuse(request=decision.request, decision=decision, shed=route)
            return Forward(request=decision.request, decision=decision, route=route, cache=self.cache,
                           route_request=route_request)  # fmt: skip
        if self._flights is not None and control.lookup:
            # An identical request in flight answers this one too, even when every model is busy.
            timeout_s = self.cache.config.upstream.timeout_s
            shared = await self._flights.join(decision.key.exact, timeout_s=timeout_s)
            if shared is not None:
                answer = replay_completion(shared, endpoint=decision.request.endpoint, now=self.cache.clock())
                return Reply(request=decision.request, answer=answer, decision=decision, outcome=Outcome.COALESCED)
        # Routed after waiting on a flight, by the load of now.
        route_request = self._route_request(decision)
        route = self._route(route_request)
        if isinstance(route, Shed):
            return Refuse(request=decision.request, decision=decision, shed=route)
        flight = None if self._flights is None else self._flights.begin(decision.key.exact)
        return Forward(
            request=decision.request,
            decision=decision,
            route=route,
            route_request=route_request,
            cache=self.cache,
            flight=flight,
            store=control.store,
        )

    def _route_request(self, decision: Miss | Bypass) -> RouteRequest | None:
        if self._router is None:
            return None
        name = decision.category
        policy = self.cache.engine.policy
        category = policy.category(name) if name is not None and name in policy.names else None
        return RouteRequest(
            model=decision.request.model,
            category=name,
            tier=None if category is None else category.tier,
            near_miss=isinstance(decision, NearMiss),
            offload=True if category is None else category.offload,
        )

    def _route(self, request: RouteRequest | None) -> Route | Shed | None:
        if self._router is None or request is None:
            return None
        return self._router.route(request)

    def record(self, outcome: str, started: float) -> None:
        """Count one answered request (`outcome`: an `Outcome`, or "invalid") and its latency from
        `started` (a `time.perf_counter()` reading)."""
        metrics = self.cache.metrics
        metrics.requests.labels(outcome=outcome).inc()
        metrics.latency.labels(outcome=outcome).observe(time.perf_counter() - started)
