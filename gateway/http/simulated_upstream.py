"""A simulated OpenAI-compatible LLM server: a STAND-IN for a real model, for demos, tests and benches.

It answers /v1/chat/completions with text derived from the request (so a wrong cached answer is
visible), streams SSE when asked, and can be told to fail, stall, truncate a stream or answer 429
through POST /control. Errors have OpenAI's shape, with the type, code, param, message and headers
(retry-after, x-ratelimit-*) it is told; answers carry x-request-id, openai-processing-ms and
x-ratelimit-* as OpenAI's do. Every request it receives is recorded and listed at GET /control/requests.

    semcache simulate-upstream --port 9000 [--latency-ms 200] [--capacity 8] [--classes classes.json]

A realistic stand-in must answer paraphrases alike and different questions differently, or a cache
that learns from the upstream's answers (verified thresholds) rightly learns never to serve: given
`classes` (prompt → class label), every prompt of a class gets that class's answer. Given a
`capacity` (concurrent requests), it answers 429 with Retry-After beyond it, and its latency grows
with the requests in flight, as a loaded model server's does.

It ships with the gateway (the demo, the benches and the tests use it); it is not an LLM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass(slots=True)
class Faults:
    """What the next `times` requests do instead of answering normally (times < 0: forever)."""

    status: int | None = None
    stall_s: float = 0.0
    truncate_stream: bool = False
    finish_reason: str = "stop"
    chunk_delay_s: float = 0.0
    times: int = -1
    # The error body and headers of a failure (status set); None: derived from the status.
    error_type: str | None = None
    error_code: str | None = None
    error_param: str | None = None
    error_message: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def error(self) -> JSONResponse:
        status = self.status or 500
        default_type = {400: "invalid_request_error", 429: "rate_limit_error"}.get(status, "server_error")
        body = {
            "error": {
                "message": self.error_message or f"simulated failure {status}",
                "type": self.error_type or default_type,
                "param": self.error_param,
                "code": self.error_code,
            }
        }
        return JSONResponse(body, status_code=status, headers=self.headers)


def _answer_headers() -> dict[str, str]:
    """What OpenAI sends with every answer: a request id, its processing time, the caller's limits."""
    return {
        "x-request-id": f"req_{uuid.uuid4().hex}",
        "openai-processing-ms": "7",
        "x-ratelimit-limit-requests": "10000",
        "x-ratelimit-remaining-requests": "9999",
    }


@dataclass(slots=True)
class UpstreamState:
    latency_ms: float = 0.0
    # Normalized prompt (whitespace and case folded) → class: prompts of a class are answered alike.
    classes: dict[str, str] = field(default_factory=dict)
    # Most requests in flight at once (None: unbounded); beyond it, 429. Latency grows with load:
    # latency_ms * (1 + in_flight / capacity).
    capacity: int | None = None
    in_flight: int = 0
    faults: Faults = field(default_factory=Faults)
    received: list[dict[str, Any]] = field(default_factory=list)
    record: bool = True
    # Chat streams sent to their end, and those whose client (the gateway) went away part-way.
    streams_finished: int = 0
    streams_abandoned: int = 0

    def take_faults(self) -> Faults:
        faults = self.faults
        if faults.times > 0:
            faults.times -= 1
            if faults.times == 0:
                self.faults = Faults()
        return faults


def class_key(prompt: str) -> str:
    """How `UpstreamState.classes` is keyed: case and whitespace do not matter."""
    return " ".join(prompt.lower().split())


def _answer_text(body: dict[str, Any], classes: dict[str, str]) -> str:
    messages = body.get("messages") or []
    last = messages[-1].get("content") if messages else ""
    if isinstance(last, list):
        last = " ".join(str(part.get("text", "")) for part in last)
    turns = len(messages)
    temperature = body.get("temperature")
    label = classes.get(class_key(str(last)))
    if label is not None:
        return f"Simulated answer from {body.get('model')} (turns={turns}, t={temperature}) for class {label}."
    return f"Simulated answer from {body.get('model')} (turns={turns}, t={temperature}) to: {last}"


