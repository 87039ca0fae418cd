"""Byte-for-byte forwarding of the routes the cache does not handle but a client of the gateway
needs: GET /v1/models (when the config lists none) and POST /v1/embeddings, plus those the config
allows (`upstream.passthrough`). Any other route is refused: with the gateway's own upstream key,
forwarding everything would hand every caller the operator's whole provider account (files,
batches, fine-tuning, deletions)."""

from __future__ import annotations

from types import TracebackType

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.config import PassthroughRoute, UpstreamConfig
from gateway.errors import UpstreamError

# Hop-by-hop headers (RFC 9110 §7.6.1) and those httpx recomputes.
_DROPPED = frozenset(
    {"host", "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
     "content-length", "accept-encoding"}
)  # fmt: skip


ALWAYS_FORWARDED = (
    PassthroughRoute(method="GET", path="/v1/models"),
    PassthroughRoute(method="POST", path="/v1/embeddings"),
)


def _matches(pattern: str, path: str) -> bool:
    wanted, given = pattern.split("/"), path.split("/")
    if any(segment in ("", ".", "..") for segment in given[1:]):
        return False  # never forward a path the upstream might normalise into another route
    if wanted[-1] == "**":  # one or more segments: compare the prefix before it
        if len(given) < len(wanted):
            return False
        wanted, given = wanted[:-1], given[: len(wanted) - 1]
    if len(wanted) != len(given):
        return False
    return all(want in ("*", got) for want, got in zip(wanted, given, strict=True))


def allowed(routes: tuple[PassthroughRoute, ...], method: str, path: str) -> bool:
    """Whether `method path` may be forwarded (HEAD wherever GET may)."""
    method = "GET" if method == "HEAD" else method
    return any(route.method == method and _matches(route.path, path) for route in (*ALWAYS_FORWARDED, *routes))


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
