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


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    deployment: Deployment
    reason: str  # x-semcache-route-reason, e.g. "preferred", "pinned", "only-deployment"


class Router(Protocol):
    def route(self, request: RouteRequest) -> Route: ...
