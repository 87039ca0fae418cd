"""What the proxy and the middleware both answer with: OpenAI-style errors, the x-semcache headers,
and stored answers as JSON or a replayed SSE stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.cache.engine import Outcome
from gateway.cache.semantic_cache import CacheHit, CacheMiss, NotCacheable
from gateway.errors import ClientFacingError
from gateway.wire import CompletionRequest, replay_completion
from gateway.wire.streams import replay_chat_stream, replay_text_stream


def error_response(error: ClientFacingError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=dict(headers or {}))


def bearer_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("api-key") or None  # Azure-style clients


def _optional(similarity: float | None, category: str | None) -> dict[str, str]:
    headers = {} if similarity is None else {"x-semcache-similarity": f"{similarity:.4f}"}
    return headers if category is None else {**headers, "x-semcache-category": category}


def lookup_headers(found: CacheHit | CacheMiss | NotCacheable) -> dict[str, str]:
    """The x-semcache headers that say what the cache did with this request."""
    if isinstance(found, NotCacheable):
        return {"x-semcache": Outcome.BYPASS, "x-semcache-reason": found.reason, **_optional(None, found.category)}
    if isinstance(found, CacheHit):
        return {
            "x-semcache": found.outcome,
            "x-semcache-entry": found.entry_id,
            **_optional(found.similarity, found.category),
        }
    headers = {"x-semcache": Outcome.MISS, **_optional(found.best_similarity, found.category)}
    if found.reason is not None:
        headers["x-semcache-reason"] = found.reason
    return headers


async def _events(events: Iterator[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event


def stored_response(request: CompletionRequest, answer: Mapping[str, Any], headers: Mapping[str, str]) -> Response:
    """A stored answer as the request wants it: JSON, or a replayed stream."""
    if not request.stream:
        return JSONResponse(answer, headers=dict(headers))
    replay = replay_chat_stream if request.endpoint == "chat" else replay_text_stream
    events = replay(answer, include_usage=request.include_usage)
    return StreamingResponse(_events(events), media_type="text/event-stream", headers=dict(headers))


def coalesced_response(request: CompletionRequest, shared: Mapping[str, Any], *, now: float) -> Response:
    """The answer an identical request in flight got, served to one that waited for it."""
    headers = {"x-semcache": Outcome.EXACT, "x-semcache-reason": "coalesced"}
    return stored_response(request, replay_completion(shared, endpoint=request.endpoint, now=now), headers)
