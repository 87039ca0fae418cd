"""Byte-for-byte forwarding of routes the cache does not handle (/v1/embeddings, unknown /v1/*):
a drop-in proxy must not break endpoints it does not know."""

from __future__ import annotations

from types import TracebackType

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.config import UpstreamConfig
from gateway.errors import UpstreamError

# Hop-by-hop headers (RFC 9110 §7.6.1) and those httpx recomputes.
_DROPPED = frozenset(
    {"host", "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
     "content-length", "accept-encoding"}
)  # fmt: skip


class Passthrough:
    """`async with Passthrough(config) as passthrough: await passthrough.forward(request, headers)`."""

    def __init__(self, config: UpstreamConfig) -> None:
        self._config = config
        self._base = config.api_base.rstrip("/")
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(config.timeout_s), follow_redirects=False)

    async def __aenter__(self) -> Passthrough:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._client.aclose()

    def _target(self, path: str) -> str:
        # The gateway serves the upstream's /v1 under its own /v1; api_base already ends in /v1.
        suffix = path[len("/v1") :] if path.startswith("/v1") else path
        return f"{self._base}{suffix}"

    async def forward(self, request: Request, *, body: bytes, headers: dict[str, str]) -> Response:
        outgoing = {name: value for name, value in request.headers.items() if name.lower() not in _DROPPED}
        if self._config.api_key:
            outgoing["authorization"] = f"Bearer {self._config.api_key}"
        upstream_request = self._client.build_request(
            request.method, self._target(request.url.path), params=request.query_params, headers=outgoing,
            content=body,
        )  # fmt: skip
        try:
            upstream = await self._client.send(upstream_request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamError(f"upstream timed out: {exc}", status_code=504, error_type="timeout") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream unreachable: {exc}", status_code=502) from exc
        returned = {name: value for name, value in upstream.headers.items() if name.lower() not in _DROPPED}
        returned.pop("content-encoding", None)  # httpx hands us decoded bytes
        return StreamingResponse(
            upstream.aiter_bytes(),
            status_code=upstream.status_code,
            headers={**returned, **headers},
            background=BackgroundTask(upstream.aclose),
        )
