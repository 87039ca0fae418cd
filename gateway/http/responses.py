"""What the proxy and the middleware both answer with: OpenAI-style errors, the x-semcache headers,
and stored answers as JSON or a replayed SSE stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.cache.decisions import Bypass, Decision, Hit, Outcome
from gateway.cache.serving import Reply
from gateway.errors import ClientFacingError
from gateway.wire import CompletionRequest
from gateway.wire.streams import replay_chat_stream, replay_text_stream


def error_response(error: ClientFacingError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=dict(headers or {}))


def bearer_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("api-key") or None  # Azure-style clients


def lookup_headers(decision: Decision) -> dict[str, str]:
    """The x-semcache headers that say what the cache decided for this request."""
    headers = {"x-semcache": str(decision.outcome), **_category(decision)}
    if isinstance(decision, Bypass):
        return {**headers, "x-semcache-reason": decision.reason}
    if isinstance(decision, Hit):
        headers["x-semcache-entry"] = decision.entry_id
        similarity: float | None = decision.similarity
    else:
        similarity = decision.best_similarity
        if decision.reason is not None:
            headers["x-semcache-reason"] = decision.reason
    if similarity is not None:
        headers["x-semcache-similarity"] = f"{similarity:.4f}"
    if decision.rules is not None:
        headers["x-semcache-threshold"] = f"{decision.rules.hit_threshold:.4f}"
    return headers


def response_id(answer: Mapping[str, Any]) -> dict[str, str]:
    """`x-semcache-response-id`: the answer's own `id` (a hit's is fresh, a miss's the upstream's),
    what `POST /v1/feedback` takes as `id`; in a header too, so a streaming client has it at once."""
    identifier = answer.get("id")
    return {"x-semcache-response-id": identifier} if isinstance(identifier, str) and identifier else {}


def reply_headers(reply: Reply) -> dict[str, str]:
    if reply.outcome == Outcome.COALESCED:
        # The answer of an identical request in flight: it was never stored, so no entry to name.
        return {"x-semcache": Outcome.COALESCED, **_category(reply.decision), **response_id(reply.answer)}
    return {**lookup_headers(reply.decision), **response_id(reply.answer)}


def _category(decision: Decision) -> dict[str, str]:
    return {} if decision.category is None else {"x-semcache-category": decision.category}


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


def reply_response(reply: Reply) -> Response:
    """A `Reply` of the serving step: the cached answer, JSON or a replayed stream."""
    return stored_response(reply.request, reply.answer, reply_headers(reply))
