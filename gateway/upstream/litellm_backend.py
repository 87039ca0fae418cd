"""The default upstream backend: any provider, through litellm.

litellm is imported here only, lazily, through `import_litellm`, which also sets its process-wide
switches. Its exceptions become `UpstreamError` in `translate_error` alone."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from gateway.errors import UpstreamError
from gateway.upstream.base import Answer, Chunk, Deployment
from gateway.wire import CompletionRequest

logger = logging.getLogger("semcache.upstream")


def import_litellm() -> Any:
    """Import litellm so that it reaches nothing but the upstreams it is asked to call.

    By default it downloads a price list at import, sends telemetry, and, to count the tokens of a
    model it maps to a Hugging Face tokenizer (any "llama-3" name), downloads that tokenizer from
    the hub, synchronously, with retries, on the event loop (it counts tokens to price every
    answer, in its async wrapper). Offline mode keeps its catalogs local; the tokenizer download
    and the token counter are switched off: the gateway forwards the upstream's own usage, so
    litellm's estimate is never needed and never costs the event loop anything."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_TELEMETRY", "False")
    os.environ["LITELLM_OFFLINE_MODE"] = "true"  # read at each use, not at import
    import litellm

    litellm.telemetry = False
    litellm.disable_hf_tokenizer_download = True
    litellm.disable_token_counter = True
    # litellm's default aiohttp transport leaves client sessions for the garbage collector to find
    # after its event loop is gone; its httpx transport is closed by close_litellm_async_clients.
    litellm.disable_aiohttp_transport = True
    litellm.suppress_debug_info = True
    litellm.drop_params = False
    return litellm


_NOT_FORWARDED = frozenset({"model", "messages", "prompt", "stream", "cache"})
# The upstream's headers a client acts on: its request id (for the provider's support), its
# processing time, and its rate limits (the OpenAI SDK backs off by retry-after).
_FORWARDED_HEADERS = frozenset({"retry-after", "retry-after-ms", "x-request-id", "openai-processing-ms"})
_FORWARDED_PREFIX = "x-ratelimit-"
# litellm keeps the upstream's own headers in a response's hidden params under this prefix.
_PROVIDER_PREFIX = "llm_provider-"


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream headers that are passed on to the client, by lower-case name."""
    chosen: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in _FORWARDED_HEADERS or lowered.startswith(_FORWARDED_PREFIX):
            chosen[lowered] = str(value)
    return chosen


def _answer_headers(response: Any) -> dict[str, str]:
    hidden = getattr(response, "_hidden_params", None) or {}
    additional = hidden.get("additional_headers") or {}
    raw = {
        name.removeprefix(_PROVIDER_PREFIX): value
        for name, value in additional.items()
        if name.startswith(_PROVIDER_PREFIX)
    }
    return forwarded_headers(raw)


def _clean_message(value: Any) -> Any:
    """litellm adds bookkeeping keys of its own; the client gets the upstream's answer shape."""
    if isinstance(value, dict):
        return {k: _clean_message(v) for k, v in value.items() if k != "provider_specific_fields"}
    if isinstance(value, list):
        return [_clean_message(item) for item in value]
    return value


# "litellm.ContextWindowExceededError: litellm.BadRequestError: ContextWindowExceededError:
# OpenAIException - <the upstream's own message>": only used when the upstream sent no JSON error.
_LITELLM_PREFIX = re.compile(r"^(litellm\.\w+:\s*)+(\w+:\s*)?(\w+Exception - )?")


def _upstream_error_body(response: Any) -> dict[str, Any]:
    """The `error` object of the upstream's JSON error body, which litellm keeps on the exception's
    `response`; empty when there was no answer or it was not OpenAI-shaped."""
    import httpx

    if not isinstance(response, httpx.Response):
        return {}
    try:
        data = json.loads(response.content or b"null")
    except (httpx.ResponseNotRead, ValueError):
        return {}
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else {}


def _response_headers(exc: BaseException) -> Mapping[str, str]:
    import httpx

    response = getattr(exc, "response", None)
    if isinstance(response, httpx.Response):
        return response.headers
    headers = getattr(exc, "litellm_response_headers", None)
    return headers if isinstance(headers, Mapping) else {}


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def translate_error(exc: BaseException) -> UpstreamError | None:
    """litellm's exception → `UpstreamError` with what the upstream said, as it said it: status,
    error type, code, param, message and the headers a client acts on. Classes are tried most
    specific first; None for anything else, which is a bug of ours (or of litellm's) and must
    propagate rather than be blamed on the upstream."""
    import openai

    errors = import_litellm().exceptions
    # (class, status, error type, code) when the upstream's body does not say; most specific first.
    table: tuple[tuple[type[BaseException], int, str, str | None], ...] = (
        # Timeout subclasses openai's APIConnectionError: before the connection errors.
        (errors.Timeout, 504, "timeout", None),
        (errors.APIConnectionError, 502, "upstream_error", None),
        (errors.ContextWindowExceededError, 400, "invalid_request_error", "context_length_exceeded"),
        (errors.ContentPolicyViolationError, 400, "invalid_request_error", "content_policy_violation"),
        (errors.BadRequestError, 400, "invalid_request_error", None),
        (errors.UnprocessableEntityError, 422, "invalid_request_error", None),
        (errors.AuthenticationError, 401, "authentication_error", None),
        (errors.PermissionDeniedError, 403, "permission_error", None),
        (errors.NotFoundError, 404, "not_found_error", None),
        (errors.RateLimitError, 429, "rate_limit_error", None),
        (errors.ServiceUnavailableError, 503, "upstream_error", None),
        (errors.BadGatewayError, 502, "upstream_error", None),
        (errors.InternalServerError, 500, "upstream_error", None),
        (errors.APIResponseValidationError, 502, "upstream_error", None),
        (errors.APIError, 502, "upstream_error", None),
    )
    row = next((row for row in table if isinstance(exc, row[0])), None)
    if row is None:
        return None
    _, default_status, default_type, default_code = row
    text = str(getattr(exc, "message", None) or exc)
    message = _LITELLM_PREFIX.sub("", text)
    if isinstance(exc, errors.Timeout):
        return UpstreamError(f"upstream timed out: {message}", status_code=504, error_type="timeout")
    # litellm reports a refused connection as an InternalServerError caused by openai's.
    link: BaseException | None = exc
    for _ in range(10):  # a bounded walk: cause chains can loop
        if link is None:
            break
        if isinstance(link, openai.APIConnectionError):
            return UpstreamError(f"upstream unreachable: {message}", status_code=502, error_type="upstream_error")
        link = link.__cause__ or link.__context__
    status = getattr(exc, "status_code", None)
    body = _upstream_error_body(getattr(exc, "response", None))
    return UpstreamError(
        str(body.get("message") or message),
        status_code=status if isinstance(status, int) and 400 <= status <= 599 else default_status,
        error_type=str(body.get("type") or default_type),
        code=_optional_str(body.get("code")) or default_code,
        param=_optional_str(body.get("param")),
        headers=forwarded_headers(_response_headers(exc)),
    )


