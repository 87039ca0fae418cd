"""The gateway as a proxy: a SIMULATED upstream LLM and the gateway in front of it, both started in
this process under uvicorn; the openai SDK asks a question (a miss) and then a paraphrase of it (a
semantic hit), and prints what the gateway says about each. Exits 0 when the paraphrase was a hit.

    python examples/proxy_in_front_of_upstream.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

# Run as a script, only this folder is on sys.path: the repository root makes `examples.local_servers`
# importable, as `python -m examples.<name>` does.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.local_servers import running
from gateway import GatewayConfig, create_app
from gateway.config import CacheConfig, StoreConfig, UpstreamConfig
from gateway.http.simulated_upstream import UpstreamState, create_upstream_app

QUESTION = "How do I reverse a list in Python?"
PARAPHRASE = "What is the way to reverse a Python list?"


async def wait_until_stored(gateway_url: str, count: int, *, timeout_s: float = 30.0) -> None:
    """The gateway stores an answer after the client has it: watch its /metrics."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        while True:
            metrics = (await http.get("/metrics")).text
            stored = sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("semcache_stored"))
            if stored >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the answer was not stored")
            await asyncio.sleep(0.05)


async def main() -> int:
    state = UpstreamState(latency_ms=300)  # a stand-in LLM that takes its time
    with tempfile.TemporaryDirectory() as folder:
        async with running(create_upstream_app(state)) as upstream_url:
            config = GatewayConfig(
                upstream=UpstreamConfig(api_base=f"{upstream_url}/v1", timeout_s=30),
                cache=CacheConfig(similarity_threshold=0.9, store=StoreConfig(path=str(Path(folder) / "cache.db"))),
            )
            async with running(create_app(config)) as gateway_url:
                client = openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="sk-example", max_retries=0)
                outcomes = []
                for question in (QUESTION, PARAPHRASE):
                    started = time.perf_counter()
                    raw = await client.chat.completions.with_raw_response.create(
                        model="sim-large", messages=[{"role": "user", "content": question}]
                    )
                    elapsed_ms = (time.perf_counter() - started) * 1000
                    answer = raw.parse().choices[0].message.content
                    semcache = {name: value for name, value in raw.headers.items() if name.startswith("x-semcache")}
                    print(f"asked:   {question}")
                    print(f"headers: {semcache}")
                    print(f"answer:  {answer}  ({elapsed_ms:.0f} ms)\n")
                    outcomes.append(raw.headers["x-semcache"])
                    if question == QUESTION:
                        await wait_until_stored(gateway_url, 1)
                await client.close()
    print(f"outcomes: {' then '.join(outcomes)}; upstream called {len(state.received)} time(s)")
    return 0 if outcomes == ["miss", "hit"] and len(state.received) == 1 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
