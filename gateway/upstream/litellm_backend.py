"""The default upstream backend: any provider, through litellm."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from typing import Any

from gateway.config import UpstreamConfig
from gateway.errors import UpstreamError
from gateway.upstream.base import Chunk
from gateway.wire import CompletionRequest


def import_litellm() -> Any:
    """Import litellm without letting it reach the network: by default it downloads a price list
    at import and sends telemetry. Both are switched off before the import."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_TELEMETRY", "False")
    import litellm

    litellm.telemetry = False
    # litellm's default aiohttp transport leaves client sessions for the garbage collector to find
    # after its event loop is gone; its httpx transport is closed by close_litellm_async_clients.
    litellm.disable_aiohttp_transport = True
    litellm.suppress_debug_info = True
    litellm.drop_params = False
    return litellm


_NOT_FORWARDED = frozenset({"model", "messages", "prompt", "stream", "cache"})


def _clean_message(value: Any) -> Any:
    """litellm adds bookkeeping keys of its own; the client gets the upstream's answer shape."""
    if isinstance(value, dict):
        return {k: _clean_message(v) for k, v in value.items() if k != "provider_specific_fields"}
    if isinstance(value, list):
        return [_clean_message(item) for item in value]
    return value


# "litellm.RateLimitError: RateLimitError: OpenAIException - <the upstream's own message>"
_LITELLM_PREFIX = re.compile(r"^litellm\.\w+:\s*(\w+:\s*)?(\w+Exception - )?")


def _connection_failed(exc: BaseException) -> bool:
    """litellm reports a refused connection as a 500; its cause chain says what happened.
    (Timeouts are told apart before this is asked.)"""
    link: BaseException | None = exc
    for _ in range(10):  # a bounded walk: cause chains can loop
        if link is None:
            return False
        if type(link).__name__ in ("APIConnectionError", "ConnectError"):
            return True
        link = link.__cause__ or link.__context__
    return False


def translate_error(exc: Exception) -> UpstreamError:
    """litellm's exception → `UpstreamError` with the upstream's own status (429 stays 429)."""
    name = type(exc).__name__
    status = getattr(exc, "status_code", None)
    message = _LITELLM_PREFIX.sub("", str(getattr(exc, "message", None) or exc))
    if "Timeout" in name:
        return UpstreamError(f"upstream timed out: {message}", status_code=504, error_type="timeout")
    if _connection_failed(exc):
        return UpstreamError(f"upstream unreachable: {message}", status_code=502, error_type="upstream_error")
    if not isinstance(status, int) or status < 400:
        return UpstreamError(f"upstream unreachable: {message}", status_code=502, error_type="upstream_error")
    error_type = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }.get(status, "upstream_error")
    return UpstreamError(message, status_code=status, error_type=error_type)


class LiteLLMUpstream:
    def __init__(self, config: UpstreamConfig) -> None:
        self._config = config
        self._litellm = import_litellm()

    def _arguments(self, request: CompletionRequest, api_key: str | None, *, stream: bool) -> dict[str, Any]:
        extra = {name: value for name, value in request.body.items() if name not in _NOT_FORWARDED}
        return {
            **extra,
            "model": f"{self._config.provider}/{request.model}",
            "api_base": self._config.api_base,
            # Local servers (vLLM, Ollama) accept any key; the OpenAI client refuses none at all.
            "api_key": self._config.api_key or api_key or "no-key",
            "timeout": self._config.timeout_s,
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

    async def complete(self, request: CompletionRequest, *, api_key: str | None) -> dict[str, Any]:
        try:
            response = await self._call(request, self._arguments(request, api_key, stream=False))
        except Exception as exc:  # litellm's exception tree, translated at this one boundary
            raise translate_error(exc) from exc
        result: dict[str, Any] = _clean_message(response.model_dump(exclude_none=True))
        return result

    async def stream(self, request: CompletionRequest, *, api_key: str | None) -> AsyncIterator[Chunk]:
        try:
            chunks = await self._call(request, self._arguments(request, api_key, stream=True))
        except Exception as exc:
            raise translate_error(exc) from exc
        return self._chunks(chunks)

    async def _chunks(self, chunks: Any) -> AsyncIterator[Chunk]:
        try:
            async for chunk in chunks:
                event = _clean_message(chunk.model_dump(exclude_none=True))
                for choice in event.get("choices") or ():
                    choice.setdefault("finish_reason", None)  # OpenAI sends the key, null until the end
                yield event
        except Exception as exc:  # includes litellm's error for a stream cut before its finish_reason
            raise translate_error(exc) from exc
