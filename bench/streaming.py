"""Streaming benchmark: time to first byte (TTFB) of a streaming miss through the gateway against the
same stream taken directly from the upstream, in one run, and TTFB and total time of a streaming hit.

    .venv/bin/python bench/streaming.py [--requests 60] [--chunk-delay-ms 20]

The simulated upstream (a stand-in LLM) streams ~14 words with `--chunk-delay-ms` between them, so
a stream has a visible duration. Direct and gateway requests are interleaved one by one so that
other load on the machine falls on both alike. The gateway must add no more than its lookup time to
the first byte of a miss; a hit should answer its first byte in about the lookup time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import (
    free_port,
    percentile,
    semcache_command,
    subprocess_running,
    wait_ready,
    write_config,
)

MODEL = "sim-large"


async def stream_once(client: httpx.AsyncClient, base: str, prompt: str, key: str) -> tuple[float, float, str]:
    """(ms to the first content event, ms to [DONE], x-semcache)."""
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "stream": True}
    started = time.perf_counter()
    first = 0.0
    async with client.stream(
        "POST", f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    ) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data:") and not first:
                first = (time.perf_counter() - started) * 1000
            if line.strip() == "data: [DONE]":
                break
    return first, (time.perf_counter() - started) * 1000, response.headers.get("x-semcache", "direct")


def row(name: str, samples: list[float]) -> str:
    return f"| {name} | {percentile(samples, 50):.2f} | {percentile(samples, 99):.2f} |"


async def measure(args: argparse.Namespace, workdir: Path) -> str:
    upstream_port, gateway_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    gateway = f"http://127.0.0.1:{gateway_port}"
    config = write_config(workdir, upstream_url=upstream, gateway_port=gateway_port, max_wait_ms=None)
    env = dict(os.environ)
    upstream_cmd = [sys.executable, "-m", "gateway.http.simulated_upstream", "--port", str(upstream_port)]
    with (
        subprocess_running(upstream_cmd, log=workdir / "upstream.log", env=env) as upstream_process,
        subprocess_running(
            [*semcache_command(), "serve", "--config", str(config), "--log-level", "warning"],
            log=workdir / "gateway.log",
            env=env,
        ) as gateway_process,
    ):
        async with httpx.AsyncClient(timeout=60) as client:
            await wait_ready(client, f"{upstream}/v1/models", upstream_process, log=workdir / "upstream.log",
                             timeout_s=60)  # fmt: skip
            await wait_ready(client, f"{gateway}/readyz", gateway_process, log=workdir / "gateway.log", timeout_s=180)
            await client.post(f"{upstream}/control", json={"chunk_delay_s": args.chunk_delay_ms / 1000})
            for i in range(5):  # warm-up of both paths
                await stream_once(client, upstream, f"warm-up question number {i} about tea", "sk-warm")
                await stream_once(client, gateway, f"warm-up question number {i} about tea", "sk-warm")
            direct_first: list[float] = []
            miss_first: list[float] = []
            direct_total: list[float] = []
            miss_total: list[float] = []
            prompts = [
                f"Tell me something about the number {i} and why it matters {i * 7}" for i in range(args.requests)
            ]
            for prompt in prompts:
                first, total, _ = await stream_once(client, upstream, prompt, "sk-bench")
                direct_first.append(first)
                direct_total.append(total)
                first, total, outcome = await stream_once(client, gateway, prompt, "sk-bench")
                assert outcome == "miss", outcome
                miss_first.append(first)
                miss_total.append(total)
            await asyncio.sleep(1.0)  # stored in the background after each stream
            hit_first: list[float] = []
            hit_total: list[float] = []
            outcomes: dict[str, int] = {}
            for prompt in prompts:
                first, total, outcome = await stream_once(client, gateway, prompt, "sk-bench")
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                hit_first.append(first)
                hit_total.append(total)
    added = percentile(miss_first, 50) - percentile(direct_first, 50)
    lines = [
        f"Command: `.venv/bin/python bench/streaming.py --requests {args.requests} "
        f"--chunk-delay-ms {args.chunk_delay_ms:g}`; date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| series | p50 ms | p99 ms |",
        "|---|---|---|",
        row("TTFB, upstream direct", direct_first),
        row("TTFB, gateway streaming miss", miss_first),
        row("TTFB, gateway streaming hit (replay)", hit_first),
        row("total, upstream direct", direct_total),
        row("total, gateway streaming miss", miss_total),
        row("total, gateway streaming hit", hit_total),
        "",
        f"Gateway added to a miss's first byte (p50 difference): {added:.2f} ms. Replays: {outcomes}.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--chunk-delay-ms", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="semcache-stream-bench-") as tmp:
        print(asyncio.run(measure(args, Path(tmp))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
