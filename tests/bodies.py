"""OpenAI request and answer bodies for tests that drive the library API directly."""

from __future__ import annotations

from typing import Any


def chat(prompt: str, **params: Any) -> dict[str, Any]:
    return {"model": "sim-large", "messages": [{"role": "user", "content": prompt}], **params}


def answer(text: str, *, finish_reason: str | None = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-original",
        "object": "chat.completion",
        "created": 1,
        "model": "sim-large",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11},
    }
