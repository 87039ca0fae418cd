"""The upstream seam: where misses go (`Upstream`); backends are peers (litellm_backend)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol, runtime_checkable

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