def _tool_calls(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    if not tools or body.get("tool_choice") == "none":
        return None
    name = tools[0].get("function", {}).get("name", "tool")
    messages = body.get("messages") or []
    arguments = json.dumps({"query": messages[-1].get("content") if messages else ""})
    call_id = f"call_{uuid.uuid4().hex[:8]}"
    return [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]


def _usage(body: dict[str, Any], text: str) -> dict[str, int]:
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
    completion_tokens = len(text.split())
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def create_upstream_app(state: UpstreamState | None = None) -> Starlette:  # noqa: PLR0915 - one closure per route
    state = state or UpstreamState()

    async def chat_completions(request: Request) -> Response:
        body = await request.json()
        if state.record:
            state.received.append(body)
        if state.capacity is not None and state.in_flight >= state.capacity:
            return _overloaded()
        state.in_flight += 1
        handed_to_stream = False
        try:
            response = await _chat_answer(state, body)
            if isinstance(response, StreamingResponse):
                handed_to_stream = True  # the stream's end releases its slot
            return response
        finally:
            if not handed_to_stream:
                state.in_flight -= 1

    async def completions(request: Request) -> Response:
        """Legacy text completions: the answer is derived from `prompt`."""
        body = await request.json()
        if state.record:
            state.received.append(body)
        faults = state.take_faults()
        if faults.stall_s:
            await asyncio.sleep(faults.stall_s)
        if faults.status is not None:
            return faults.error()
        text = f"Simulated completion from {body.get('model')} of: {body.get('prompt')}"
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        usage = {"prompt_tokens": len(str(body.get("prompt")).split()), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        header = {"id": completion_id, "object": "text_completion", "created": created, "model": body.get("model")}
        if not body.get("stream"):
            choice = {"index": 0, "text": text, "finish_reason": faults.finish_reason, "logprobs": None}
            return JSONResponse({**header, "choices": [choice], "usage": usage}, headers=_answer_headers())

        async def events() -> AsyncIterator[bytes]:
            for word in text.split(" "):
                choice = {"index": 0, "text": f"{word} ", "finish_reason": None, "logprobs": None}
                yield f"data: {json.dumps({**header, 'choices': [choice]})}\n\n".encode()
            last = {"index": 0, "text": "", "finish_reason": faults.finish_reason, "logprobs": None}
            yield f"data: {json.dumps({**header, 'choices': [last]})}\n\n".encode()
            if (body.get("stream_options") or {}).get("include_usage"):
                yield f"data: {json.dumps({**header, 'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=_answer_headers())

    async def embeddings(request: Request) -> Response:
        """Deterministic toy vectors (not semantic): enough to see a request pass through."""
        body = await request.json()
        if state.record:
            state.received.append(body)
        inputs = body.get("input")
        texts = inputs if isinstance(inputs, list) else [inputs]
        data = [
            {"object": "embedding", "index": i, "embedding": [len(str(text)) / 100.0, float(i), 1.0]}
            for i, text in enumerate(texts)
        ]
        usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        return JSONResponse({"object": "list", "data": data, "model": body.get("model"), "usage": usage})

    async def echo(request: Request) -> Response:
        """Any other /v1 route: says what it received, so a proxy's faithfulness can be checked."""
        body = await request.body()
        return JSONResponse(
            {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "body": body.decode(errors="replace"),
                "authorization": request.headers.get("authorization"),
            },
            headers={"x-simulated-upstream": "echo"},
        )

    async def control(request: Request) -> Response:
        settings = await request.json()
        if "latency_ms" in settings:
            state.latency_ms = float(settings.pop("latency_ms"))
        if "record" in settings:
            state.record = bool(settings.pop("record"))
        if "capacity" in settings:
            capacity = settings.pop("capacity")
            state.capacity = None if capacity is None else int(capacity)
        if "classes" in settings:
            state.classes = {class_key(prompt): str(label) for prompt, label in settings.pop("classes").items()}
        state.faults = Faults(**settings)
        return JSONResponse({"ok": True})

    async def received(request: Request) -> Response:
        return JSONResponse(state.received)

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "sim-large", "object": "model", "owned_by": "sim"}]})

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/control", control, methods=["POST"]),
            Route("/control/requests", received),
            Route("/v1/{rest:path}", echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ]
    )
    app.state.upstream = state
    return app


