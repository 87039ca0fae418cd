"""The OpenAI wire format: request validation, error bodies and the answers we rebuild from cache."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.errors import InvalidRequest

Endpoint = Literal["chat", "text"]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
COMPLETE_FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "function_call"})


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionRequest:
    """A validated chat or legacy text completion request.

    `body` is forwarded upstream as the client sent it (less the gateway's own `cache` object).
    `prompt` is the text compared by meaning, `context` what came before it (system prompt,
    earlier turns); `uncacheable` says why the request may not be served from or stored in cache.
    """

    endpoint: Endpoint
    body: Mapping[str, Any]
    model: str
    stream: bool
    include_usage: bool
    n: int
    prompt: str | None
    context: tuple[Any, ...]
    uncacheable: str | None


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from exc


def _number(body: Mapping[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be a number between {low:g} and {high:g}, got {value!r}", param=name)


def _positive_int(body: Mapping[str, Any], name: str) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"'{name}' must be a positive integer, got {value!r}", param=name)


def _content_ok(content: Any) -> bool:
    if isinstance(content, str):
        return True
    if isinstance(content, list):
        return all(isinstance(part, dict) and isinstance(part.get("type"), str) for part in content)
    return False


def _check_message(index: int, message: Any) -> None:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise InvalidRequest(f"{param} must be an object", param=param)
    role = message.get("role")
    if role not in ROLES:
        raise InvalidRequest(
            f"{param}.role must be one of {', '.join(sorted(ROLES))}, got {role!r}", param=f"{param}.role"
        )
    content = message.get("content")
    may_be_empty = role == "assistant" and ("tool_calls" in message or "function_call" in message)
    if content is None and may_be_empty:
        return
    if not _content_ok(content):
        raise InvalidRequest(
            f"{param}.content must be a string or a list of content parts, got {type(content).__name__}",
            param=f"{param}.content",
        )


def _check_common(data: Any) -> tuple[str, bool, int, bool]:
    """Fields both endpoints share: model, stream, sampling parameters."""
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string", param="model")
    stream = data.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest(f"'stream' must be a boolean, got {stream!r}", param="stream")
    stream_options = data.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise InvalidRequest("'stream_options' must be an object", param="stream_options")
    _number(data, "temperature", 0, 2)
    _number(data, "top_p", 0, 1)
    _positive_int(data, "n")
    _positive_int(data, "max_tokens")
    _positive_int(data, "max_completion_tokens")
    stop = data.get("stop")
    stop_ok = (
        stop is None
        or isinstance(stop, str)
        or (isinstance(stop, list) and all(isinstance(item, str) for item in stop))
    )
    if not stop_ok:
        raise InvalidRequest("'stop' must be a string or an array of strings", param="stop")
    include_usage = bool(stream and (stream_options or {}).get("include_usage"))
    return model, bool(stream), data.get("n") or 1, include_usage


def parse_chat_request(data: Any) -> CompletionRequest:
    """Validate the parts the gateway relies on; the upstream judges the rest."""
    model, stream, n, include_usage = _check_common(data)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' is required and must be a non-empty array", param="messages")
    for index, message in enumerate(messages):
        _check_message(index, message)
    tools = data.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array", param="tools")
    last = messages[-1]
    prompt = message_text(last) if last.get("role") == "user" else None
    uncacheable = None
    if n > 1:
        uncacheable = "n>1"
    elif last.get("role") != "user":
        uncacheable = "last-message-not-user"
    elif prompt is None:
        uncacheable = "non-text-prompt"
    extras = {key: value for key, value in last.items() if key not in ("role", "content")}
    return CompletionRequest(
        endpoint="chat",
        body=data,
        model=model,
        stream=stream,
        include_usage=include_usage,
        n=n,
        prompt=prompt,
        # A name or other field on the last message changes the question, so it joins the context.
        context=(*messages[:-1], {"last_message_fields": extras}) if extras else tuple(messages[:-1]),
        uncacheable=uncacheable,
    )


def parse_text_request(data: Any) -> CompletionRequest:
    """A legacy /v1/completions request: one string prompt is cacheable; batches pass through."""
    model, stream, n, include_usage = _check_common(data)
    prompt = data.get("prompt")
    valid = isinstance(prompt, str) or (
        isinstance(prompt, list) and bool(prompt) and all(isinstance(item, str | int) for item in prompt)
    )
    if not valid:
        raise InvalidRequest("'prompt' is required and must be a string or an array", param="prompt")
    uncacheable = None
    if n > 1:
        uncacheable = "n>1"
    elif not isinstance(prompt, str):
        uncacheable = "batch-or-token-prompt"
    elif data.get("suffix") is not None or data.get("echo"):
        uncacheable = "suffix-or-echo"
    return CompletionRequest(
        endpoint="text",
        body=data,
        model=model,
        stream=stream,
        include_usage=include_usage,
        n=n,
        prompt=prompt if isinstance(prompt, str) else None,
        context=(),
        uncacheable=uncacheable,
    )


def message_text(message: Mapping[str, Any]) -> str | None:
    """The message's text, or None when it carries anything else (images, audio...)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(part.get("type") == "text" for part in content):
        return "\n".join(str(part.get("text", "")) for part in content)
    return None


def is_complete(response: Mapping[str, Any]) -> bool:
    """Only a finished, successful answer may be stored."""
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    return all(
        isinstance(choice, dict) and choice.get("finish_reason") in COMPLETE_FINISH_REASONS for choice in choices
    )


def replay_completion(stored: Mapping[str, Any], *, endpoint: Endpoint, now: float) -> dict[str, Any]:
    """The stored answer under a fresh id and timestamp; `usage` stays so token accounting adds up."""
    prefix = "chatcmpl" if endpoint == "chat" else "cmpl"
    return {**stored, "id": f"{prefix}-{uuid.uuid4().hex}", "created": int(now)}


def encode_sse(data: Mapping[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()
