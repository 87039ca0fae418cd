"""The OpenAI-compatible endpoints: each request is validated, looked up, answered, remembered."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.config import GatewayConfig
from gateway.engine import CacheEngine, Clock, Hit, Miss, Outcome
from gateway.errors import ClientFacingError, ModelNotFound, PayloadTooLarge, RouteNotFound, UpstreamError
from gateway.metrics import Metrics
from gateway.scope import CacheKey, cache_key, tenant_for
from gateway.tasks import TaskTracker
from gateway.upstream import Upstream
from gateway.wire import ChatRequest, is_complete, parse_chat_request, parse_json, replay_completion

logger = logging.getLogger("semcache.proxy")


def error_response(error: ClientFacingError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=dict(headers or {}))


def bearer_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("api-key") or None  # Azure-style clients


async def read_body(request: Request, *, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes", code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _similarity(value: float | None) -> dict[str, str]:
    return {} if value is None else {"x-semcache-similarity": f"{value:.4f}"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Proxy:
    config: GatewayConfig
    engine: CacheEngine
    upstream: Upstream
    metrics: Metrics
    tasks: TaskTracker
    clock: Clock

    async def chat_completions(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            raw = await read_body(request, limit=self.config.server.max_body_bytes)
            chat = parse_chat_request(parse_json(raw))
            self._check_model(chat.model)
        except ClientFacingError as error:
            self.metrics.requests.labels(outcome="invalid").inc()
            return error_response(error)
        api_key = bearer_key(request)
        response, outcome = await self._answer(chat, api_key)
        self.metrics.requests.labels(outcome=outcome).inc()
        self.metrics.latency.labels(outcome=outcome).observe(time.perf_counter() - started)
        return response

    def _check_model(self, model: str) -> None:
        models = self.config.upstream.models
        if models and model not in models:
            raise ModelNotFound(
                f"The model '{model}' does not exist or is not served here", param="model", code="model_not_found"
            )

    async def _answer(self, chat: ChatRequest, api_key: str | None) -> tuple[Response, str]:
        if chat.stream:
            # Streams are passed through uncached until the streaming issue lands.
            return await self._stream_through(chat, api_key, reason="stream"), Outcome.BYPASS
        key = cache_key(chat, tenant=tenant_for(api_key, self.config.tenant_by_key_sha256))
        if not isinstance(key, CacheKey):
            headers = {"x-semcache": Outcome.BYPASS, "x-semcache-reason": key.reason}
            return await self._forward(chat, api_key, headers), Outcome.BYPASS
        decision = await self.engine.lookup(key)
        if isinstance(decision, Hit):
            return self._serve_hit(decision), (Outcome.EXACT if decision.exact else Outcome.HIT)
        headers = {"x-semcache": Outcome.MISS, **_similarity(decision.best_similarity)}
        if not decision.semantic and decision.fault is None:
            headers["x-semcache-reason"] = "prompt-over-embedder-window"
        return await self._forward(chat, api_key, headers, remember=(key, decision)), Outcome.MISS

    def _serve_hit(self, hit: Hit) -> Response:
        self.tasks.spawn(self.engine.record_hit(hit), name="record-hit")
        headers = {
            "x-semcache": Outcome.EXACT if hit.exact else Outcome.HIT,
            "x-semcache-entry": hit.entry.entry_id,
            **_similarity(hit.similarity),
        }
        return JSONResponse(replay_completion(hit.entry.response, now=self.clock()), headers=headers)

    async def _forward(
        self,
        chat: ChatRequest,
        api_key: str | None,
        headers: dict[str, str],
        *,
        remember: tuple[CacheKey, Miss] | None = None,
    ) -> Response:
        try:
            answer = await self.upstream.complete(chat.body, api_key=api_key)
        except UpstreamError as error:
            self.metrics.upstream_errors.labels(status=str(error.status_code)).inc()
            return error_response(error, headers)
        if remember is not None and is_complete(answer):
            key, miss = remember
            # Stored after the answer is sent: the client never waits for the store.
            self.tasks.spawn(self.engine.remember(key, miss, request=dict(chat.body), response=answer), name="remember")
        return JSONResponse(answer, headers=headers)

    async def _stream_through(self, chat: ChatRequest, api_key: str | None, *, reason: str) -> Response:
        headers = {"x-semcache": Outcome.BYPASS, "x-semcache-reason": reason}
        try:
            events = await self.upstream.stream(chat.body, api_key=api_key)
        except UpstreamError as error:
            self.metrics.upstream_errors.labels(status=str(error.status_code)).inc()
            return error_response(error, headers)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    async def models(self, request: Request) -> Response:
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": "semcache"}
            for model in self.config.upstream.models
        ]
        return JSONResponse({"object": "list", "data": data})


async def not_found(request: Request) -> Response:
    return error_response(RouteNotFound(f"Unknown route {request.method} {request.url.path}", code="unknown_url"))
