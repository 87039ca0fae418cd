"""`SemanticCacheMiddleware`: the cache in front of any ASGI app that serves OpenAI-style routes.

    app = FastAPI(...)                      # or any Starlette / plain ASGI app
    app.add_middleware(SemanticCacheMiddleware, config=GatewayConfig(...))
    # or: app = SemanticCacheMiddleware(app, cache=SemanticCache(config, embedder=...))

`POST {path_prefix}/chat/completions` and `POST {path_prefix}/completions` are looked up. A hit is
answered here (JSON, or a replayed SSE stream) and never reaches the app. A miss goes to the app with
its body replayed; the app's response is forwarded as it comes and recorded on the way, and a 200 with
a complete answer (a finish_reason, and `[DONE]` for a stream) is remembered after it was sent, under
the category the policy gives its prompt. A stream that breaks, errors or is abandoned by the client
is never stored. Identical misses in flight together reach the app once; the others are served its
answer (`x-semcache: coalesced`), or go to the app themselves if it fails. Every other route
and method passes through untouched. Responses of the cached routes carry the proxy's `x-semcache`
headers.

Invalid requests: a body that is not JSON, or not a valid OpenAI request, goes to the app as it is
(`x-semcache: bypass`, `x-semcache-reason: invalid-request`): the app owns its API and its error
format. The cache's own directives (`Cache-Control`, `x-semcache-threshold`, the `cache` body
object) are the middleware's, so a bad one is answered here with the proxy's OpenAI-style 400. The
`cache` object is removed from the body before the app sees it.

The cache is opened in the ASGI lifespan (around the app's own) and closed at shutdown. Under a
server that runs no lifespan, it opens on the first request; `aclose()` then closes it. A
`SemanticCache` that is already open when handed over stays its owner's to close.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.cache.decisions import Outcome
from gateway.cache.lifetime import CacheLifetime
from gateway.cache.semantic_cache import SemanticCache
from gateway.cache.serving import Forward, Reply, Serving
from gateway.config import GatewayConfig
from gateway.errors import ClientFacingError, InvalidRequest
from gateway.http.responses import bearer_key, error_response, lookup_headers, reply_response
from gateway.wire import CompletionRequest, Endpoint, parse_json
from gateway.wire.cache_control import CacheControl, parse_cache_control
from gateway.wire.streams import StreamRecorder

logger = logging.getLogger("semcache.middleware")

OnComplete = Callable[[Mapping[str, Any]], None]

# A recorded answer larger than this is forwarded but not stored.
_MAX_RECORDED_BYTES = 8 * 1024 * 1024


class SemanticCacheMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        cache: SemanticCache | None = None,
        config: GatewayConfig | None = None,
        path_prefix: str = "/v1",
    ) -> None:
        if (cache is None) == (config is None):
            raise TypeError("SemanticCacheMiddleware takes exactly one of cache=SemanticCache(...) or config=...")
        if cache is None:
            assert config is not None
            cache = SemanticCache(config)
        self.app = app
        self.cache = cache
        prefix = path_prefix.rstrip("/")
        self._routes: dict[str, Endpoint] = {f"{prefix}/chat/completions": "chat", f"{prefix}/completions": "text"}
        self._lifetime = CacheLifetime(cache)
        self._serving = Serving(cache)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        endpoint = self._routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        await self._completion(scope, receive, send, endpoint)

    # -- the cache's lifetime -------------------------------------------------------------------

    async def open(self) -> None:
        """Open the cache unless it is open already (idempotent; the lifespan calls it)."""
        await self._lifetime.open()

    async def aclose(self) -> None:
        """Close the cache if this middleware opened it (idempotent; the lifespan calls it)."""
        await self._lifetime.aclose()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Open the cache before the app's startup and close it after the app's shutdown."""
        took_startup = False

        async def receive_around() -> Message:
            nonlocal took_startup
            message = await receive()
            if message["type"] == "lifespan.startup":
                took_startup = True
                await self.open()  # if this raises, the app reports lifespan.startup.failed
            return message

        async def send_around(message: Message) -> None:
            if message["type"] in ("lifespan.startup.failed", "lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.aclose()
            await send(message)

        try:
            await self.app(scope, receive_around, send_around)
        except Exception:
            if took_startup:
                await self.aclose()
                raise
            # The app raised before taking `lifespan.startup`: it does not speak lifespan (the ASGI way
            # of saying so). The middleware still does, for the cache.
            logger.info("the wrapped app does not support lifespan; the middleware runs it for the cache")
            await _lifespan_alone(self, receive, send)
        except BaseException:
            await self.aclose()
            raise

    # -- the cached routes ----------------------------------------------------------------------

    async def _completion(self, scope: Scope, receive: Receive, send: Send, endpoint: Endpoint) -> None:
        started = time.perf_counter()
        limit = self.cache.config.server.max_body_bytes
        chunks, more_body, disconnected = await _read_body(receive, limit=limit)
        if disconnected:
            return  # the client left before it finished sending its request
        if more_body:  # too large to buffer: streamed through as it is, not cached
            bypass = {"x-semcache": Outcome.BYPASS, "x-semcache-reason": "body-too-large"}
            await self._forward(scope, _Replay(chunks, receive, more_body=True), send, bypass)
            return
        await self.open()
        body = b"".join(chunks)
        invalid = {"x-semcache": Outcome.BYPASS, "x-semcache-reason": "invalid-request"}
        try:
            data = parse_json(body)
        except InvalidRequest:
            self._serving.record("invalid", started)
            await self._forward(scope, _Replay([body], receive), send, invalid)
            return
        body_cache = None
        if isinstance(data, dict) and "cache" in data:  # the gateway's own: the app never sees it
            body_cache = data.pop("cache")
            body = json.dumps(data).encode()
            scope = _with_content_length(scope, len(body))
        try:
            control = parse_cache_control(Headers(scope=scope), body_cache)
        except ClientFacingError as error:
            self._serving.record("invalid", started)
            await error_response(error)(scope, receive, send)
            return
        try:
            request = self.cache.parse(data, endpoint=endpoint)
        except InvalidRequest:
            self._serving.record("invalid", started)
            await self._forward(scope, _Replay([body], receive), send, invalid)
            return
        await self._answer(scope, _Replay([body], receive), send, request, control, started=started)

    async def _answer(
        self,
        scope: Scope,
        receive: _Replay,
        send: Send,
        request: CompletionRequest,
        control: CacheControl,
        *,
        started: float,
    ) -> None:
        try:
            action = await self._serving.serve(request, api_key=bearer_key(Request(scope)), control=control)
        except ClientFacingError as error:  # a per-request threshold looser than the category's
            self._serving.record("invalid", started)
            await error_response(error)(scope, receive, send)
            return
        if isinstance(action, Reply):
            await reply_response(action)(scope, receive, send)
            self._serving.record(action.outcome, started)
            return
        if not isinstance(action, Forward):  # no router here, so nothing is ever shed
            raise TypeError(f"the middleware's serving step cannot {type(action).__name__}")
        headers = lookup_headers(action.decision)
        try:
            await self._forward(scope, receive, send, headers, on_complete=action.complete, endpoint=request.endpoint)
        finally:
            action.end()  # no complete answer (an error, a broken stream): followers ask the app themselves
            self._serving.record(action.outcome, started)

    async def _forward(
        self,
        scope: Scope,
        receive: _Replay,
        send: Send,
        headers: Mapping[str, str],
        *,
        on_complete: OnComplete | None = None,
        endpoint: Endpoint = "chat",
    ) -> None:
        """The app answers; its response goes to the client as it comes, with our headers added."""
        relay = _Relay(send, headers, on_complete=on_complete, endpoint=endpoint, client_gone=receive.client_gone)
        await self.app(scope, receive, relay)


async def _lifespan_alone(middleware: SemanticCacheMiddleware, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await middleware.open()
            except Exception as exc:  # reported to the server, which then refuses to start
                logger.exception("could not open the semantic cache")
                await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await middleware.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive, *, limit: int) -> tuple[list[bytes], bool, bool]:
    """Buffer the request body up to `limit` bytes: (chunks, more_body, client disconnected)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return chunks, False, True
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        more_body = bool(message.get("more_body", False))
        if not more_body or size > limit:
            return chunks, more_body, False


class _Replay:
    """The app's `receive`: the buffered body first, then the client's own channel (the rest of an
    over-large body, then `http.disconnect`, which marks the client as gone)."""

    def __init__(self, chunks: list[bytes], receive: Receive, *, more_body: bool = False) -> None:
        self._chunks = list(chunks) or [b""]
        self._receive = receive
        self._more_body = more_body
        self.client_gone = asyncio.Event()

    async def __call__(self) -> Message:
        if self._chunks:
            chunk = self._chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(self._chunks) or self._more_body}
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.client_gone.set()
        return message


def _with_content_length(scope: Scope, length: int) -> Scope:
    headers = [(name, value) for name, value in scope["headers"] if name.lower() != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode())]}


class _Relay:
    """The app's `send`: forwards every message as it comes, adds our headers to the response start,
    and records a 200 JSON or SSE answer on the side; `on_complete` gets it once it was all sent."""

    def __init__(
        self,
        send: Send,
        headers: Mapping[str, str],
        *,
        on_complete: OnComplete | None,
        endpoint: Endpoint,
        client_gone: asyncio.Event,
    ) -> None:
        self._send = send
        self._headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
        self._on_complete = on_complete
        self._endpoint = endpoint
        self._client_gone = client_gone
        self._recording: _JsonAnswer | _StreamAnswer | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            if self._on_complete is not None and message["status"] == 200:
                self._recording = _recorder_for(Headers(raw=headers), self._endpoint)
            await self._send({**message, "headers": [*headers, *self._headers]})
            return
        if message["type"] != "http.response.body" or self._recording is None:
            await self._send(message)
            return
        recording = self._recording
        if not recording.feed(message.get("body", b"")):
            self._recording = None  # unreadable or too large: forwarded, not stored
        await self._send(message)
        if message.get("more_body", False) or self._recording is None:
            return
        self._recording = None
        answer = recording.answer()
        if answer is not None and self._on_complete is not None and not self._client_gone.is_set():
            self._on_complete(answer)


def _recorder_for(headers: Headers, endpoint: Endpoint) -> _JsonAnswer | _StreamAnswer | None:
    if headers.get("content-encoding", "identity").lower() != "identity":
        return None
    content_type = headers.get("content-type", "").lower()
    if content_type.startswith("application/json"):
        return _JsonAnswer()
    if content_type.startswith("text/event-stream"):
        return _StreamAnswer(endpoint)
    return None


class _JsonAnswer:
    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> bool:
        self._chunks.append(chunk)
        self._size += len(chunk)
        return self._size <= _MAX_RECORDED_BYTES

    def answer(self) -> dict[str, Any] | None:
        try:
            answer = json.loads(b"".join(self._chunks))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        return answer if isinstance(answer, dict) else None


class _StreamAnswer:
    """Parses SSE as it arrives into one completion; `answer()` only for a complete stream."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._recorder = StreamRecorder(object_type="chat.completion" if endpoint == "chat" else "text_completion")
        self._buffer = b""
        self._size = 0
        self._done = False

    def feed(self, chunk: bytes) -> bool:
        self._size += len(chunk)
        if self._size > _MAX_RECORDED_BYTES:
            return False
        *blocks, self._buffer = (self._buffer + chunk).replace(b"\r\n", b"\n").split(b"\n\n")
        for block in blocks:
            lines = block.decode("utf-8", errors="replace").splitlines()
            data = "\n".join(line[5:].lstrip() for line in lines if line.startswith("data:"))
            if not data:
                continue
            if data == "[DONE]":
                self._done = True
                continue
            try:
                event = json.loads(data)
            except json.JSONDecodeError:
                return False
            if not isinstance(event, dict) or "error" in event:
                return False  # an error reported in-band: the answer is broken
            self._recorder.add(event)
        return True

    def answer(self) -> dict[str, Any] | None:
        if not (self._done and self._recorder.complete()):
            return None
        return self._recorder.completion()
