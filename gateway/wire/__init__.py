"""The OpenAI wire format: requests and answers (`openai`), SSE record and replay (`streams`), and
cache control from headers and the body (`cache_control`)."""

from gateway.wire.openai import (
    COMPLETE_FINISH_REASONS,
    ROLES,
    CompletionRequest,
    Endpoint,
    encode_sse,
    is_complete,
    message_text,
    parse_chat_request,
    parse_json,
    parse_text_request,
    replay_completion,
)

__all__ = [
    "COMPLETE_FINISH_REASONS",
    "ROLES",
    "CompletionRequest",
    "Endpoint",
    "encode_sse",
    "is_complete",
    "parse_chat_request",
    "parse_json",
    "parse_text_request",
    "message_text",
    "replay_completion",
]
