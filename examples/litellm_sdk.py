"""The cache inside the LiteLLM SDK: `litellm.acompletion` against a SIMULATED upstream (started in
this process), with semcache installed as LiteLLM's cache. The second, paraphrased call is answered
from the cache without reaching the upstream. Exits 0 when it was.

    python examples/litellm_sdk.py

Needs `orjson` and `soundfile` next to litellm 1.110.2: its cache-hit path imports modules of its
proxy (see gateway/litellm_cache.py).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, only this folder is on sys.path: the repository root makes `examples.local_servers`
# importable, as `python -m examples.<name>` does.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.local_servers import running
from gateway import GatewayConfig, SemanticCache
from gateway.config import CacheConfig, StoreConfig
from gateway.http.simulated_upstream import UpstreamState, create_upstream_app
from gateway.litellm_cache import LiteLLMSemanticCache
from gateway.upstream import import_litellm

QUESTION = "How do I reverse a list in Python?"
PARAPHRASE = "What is the way to reverse a Python list?"


async def close_litellm_clients() -> None:
    """litellm keeps HTTP clients and a logging worker bound to this event loop: close them with it."""
    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER
    from litellm.llms.custom_httpx.async_client_cleanup import close_litellm_async_clients

    await close_litellm_async_clients()
    await GLOBAL_LOGGING_WORKER.stop(discard_pending=True, timeout=5.0)


async def wait_until_stored(cache: SemanticCache, count: int, *, timeout_s: float = 30.0) -> None:
    """LiteLLM hands the answer to the cache in the background, after the call returned."""
    deadline = time.monotonic() + timeout_s
    while (cache.metrics.registry.get_sample_value("semcache_stored_total") or 0) < count:
        if time.monotonic() > deadline:
            raise TimeoutError("the answer was not stored")
        await asyncio.sleep(0.02)


async def main() -> int:
    litellm = import_litellm()  # no price-list download, no telemetry
    state = UpstreamState(latency_ms=300)
    hits = []
    with tempfile.TemporaryDirectory() as folder:
        config = GatewayConfig(cache=CacheConfig(store=StoreConfig(path=str(Path(folder) / "cache.db"))))
        semantic = SemanticCache(config)
        async with running(create_upstream_app(state)) as upstream_url, LiteLLMSemanticCache(semantic) as backend:
            litellm.cache = backend.litellm_cache()
            try:
                for question in (QUESTION, PARAPHRASE):
                    metadata: dict[str, object] = {}
                    started = time.perf_counter()
                    response = await litellm.acompletion(
                        model="openai/sim-large",  # the openai provider speaks to any compatible server
                        api_base=f"{upstream_url}/v1",
                        api_key="sk-example",  # the tenant: another key never sees these answers
                        messages=[{"role": "user", "content": question}],
                        metadata=metadata,
                    )
                    elapsed_ms = (time.perf_counter() - started) * 1000
                    hit = bool(response._hidden_params.get("cache_hit"))
                    hits.append(hit)
                    print(f"asked:     {question}")
                    print(f"cache_hit: {hit}  similarity: {metadata.get('semantic-similarity')}  ({elapsed_ms:.0f} ms)")
                    print(f"answer:    {response.choices[0].message.content}\n")
                    if not hit:
                        await wait_until_stored(semantic, 1)
            finally:
                litellm.cache = None
                await close_litellm_clients()
    print(f"cache hits: {hits}; upstream called {len(state.received)} time(s)")
    return 0 if hits == [False, True] and len(state.received) == 1 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
