"""Server-sent event streams: record a streamed answer into one completion, and replay a stored
completion as a stream. One stored answer serves both streaming and non-streaming clients."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.wire import COMPLETE_FINISH_REASONS, encode_sse

DONE = b"data: [DONE]\n\n"
# Replayed content is cut into pieces of about this many characters, at word boundaries, so that
# clients rendering incrementally behave as they do for a live stream.
_REPLAY_PIECE_CHARS = 24


@dataclass(slots=True)
class _Choice:
    role: str = "assistant"
    content: list[str] = field(default_factory=list)
    saw_content: bool = False
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    text: list[str] = field(default_factory=list)  # legacy /v1/completions


class StreamRecorder:
    """Folds chat (or legacy text) completion chunks into the completion a non-streaming call returns."""

    def __init__(self, *, object_type: str = "chat.completion") -> None:
        self._object = object_type
        self._choices: dict[int, _Choice] = {}
        self._header: dict[str, Any] = {}
        self._usage: Mapping[str, Any] | None = None

    def add(self, chunk: Mapping[str, Any]) -> None:
        if not self._header:
            self._header = {key: chunk[key] for key in ("id", "created", "model", "system_fingerprint") if key in chunk}
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for raw in chunk.get("choices") or ():
            choice = self._choices.setdefault(int(raw.get("index", 0)), _Choice())
            if raw.get("finish_reason"):
                choice.finish_reason = raw["finish_reason"]
            if "text" in raw:
                choice.text.append(str(raw["text"] or ""))
            delta = raw.get("delta") or {}
            if delta.get("role"):
                choice.role = delta["role"]
            if delta.get("content") is not None:
                choice.saw_content = True
                choice.content.append(delta["content"])
            for call in delta.get("tool_calls") or ():
                _merge_tool_call(choice.tool_calls, call)

    def complete(self) -> bool:
        """Every choice ended with a finish_reason that marks a whole answer."""
        return bool(self._choices) and all(
            choice.finish_reason in COMPLETE_FINISH_REASONS for choice in self._choices.values()
        )

    @property
    def has_usage(self) -> bool:
        return self._usage is not None

    def completion(self) -> dict[str, Any]:
        choices: list[dict[str, Any]] = []
        for index, choice in sorted(self._choices.items()):
            if self._object == "text_completion":
                choices.append({"index": index, "text": "".join(choice.text), "finish_reason": choice.finish_reason})
                continue
            message: dict[str, Any] = {
                "role": choice.role,
                "content": "".join(choice.content) if choice.saw_content or not choice.tool_calls else None,
            }
            if choice.tool_calls:
                message["tool_calls"] = [choice.tool_calls[i] for i in sorted(choice.tool_calls)]
            choices.append({"index": index, "message": message, "finish_reason": choice.finish_reason})
        result: dict[str, Any] = {**self._header, "object": self._object, "choices": choices}
        if self._usage is not None:
            result["usage"] = dict(self._usage)
        return result


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: Mapping[str, Any]) -> None:
    """Tool calls arrive in pieces: id/type/name once, the JSON arguments split over many chunks."""
    index = int(delta.get("index", len(calls)))
    call = calls.setdefault(index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    function = delta.get("function") or {}
    if function.get("name"):
        call["function"]["name"] += function["name"]
    if function.get("arguments"):
        call["function"]["arguments"] += function["arguments"]


def _pieces(text: str) -> Iterator[str]:
    piece = ""
    for word in text.split(" "):
        candidate = f"{piece} {word}" if piece else word
        if piece and len(candidate) > _REPLAY_PIECE_CHARS:
            yield piece + " "
            piece = word
        else:
            piece = candidate
    if piece:
        yield piece


def replay_chat_stream(completion: Mapping[str, Any], *, include_usage: bool) -> Iterator[bytes]:
    """A stored chat completion as SSE events, the shape the OpenAI API streams: a role chunk,
    content (or tool-call) deltas, a finish chunk, the usage chunk when asked, then [DONE]."""
    header = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created"),
        "model": completion.get("model"),
    }
    if completion.get("system_fingerprint"):
        header["system_fingerprint"] = completion["system_fingerprint"]

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "finish_reason": finish_reason}
        return encode_sse({**header, "choices": [choice]})

    for choice in completion.get("choices") or ():
        index = int(choice.get("index", 0))
        message = choice.get("message") or {}
        yield chunk(index, {"role": message.get("role", "assistant"), "content": ""})
        for piece in _pieces(message.get("content") or ""):
            yield chunk(index, {"content": piece})
        for position, call in enumerate(message.get("tool_calls") or ()):
            yield chunk(index, {"tool_calls": [{"index": position, **copy.deepcopy(call)}]})
        yield chunk(index, {}, choice.get("finish_reason"))
    if include_usage and completion.get("usage"):
        yield encode_sse({**header, "choices": [], "usage": completion["usage"]})
    yield DONE


def replay_text_stream(completion: Mapping[str, Any], *, include_usage: bool) -> Iterator[bytes]:
    """A stored legacy text completion as SSE events."""
    header = {
        "id": completion.get("id"),
        "object": "text_completion",
        "created": completion.get("created"),
        "model": completion.get("model"),
    }
    for choice in completion.get("choices") or ():
        index = int(choice.get("index", 0))
        for piece in _pieces(choice.get("text") or ""):
            yield encode_sse({**header, "choices": [{"index": index, "text": piece, "finish_reason": None}]})
        finish = {"index": index, "text": "", "finish_reason": choice.get("finish_reason")}
        yield encode_sse({**header, "choices": [finish]})
    if include_usage and completion.get("usage"):
        yield encode_sse({**header, "choices": [], "usage": completion["usage"]})
    yield DONE


def decode_sse(raw: bytes) -> Iterator[Mapping[str, Any] | str]:
    """Parse SSE bytes into JSON events (and the literal "[DONE]"); for tests and passthrough."""
    for block in raw.decode().split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in block.splitlines() if line.startswith("data:"))
        if not data:
            continue
        yield data if data == "[DONE]" else json.loads(data)