def _latency_s(state: UpstreamState) -> float:
    """A loaded server answers slower: the base latency, stretched by the share of capacity in use."""
    load = state.in_flight / state.capacity if state.capacity else 0.0
    return state.latency_ms / 1000 * (1 + load)


def _overloaded() -> Response:
    error = {"message": "Rate limit reached: too many requests in flight", "type": "rate_limit_error",
             "param": None, "code": "rate_limit_exceeded"}  # fmt: skip
    return JSONResponse({"error": error}, status_code=429, headers={"retry-after": "1"})


async def _chat_answer(state: UpstreamState, body: dict[str, Any]) -> Response:
    faults = state.take_faults()
    if state.latency_ms:
        await asyncio.sleep(_latency_s(state))
    if faults.stall_s:
        await asyncio.sleep(faults.stall_s)
    if faults.status is not None:
        return faults.error()
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    text = _answer_text(body, state.classes)
    tool_calls = _tool_calls(body)
    finish_reason = "tool_calls" if tool_calls else faults.finish_reason
    message: dict[str, Any] = {"role": "assistant", "content": None if tool_calls else text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            _tracked(
                state,
                _stream(
                    body=body,
                    completion_id=completion_id,
                    created=created,
                    message=message,
                    finish_reason=finish_reason,
                    include_usage=include_usage,
                    truncate=faults.truncate_stream,
                    chunk_delay_s=faults.chunk_delay_s,
                ),
            ),
            media_type="text/event-stream",
            headers=_answer_headers(),
        )
    return JSONResponse(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": body.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
            "usage": _usage(body, text),
        },
        headers=_answer_headers(),
    )


async def _tracked(state: UpstreamState, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    finished = False
    try:
        async for event in events:
            yield event
        finished = True
    finally:  # also when the client hangs up: uvicorn cancels the response mid-stream
        state.in_flight -= 1
        if finished:
            state.streams_finished += 1
        else:
            state.streams_abandoned += 1


async def _stream(
    *,
    body: dict[str, Any],
    completion_id: str,
    created: int,
    message: dict[str, Any],
    finish_reason: str,
    include_usage: bool,
    truncate: bool,
    chunk_delay_s: float = 0.0,
) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        payload = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.get("model"),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(payload)}\n\n".encode()

    yield chunk({"role": "assistant", "content": ""}, None)
    if message.get("tool_calls"):
        for i, call in enumerate(message["tool_calls"]):
            yield chunk({"tool_calls": [{"index": i, **call}]}, None)
    else:
        words = str(message["content"]).split(" ")
        for i, word in enumerate(words):
            if truncate and i >= len(words) // 2:
                return  # the connection ends with neither a finish_reason nor [DONE]
            yield chunk({"content": word if i == 0 else f" {word}"}, None)
            await asyncio.sleep(chunk_delay_s)
    yield chunk({}, finish_reason)
    if include_usage:
        usage: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.get("model"),
            "choices": [],
            "usage": _usage(body, str(message.get("content") or "")),
        }
        yield f"data: {json.dumps(usage)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--capacity", type=int, help="most requests in flight; beyond it 429")
    parser.add_argument("--classes", type=Path, help='a JSON file {"prompt": "class", ...}: a class is answered alike')
    args = parser.parse_args(argv)
    classes = json.loads(args.classes.read_text(encoding="utf-8")) if args.classes else {}
    state = UpstreamState(
        latency_ms=args.latency_ms,
        record=False,
        capacity=args.capacity,
        classes={class_key(prompt): str(label) for prompt, label in classes.items()},
    )
    uvicorn.run(create_upstream_app(state), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
