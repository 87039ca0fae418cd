"""The upstream seams: where a miss can go (`Deployment`), which one it goes to (`Router`), and how
it is asked (`Upstream`); backends are peers (litellm_backend), routers too (routing)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from gateway.wire import CompletionRequest

Chunk = Mapping[str, Any]
Tier = Literal["small", "large"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployment:
    """Where a miss can go."""

    name: str  # e.g. "default"; reported in x-semcache-model
    model: str | None  # litellm model string without provider prefix; None = the model the client asked for
    provider: str  # litellm provider prefix, e.g. "openai"
    api_base: str
    api_key: str | None = field(default=None, repr=False)  # the operator's key; None = forward the caller's
    timeout_s: float
    tier: Tier = "large"


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    body: dict[str, Any]  # OpenAI response body
    model: str  # the deployment name that answered
    # Upstream headers forwarded on a miss (request id, rate limits, processing ms). They describe
    # this one exchange with the upstream, so they are never stored with the answer.
    headers: Mapping[str, str]


class UpstreamStream(Protocol):
    """An open streaming completion: its chunks, and `aclose` to stop the upstream early (a client
    that goes away must not leave the upstream generating)."""

    model: str  # the deployment name that answers
    headers: Mapping[str, str]  # as `Answer.headers`

    def __aiter__(self) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Upstream(Protocol):
    async def complete(self, request: CompletionRequest, *, deployment: Deployment, api_key: str | None) -> Answer:
        """A non-streaming completion from `deployment`, or raise `UpstreamError`."""
        ...

    async def stream(
        self, request: CompletionRequest, *, deployment: Deployment, api_key: str | None
    ) -> UpstreamStream:
        """Open a streaming completion on `deployment`, raising `UpstreamError` if it is refused; a
        stream that fails part-way raises `UpstreamError` from its iterator."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteRequest:
    model: str  # what the client asked for
    category: str | None
    tier: Tier | None  # the category's preferred tier (policy); None = no preference
    near_miss: bool
    offload: bool = True  # whether the category lets its misses go to the other tier under load
    # Deployments already tried for this request: a retry goes elsewhere.
    exclude: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    deployment: Deployment
    reason: str  # x-semcache-route-reason, e.g. "preferred", "pinned", "only-deployment"


@dataclass(frozen=True, slots=True, kw_only=True)
class Shed:
    """Every deployment that could take the request is past capacity (or cooling down): answer
    429 with Retry-After rather than queue."""

    retry_after_s: int
    reason: str = "shed"


class Call(Protocol):
    """One call to a deployment, as the router's load tracking sees it; `end` exactly once."""

    def end(self, *, status: int | None, tokens: int = 0) -> None:
        """`status`: None for a complete answer, else the upstream's error status."""
        ...

    def first_byte(self) -> None:
        """A stream's first chunk arrived (its time to first token)."""
        ...


class Router(Protocol):
    def route(self, request: RouteRequest) -> Route | Shed: ...

    def call(self, deployment: Deployment) -> Call:
        """Start tracking one call to `deployment` (in flight until `end`)."""
        ...

    def pressure(self, category: str, tier: Tier) -> float:
        """The pressure in [0, 1] the load of `tier` puts on `category`'s rules now, updating its
        hysteresis state; 0 for a router that measures no load."""
        ...
