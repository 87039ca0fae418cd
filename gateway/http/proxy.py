"""The OpenAI-compatible endpoints: each request is validated, looked up, answered, remembered."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.cache.decisions import Outcome
from gateway.cache.engine import Clock
from gateway.cache.feedback import parse_feedback
from gateway.cache.semantic_cache import SemanticCache
from gateway.cache.serving import Refuse, Reply, Serving
from gateway.config import GatewayConfig
from gateway.errors import (
    ClientFacingError,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    RouteNotFound,
    UpstreamError,
)
from gateway.http.passthrough import Passthrough
from gateway.http.responses import bearer_key, error_response, lookup_headers, reply_response, response_id
from gateway.metrics import Metrics
from gateway.upstream import Call, Chunk, Route, Router, RouteRequest, Shed, Upstream, UpstreamStream
from gateway.wire import (
    CompletionRequest,
    encode_sse,
    is_complete,
    parse_chat_request,
    parse_json,
    parse_text_request,
)
from gateway.wire.cache_control import CacheControl, parse_cache_control
from gateway.wire.streams import DONE, StreamRecorder

logger = logging.getLogger("semcache.proxy")

Parser = Callable[[Any], CompletionRequest]
OnComplete = Callable[[Mapping[str, Any]], None]


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Proxy:
    cache: SemanticCache
    upstream: Upstream
    passthrough: Passthrough
    serving: Serving
    router: Router
    clock: Clock

    @property
    def config(self) -> GatewayConfig:
        return self.cache.config

    @property
    def metrics(self) -> Metrics:
        return self.cache.metrics

    async def chat_completions(self, request: Request) -> Response:
        return await self._completion(request, parse_chat_request)

    async def completions(self, request: Request) -> Response:
        return await self._completion(request, parse_text_request)

    async def _completion(self, request: Request, parse: Parser) -> Response:
        started = time.perf_counter()
        try:
            data = parse_json(await read_body(request, limit=self.config.server.max_body_bytes))
            control = parse_cache_control(request.headers, data.pop("cache", None) if isinstance(data, dict) else None)
            completion = parse(data)
            self._check_model(completion.model)
        except ClientFacingError as error:
            self.serving.record("invalid", started)
            return error_response(error)
        response, outcome = await self._answer(completion, control, bearer_key(request))
        self.serving.record(outcome, started)
        return response

    def _check_model(self, model: str) -> None:
        models = self.config.served_models
        if models and model not in models:
            raise ModelNotFound(
                f"The model '{model}' does not exist or is not served here", param="model", code="model_not_found"
            )

    async def _answer(
        self, request: CompletionRequest, control: CacheControl, api_key: str | None
    ) -> tuple[Response, str]:
        try:
            action = await self.serving.serve(request, api_key=api_key, control=control)
        except ClientFacingError as error:  # a per-request threshold looser than the category's
            return error_response(error), "invalid"
        if isinstance(action, Reply):
            return reply_response(action), action.outcome
        headers = lookup_headers(action.decision)
        if isinstance(action, Refuse):
            return self._shed(action.shed, headers), "shed"
        if action.route is None:  # `Serving` is built with the router: only a bug lands here
            raise RuntimeError("the proxy's serving step has no router")
        response = await self._from_upstream(
            action.request,
            api_key,
            headers,
            route=action.route,
            route_request=action.route_request,
            on_complete=action.complete,
            on_end=action.end,
        )
        return response, action.outcome

    def _shed(self, shed: Shed, headers: Mapping[str, str]) -> Response:
        self.metrics.route_decisions.labels(deployment="none", reason=shed.reason).inc()
        error = Overloaded(
            "Every model that could answer this request is at capacity; retry after a moment",
            retry_after_s=shed.retry_after_s,
        )
        headers = {**headers, "retry-after": str(shed.retry_after_s), "x-semcache-route-reason": shed.reason}
        return error_response(error, headers)

    def _retry(self, route_request: RouteRequest | None, tried: frozenset[str], error: UpstreamError) -> Route | None:
        """Another deployment for a request refused (429), failed (5xx) or timed out before its
        first byte; None when it may not be retried or there is nowhere else to go."""
        if route_request is None or (error.status_code != 429 and error.status_code < 500):
            return None
        route = self.router.route(replace(route_request, exclude=tried))
        if isinstance(route, Shed):
            return None
        kind = "429" if error.status_code == 429 else "timeout" if error.error_type == "timeout" else "5xx"
        return replace(route, reason=f"retry-after-{kind}")

    async def _from_upstream(
        self,
        request: CompletionRequest,
        api_key: str | None,
        headers: dict[str, str],
        *,
        route: Route,
        route_request: RouteRequest | None = None,
        on_complete: OnComplete | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> Response:
        """`on_complete` gets the whole answer if it is complete; `on_end` runs once the exchange
        is over either way (for a stream: when the stream ends, not when this returns). The
        upstream's own headers (request id, rate limits) go to this client only: `on_complete`
        gets the body alone, so a later hit never replays them. A 429, 5xx or timeout before the
        first byte is retried once on another deployment (`route_request` asks the router again,
        without the one that failed); nothing is retried once a byte has gone to the client."""
        streaming = False
        tried: frozenset[str] = frozenset()
        try:
            while True:
                deployment = route.deployment
                tried |= {deployment.name}
                routed = {**headers, "x-semcache-model": deployment.name, "x-semcache-route-reason": route.reason}
                self.metrics.route_decisions.labels(deployment=deployment.name, reason=route.reason).inc()
                call = self.router.call(deployment)
                try:
                    if request.stream:
                        response = await self._stream_from_upstream(
                            request, api_key, routed, on_complete, on_end, route=route, call=call
                        )
                        streaming = True
                        return response
                    answer = await self.upstream.complete(request, deployment=deployment, api_key=api_key)
                except UpstreamError as error:
                    call.end(status=error.status_code)
                    self.metrics.upstream_errors.labels(status=str(error.status_code)).inc()
                    retry = self._retry(route_request, tried, error)
                    if retry is None:
                        return error_response(error, {**error.headers, **routed})
                    route, route_request = retry, None  # once
                    continue
                except BaseException:  # the client went away, or a bug of ours: no verdict on the deployment
                    call.end(status=499)
                    raise
                call.end(status=None, tokens=_tokens(answer.body))
                if on_complete is not None and is_complete(answer.body):
                    on_complete(answer.body)
                return JSONResponse(answer.body, headers={**answer.headers, **routed, **response_id(answer.body)})
        finally:
            if on_end is not None and not streaming:
                on_end()

    async def _stream_from_upstream(
        self,
        request: CompletionRequest,
        api_key: str | None,
        headers: dict[str, str],
        on_complete: OnComplete | None,
        on_end: Callable[[], None] | None,
        *,
        route: Route,
        call: Call,
    ) -> Response:
        """Opens the stream and waits for its first chunk before the status line goes out: a refusal
        or failure until then is still an HTTP error the caller may retry elsewhere."""
        # Ask for the usage chunk even when the client did not, so that a stored answer can replay
        # it to a later client that does; it is not forwarded to a client that did not ask.
        body = {**request.body, "stream_options": {**(request.body.get("stream_options") or {}), "include_usage": True}}
        upstream_request = replace(request, body=body)
        chunks = await self.upstream.stream(upstream_request, deployment=route.deployment, api_key=api_key)
        events = aiter(chunks)
        try:
            first: Chunk | None = await anext(events)
        except StopAsyncIteration:
            first = None
        except BaseException:
            await chunks.aclose()
            raise
        call.first_byte()
        return StreamingResponse(
            self._relay(request, chunks, _prepend(first, events), on_complete, on_end, call=call),
            media_type="text/event-stream",
            headers={**chunks.headers, **headers, **response_id(first or {})},
        )

    async def _relay(
        self,
        request: CompletionRequest,
        chunks: UpstreamStream,
        events: AsyncIterator[Chunk],
        on_complete: OnComplete | None,
        on_end: Callable[[], None] | None,
        *,
        call: Call,
    ) -> AsyncIterator[bytes]:
        """Forward each chunk as it arrives while recording it. A stream that breaks, errors or is
        abandoned by the client never reaches `on_complete`, so it is never stored; either way the
        upstream stream is closed, so a client that goes away stops the upstream too. Never retried:
        the client has bytes already."""
        recorder = StreamRecorder(object_type="chat.completion" if request.endpoint == "chat" else "text_completion")
        status: int | None = 499  # the client went away (or we failed) before the end
        try:
            async for chunk in events:
                recorder.add(chunk)
                if chunk.get("usage") and not chunk.get("choices") and not request.include_usage:
                    continue
                yield encode_sse(chunk)
            status = None
            if recorder.complete():
                yield DONE
                if on_complete is not None:
                    on_complete(recorder.completion())
        except UpstreamError as error:
            status = error.status_code
            self.metrics.upstream_errors.labels(status=str(error.status_code)).inc()
            yield encode_sse(error.body())  # the status line is gone: report in-band, as OpenAI does
        finally:
            call.end(status=status, tokens=_tokens(recorder.completion()) if status is None else 0)
            try:
                await chunks.aclose()
            finally:
                if on_end is not None:
                    on_end()

    async def forward(self, request: Request) -> Response:
        """Routes the cache does not handle go to the upstream unchanged."""
        headers = {"x-semcache": Outcome.BYPASS, "x-semcache-reason": "not-cached-endpoint"}
        try:
            body = await read_body(request, limit=self.config.server.max_body_bytes)
            return await self.passthrough.forward(request, body=body, headers=headers)
        except ClientFacingError as error:
            if isinstance(error, UpstreamError):
                self.metrics.upstream_errors.labels(status=str(error.status_code)).inc()
            return error_response(error, headers)

    async def feedback(self, request: Request) -> Response:
        """POST /v1/feedback: `{"id": "<response id>" | "entry": "<x-semcache-entry>", "rating":
        "good" | "bad"}`, with the caller's own API key (only hits served to its tenant can be rated)."""
        try:
            data = parse_json(await read_body(request, limit=self.config.server.max_body_bytes))
            rated = parse_feedback(data)
            result = await self.cache.feedback(
                rating=rated.rating, response_id=rated.response_id, entry_id=rated.entry_id, api_key=bearer_key(request)
            )
        except ClientFacingError as error:
            return error_response(error)
        return JSONResponse(result.body())

    async def models(self, request: Request) -> Response:
        if not self.config.served_models:
            return await self.forward(request)
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": "semcache"}
            for model in self.config.served_models
        ]
        return JSONResponse({"object": "list", "data": data})


def _tokens(body: Mapping[str, Any]) -> int:
    usage = body.get("usage")
    total = usage.get("total_tokens") if isinstance(usage, Mapping) else None
    return total if isinstance(total, int) else 0


async def _prepend(first: Chunk | None, rest: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    if first is None:
        return
    yield first
    async for chunk in rest:
        yield chunk


async def not_found(request: Request) -> Response:
    return error_response(RouteNotFound(f"Unknown route {request.method} {request.url.path}", code="unknown_url"))
