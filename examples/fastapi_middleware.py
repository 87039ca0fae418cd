"""The cache as ASGI middleware in a FastAPI app of your own. The app's /v1/chat/completions calls an
OpenAI-compatible upstream itself (JSON or a stream, passed on as it comes); `SemanticCacheMiddleware`
in front of it answers repeated and paraphrased questions without calling the endpoint at all.

    python examples/fastapi_middleware.py --demo
        starts the SIMULATED upstream and this app in-process, asks a question, a paraphrase (a hit),
        a streamed paraphrase (a hit replayed as SSE) and a route of the app's own; exits 0 if all is
        as expected.
    python examples/fastapi_middleware.py --upstream http://127.0.0.1:9000/v1 --port 8000
        serves the app (start `semcache simulate-upstream` first, or point it at any
        OpenAI-compatible server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

# Run as a script, only this folder is on sys.path: the repository root makes `examples.local_servers`
# importable, as `python -m examples.<name>` does.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.local_servers import running
from gateway import GatewayConfig, SemanticCache, SemanticCacheMiddleware
from gateway.config import CacheConfig, StoreConfig
from gateway.http.simulated_upstream import UpstreamState, create_upstream_app

QUESTION = "How do I reverse a list in Python?"
PARAPHRASE = "What is the way to reverse a Python list?"
STREAMED_PARAPHRASE = "How can I reverse a list in Python?"


def create_demo_app(upstream_url: str, cache: SemanticCache) -> FastAPI:
    """Your app: it knows nothing of the cache; the middleware is added at the end."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(base_url=upstream_url, timeout=60) as http:
            app.state.http = http
            app.state.calls = 0
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        request.app.state.calls += 1
        body = await request.json()
        http: httpx.AsyncClient = request.app.state.http
        headers = {"authorization": request.headers.get("authorization", "")}
        if body.get("stream"):
            upstream = await http.send(
                http.build_request("POST", "/chat/completions", json=body, headers=headers), stream=True
            )
            return StreamingResponse(
                upstream.aiter_raw(),
                status_code=upstream.status_code,
                media_type="text/event-stream",
                background=BackgroundTask(upstream.aclose),
            )
        upstream = await http.post("/chat/completions", json=body, headers=headers)
        return JSONResponse(upstream.json(), status_code=upstream.status_code)

    @app.get("/calls")
    async def calls(request: Request) -> dict[str, int]:
        """How often the endpoint itself ran (the demo's check that hits never reach it)."""
        return {"chat_completions": request.app.state.calls}

    # Opens the cache in the app's lifespan (around the app's own) and closes it at shutdown. Without
    # a cache object of your own: app.add_middleware(SemanticCacheMiddleware, config=GatewayConfig(...)).
    app.add_middleware(SemanticCacheMiddleware, cache=cache)
    return app


async def _wait_until_stored(cache: SemanticCache, count: int, *, timeout_s: float = 30.0) -> None:
    """Answers are stored after the client has them: wait for the counter before the paraphrase."""
    deadline = time.monotonic() + timeout_s
    while (cache.metrics.registry.get_sample_value("semcache_stored_total") or 0) < count:
        if time.monotonic() > deadline:
            raise TimeoutError("the answer was not stored")
        await asyncio.sleep(0.02)


async def demo() -> int:
    with tempfile.TemporaryDirectory() as folder:
        config = GatewayConfig(cache=CacheConfig(store=StoreConfig(path=str(Path(folder) / "cache.db"))))
        cache = SemanticCache(config)
        async with (
            running(create_upstream_app(UpstreamState())) as upstream_url,
            running(create_demo_app(f"{upstream_url}/v1", cache)) as app_url,
        ):
            client = openai.AsyncOpenAI(base_url=f"{app_url}/v1", api_key="sk-example", max_retries=0)
            create = client.chat.completions.with_raw_response.create
            outcomes: list[str] = []

            async def report(question: str, raw: Any, text: str) -> None:
                semcache = {name: value for name, value in raw.headers.items() if name.startswith("x-semcache")}
                print(f"asked:   {question}\nheaders: {semcache}\nanswer:  {text}\n")
                outcomes.append(raw.headers["x-semcache"])

            for question in (QUESTION, PARAPHRASE):
                raw = await create(model="sim-large", messages=[{"role": "user", "content": question}])
                await report(question, raw, raw.parse().choices[0].message.content or "")
                await _wait_until_stored(cache, 1)
            raw = await create(
                model="sim-large", messages=[{"role": "user", "content": STREAMED_PARAPHRASE}], stream=True
            )
            text = "".join([chunk.choices[0].delta.content or "" async for chunk in raw.parse() if chunk.choices])
            await report(f"{STREAMED_PARAPHRASE} (streamed)", raw, text)
            async with httpx.AsyncClient(base_url=app_url) as http:
                calls = (await http.get("/calls")).json()["chat_completions"]
            await client.close()
    print(f"outcomes: {', '.join(outcomes)}; the endpoint itself ran {calls} time(s)")
    return 0 if outcomes == ["miss", "hit", "hit"] and calls == 1 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="store_true", help="run the self-checking demo and exit")
    parser.add_argument("--upstream", default="http://127.0.0.1:9000/v1", help="OpenAI-compatible base URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--store", default="semcache-fastapi.db", help="SQLite file of the cache")
    args = parser.parse_args()
    if args.demo:
        return asyncio.run(demo())
    import uvicorn

    cache = SemanticCache(GatewayConfig(cache=CacheConfig(store=StoreConfig(path=args.store))))
    uvicorn.run(create_demo_app(args.upstream, cache), host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