def _failure(exc: BaseException, deployment: Deployment, started: float) -> UpstreamError:
    """The one place an upstream failure is translated and logged (never the prompt)."""
    error = translate_error(exc)
    if error is None:
        raise exc  # not the upstream's fault: the app logs it with its traceback and answers 500
    logger.warning(
        "upstream %s failed: status %d (%s) after %.0f ms",
        deployment.name,
        error.status_code,
        error.error_type,
        (time.perf_counter() - started) * 1000,
    )
    return error


class _Stream:
    """A litellm stream as an `UpstreamStream`: closing it closes litellm's, and with it the
    connection to the upstream."""

    def __init__(self, stream: Any, *, deployment: Deployment, headers: Mapping[str, str], started: float) -> None:
        self._stream = stream
        self._deployment = deployment
        self._started = started
        self.model = deployment.name
        self.headers = headers

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[Chunk]:
        try:
            async for chunk in self._stream:
                event = _clean_message(chunk.model_dump(exclude_none=True))
                for choice in event.get("choices") or ():
                    choice.setdefault("finish_reason", None)  # OpenAI sends the key, null until the end
                yield event
        except Exception as exc:  # includes litellm's error for a stream cut before its finish_reason
            raise _failure(exc, self._deployment, self._started) from exc

    async def aclose(self) -> None:
        await self._stream.aclose()


class LiteLLMUpstream:
    def __init__(self) -> None:
        self._litellm = import_litellm()

    def _arguments(
        self, request: CompletionRequest, deployment: Deployment, api_key: str | None, *, stream: bool
    ) -> dict[str, Any]:
        extra = {name: value for name, value in request.body.items() if name not in _NOT_FORWARDED}
        return {
            **extra,
            "model": f"{deployment.provider}/{deployment.model or request.model}",
            "api_base": deployment.api_base,
            # Local servers (vLLM, Ollama) accept any key; the OpenAI client refuses none at all.
            "api_key": deployment.api_key or api_key or "no-key",
            "timeout": deployment.timeout_s,
            "max_retries": 0,
            "stream": stream,
        }

    async def aclose(self) -> None:
        """Stop litellm's logging worker: it is a process-wide task bound to the event loop of the
        first call, and would otherwise outlive this loop (and complain when it closes)."""
        import asyncio

        from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER
        from litellm.llms.custom_httpx.async_client_cleanup import close_litellm_async_clients

        # Its cached HTTP clients hold sockets of this loop: close them with it.
        await close_litellm_async_clients()  # type: ignore[no-untyped-call]
        # The worker may belong to another loop (an earlier app in the same process): leave it.
        if getattr(GLOBAL_LOGGING_WORKER, "_bound_loop", None) is asyncio.get_running_loop():
            await GLOBAL_LOGGING_WORKER.stop(discard_pending=True, timeout=5.0)

    async def _call(self, request: CompletionRequest, arguments: dict[str, Any]) -> Any:
        if request.endpoint == "chat":
            return await self._litellm.acompletion(messages=request.body["messages"], **arguments)
        return await self._litellm.atext_completion(prompt=request.body["prompt"], **arguments)

    async def complete(self, request: CompletionRequest, *, deployment: Deployment, api_key: str | None) -> Answer:
        started = time.perf_counter()
        try:
            response = await self._call(request, self._arguments(request, deployment, api_key, stream=False))
        except Exception as exc:  # litellm's exception tree, translated at this one boundary
            raise _failure(exc, deployment, started) from exc
        body: dict[str, Any] = _clean_message(response.model_dump(exclude_none=True))
        return Answer(body=body, model=deployment.name, headers=_answer_headers(response))

    async def stream(self, request: CompletionRequest, *, deployment: Deployment, api_key: str | None) -> _Stream:
        started = time.perf_counter()
        try:
            chunks = await self._call(request, self._arguments(request, deployment, api_key, stream=True))
        except Exception as exc:
            raise _failure(exc, deployment, started) from exc
        return _Stream(chunks, deployment=deployment, headers=_answer_headers(chunks), started=started)
