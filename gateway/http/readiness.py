"""GET /readyz: whether this process can serve, component by component. Each failing component gets a
short fixed reason; what went wrong (paths, addresses, exception text) goes to the log only, since
/readyz answers anyone who can reach the port."""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit

from starlette.responses import JSONResponse, Response

from gateway.stores import Store

logger = logging.getLogger("semcache.readiness")


class UpstreamProbe:
    """Whether the upstream accepts a TCP connection: cheap (no request, no key spent), checked on
    demand by /readyz at most once per `interval_s`, never on the request path."""

    def __init__(self, api_base: str, *, timeout_s: float = 2.0, interval_s: float = 5.0) -> None:
        parts = urlsplit(api_base)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._timeout_s = timeout_s
        self._interval_s = interval_s
        self._lock = asyncio.Lock()
        self._checked_at: float | None = None
        self._reachable = False

    async def reachable(self) -> bool:
        async with self._lock:  # concurrent probes of /readyz share one connection attempt
            now = time.monotonic()
            if self._checked_at is None or now - self._checked_at >= self._interval_s:
                self._reachable = await self._connect()
                self._checked_at = time.monotonic()
            return self._reachable

    async def _connect(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                _, writer = await asyncio.open_connection(self._host, self._port)
            writer.close()
            await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            logger.warning("readiness: upstream %s:%d unreachable: %s", self._host, self._port, exc)
            return False
        return True


async def readiness(store: Store, upstream: UpstreamProbe, *, index_ready: bool = True) -> Response:
    """`index_ready` False: the indexes are being rebuilt from the store (a replica that lost its
    change feed); lookups miss more until it is done."""
    checks = {"store": "ok", "upstream": "ok", "index": "ok" if index_ready else "rebuilding"}
    try:
        await store.ping()
    except Exception:  # readiness reports the fault instead of raising it
        logger.exception("readiness: store unavailable")
        checks["store"] = "unavailable"
    if not await upstream.reachable():
        checks["upstream"] = "unreachable"
    ready = all(state == "ok" for state in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)
