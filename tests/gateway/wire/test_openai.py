"""The OpenAI wire format: what a request must look like, and the answers rebuilt from cache."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.wire import (
    encode_sse,
    is_complete,
    parse_chat_request,
    parse_json,
    parse_text_request,
    replay_completion,
)

USER = {"role": "user", "content": "How do I reverse a list?"}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "sim-large", "messages": [USER], **fields}


@pytest.mark.parametrize(
    "body",
    [
        chat(),
        chat(stream=True, stream_options={"include_usage": True}),
        chat(stream=None, temperature=0, top_p=1, n=1, max_tokens=16, max_completion_tokens=32),
        chat(temperature=2.0, top_p=0.0, stop="END"),
        chat(stop=["a", "b"], tools=[{"type": "function", "function": {"name": "f"}}], seed=7),
        chat(messages=[{"role": "system", "content": "Be brief."}, USER]),
        chat(messages=[{"role": "developer", "content": "Be brief."}, USER]),
        chat(messages=[USER, {"role": "assistant", "content": None, "tool_calls": []}]),
        chat(messages=[USER, {"role": "assistant", "content": None, "function_call": {"name": "f"}}]),
        chat(messages=[{"role": "tool", "content": "42", "tool_call_id": "c"}, USER]),
        chat(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]),
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        chat(unknown_parameter={"the upstream": "judges this"}),
    ],
)
def test_valid_chat_requests_are_accepted(body: dict[str, Any]) -> None:
    request = parse_chat_request(body)

    assert request.endpoint == "chat"
    assert request.model == "sim-large"
    assert request.body == body  # forwarded as the client sent it
    assert request.stream is bool(body.get("stream"))
    assert request.n == (body.get("n") or 1)


def test_a_chat_request_splits_prompt_from_context() -> None:
    system = {"role": "system", "content": "Be brief."}
    earlier = {"role": "assistant", "content": "Hello!"}

    request = parse_chat_request(chat(messages=[system, earlier, USER], stream=True, stream_options={}))

    assert request.prompt == USER["content"]
    assert request.context == (system, earlier)
    assert request.uncacheable is None
    assert request.include_usage is False


def test_include_usage_needs_a_stream() -> None:
    assert parse_chat_request(chat(stream=True, stream_options={"include_usage": True})).include_usage
    assert not parse_chat_request(chat(stream=False, stream_options={"include_usage": True})).include_usage


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (["not", "an", "object"], None),
        ("a string", None),
        (None, None),
        ({"messages": [USER]}, "model"),
        (chat(model=""), "model"),
        (chat(model=42), "model"),
        ({"model": "sim-large"}, "messages"),
        (chat(messages=[]), "messages"),
        (chat(messages="hello"), "messages"),
        (chat(messages={"role": "user", "content": "hi"}), "messages"),
        (chat(messages=["hello"]), "messages[0]"),
        (chat(messages=[USER, {"role": "wizard", "content": "hi"}]), "messages[1].role"),
        (chat(messages=[{"content": "no role"}]), "messages[0].role"),
        (chat(messages=[{"role": "user", "content": 42}]), "messages[0].content"),
        (chat(messages=[{"role": "user"}]), "messages[0].content"),
        (chat(messages=[{"role": "user", "content": None}]), "messages[0].content"),
        (chat(messages=[{"role": "user", "content": ["a bare string part"]}]), "messages[0].content"),
        (chat(messages=[{"role": "user", "content": [{"text": "no type"}]}]), "messages[0].content"),
        (chat(messages=[{"role": "assistant", "content": None}, USER]), "messages[0].content"),
        (chat(stream="yes"), "stream"),
        (chat(stream=1), "stream"),
        (chat(temperature=2.5), "temperature"),
        (chat(temperature=-0.1), "temperature"),
        (chat(temperature="hot"), "temperature"),
        (chat(temperature=True), "temperature"),
        (chat(temperature=float("nan")), "temperature"),
        (chat(top_p=1.5), "top_p"),
        (chat(n=0), "n"),
        (chat(n=-1), "n"),
        (chat(n=1.5), "n"),
        (chat(n="2"), "n"),
        (chat(n=True), "n"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(max_completion_tokens=-5), "max_completion_tokens"),
        (chat(stop=5), "stop"),
        (chat(stop=["ok", 5]), "stop"),
        (chat(stop={"a": "b"}), "stop"),
        (chat(tools={"type": "function"}), "tools"),
        (chat(stream_options="include_usage"), "stream_options"),
    ],
)
def test_bad_chat_requests_are_rejected_naming_the_parameter(body: Any, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse_chat_request(body)

    error = raised.value
    assert error.param == param
    assert error.status_code == 400
    assert error.body()["error"]["type"] == "invalid_request_error"
    assert error.body()["error"]["param"] == param
    assert error.message


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (chat(n=3), "n>1"),
        (chat(messages=[USER, {"role": "assistant", "content": "ok"}]), "last-message-not-user"),
        (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), None),
    ],
)
def test_uncacheable_chat_requests_say_why(body: dict[str, Any], reason: str | None) -> None:
    request = parse_chat_request(body)

    assert request.uncacheable == (reason or "non-text-prompt")


def test_text_request_with_one_string_prompt_is_cacheable() -> None:
    request = parse_text_request({"model": "sim-large", "prompt": "Once upon a time", "max_tokens": 5})

    assert request.endpoint == "text"
    assert request.prompt == "Once upon a time"
    assert request.context == ()
    assert request.uncacheable is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"model": "m", "prompt": ["one", "two"]}, "batch-or-token-prompt"),
        ({"model": "m", "prompt": [1, 2, 3]}, "batch-or-token-prompt"),
        ({"model": "m", "prompt": "p", "suffix": "end"}, "suffix-or-echo"),
        ({"model": "m", "prompt": "p", "echo": True}, "suffix-or-echo"),
        ({"model": "m", "prompt": "p", "n": 2}, "n>1"),
    ],
)
def test_uncacheable_text_requests_say_why(body: dict[str, Any], reason: str) -> None:
    request = parse_text_request(body)

    assert request.uncacheable == reason


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "prompt"),
        ({"model": "m", "prompt": 42}, "prompt"),
        ({"model": "m", "prompt": []}, "prompt"),
        ({"model": "m", "prompt": [None]}, "prompt"),
        ({"prompt": "p"}, "model"),
        ({"model": "m", "prompt": "p", "temperature": 9}, "temperature"),
    ],
)
def test_bad_text_requests_are_rejected_naming_the_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse_text_request(body)

    assert raised.value.param == param


def test_parse_json_reads_an_object() -> None:
    assert parse_json(b'{"model": "m", "messages": []}') == {"model": "m", "messages": []}
    assert parse_json('{"text": "caf\u00e9"}'.encode()) == {"text": "caf\u00e9"}


@pytest.mark.parametrize("raw", [b"", b"{", b"{'single': 'quotes'}", b'{"a": 1,}', b"\xff\xfe\xfa", b"nope"])
def test_parse_json_rejects_bad_json_as_invalid_request(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse_json(raw)

    assert raised.value.code == "invalid_json"
    assert raised.value.status_code == 400
    assert "not valid JSON" in raised.value.message


def choice(finish_reason: Any) -> dict[str, Any]:
    return {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": finish_reason}


@pytest.mark.parametrize("finish_reason", ["stop", "length", "tool_calls", "function_call"])
def test_finished_answers_are_complete(finish_reason: str) -> None:
    assert is_complete({"choices": [choice(finish_reason)]})
    assert is_complete({"choices": [choice("stop"), {**choice(finish_reason), "index": 1}]})


@pytest.mark.parametrize(
    "response",
    [
        {},
        {"choices": []},
        {"choices": None},
        {"choices": "stop"},
        {"choices": [choice(None)]},
        {"choices": [choice("content_filter")]},
        {"choices": [choice("stop"), choice(None)]},
        {"choices": ["stop"]},
        {"error": {"message": "boom"}},
    ],
)
def test_unfinished_or_failed_answers_are_not_complete(response: dict[str, Any]) -> None:
    assert not is_complete(response)


STORED = {
    "id": "chatcmpl-original",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "sim-large",
    "choices": [choice("stop")],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
}


def test_replay_gives_a_fresh_id_and_created_and_keeps_usage() -> None:
    first = replay_completion(STORED, endpoint="chat", now=1_800_000_000.7)
    second = replay_completion(STORED, endpoint="chat", now=1_800_000_001.0)

    assert first["id"] != STORED["id"]
    assert first["id"] != second["id"]
    assert first["id"].startswith("chatcmpl-")
    assert first["created"] == 1_800_000_000
    assert isinstance(first["created"], int)
    assert first["usage"] == STORED["usage"]
    assert first["choices"] == STORED["choices"]
    assert {k: v for k, v in first.items() if k not in ("id", "created")} == {
        k: v for k, v in STORED.items() if k not in ("id", "created")
    }
    assert STORED["id"] == "chatcmpl-original"  # the stored answer itself is untouched


def test_replay_of_a_text_completion_uses_its_id_prefix() -> None:
    replayed = replay_completion({**STORED, "object": "text_completion"}, endpoint="text", now=1.0)

    assert replayed["id"].startswith("cmpl-")


def test_encode_sse_frames_one_event() -> None:
    assert encode_sse("[DONE]") == b"data: [DONE]\n\n"
    event = encode_sse({"a": 1, "b": "é"})
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert json.loads(event[len(b"data: ") : -2]) == {"a": 1, "b": "é"}
