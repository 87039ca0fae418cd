"""The upstream seam: where misses go (`Upstream`); backends are peers (litellm_backend)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from gateway.wire import CompletionRequest

Chunk = Mapping[str, Any]


@runtime_checkable
class Upstream(Protocol):
    async def complete(self, request: CompletionRequest, *, api_key: str | None) -> dict[str, Any]:
        """A non-streaming completion as an OpenAI response body, or raise `UpstreamError`."""
        ...

    async def stream(self, request: CompletionRequest, *, api_key: str | None) -> AsyncIterator[Chunk]:
        """Open a streaming completion, raising `UpstreamError` if it is refused, and return its
        chunks; a stream that fails part-way raises `UpstreamError` from the iterator."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployment:
    """Where a miss can go."""

    name: str
    # litellm model string without the provider prefix; None: the model the client asked for.
    model: str | None
    provider: str
    api_base: str
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float
    tier: Literal["small", "large"] = "large"


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteRequest:
    model: str
    category: str | None
    tier: Literal["small", "large"] | None
    near_miss: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    deployment: Deployment
    reason: str


class Router(Protocol):
    def route(self, request: RouteRequest) -> Route: ...
