"""Replicas on Redis: hit latency against the SQLite store, replication lag, and throughput of two
replicas against one, measured in one run.

    .venv/bin/python bench/replicas.py [--prompts 30] [--seconds 5] [--concurrency 16]

It starts a redis-server (free loopback port, no persistence), the simulated upstream (0 ms, a
stand-in for an LLM) and three `semcache serve` processes: one on SQLite, replicas A and B on the
Redis. Then:

  hit latency    exact and semantic hits through the SQLite gateway and through replica A,
                 interleaved request by request (other load on the machine falls on both alike)
  lag            for each new prompt: the time from A's Added event appearing on the Redis Stream
                 (A has written the store and indexed it) to B's first exact hit. B is polled back
                 to back with `Cache-Control: no-store` (a poll that misses stores nothing), so the
                 figure's resolution is one poll's round trip, printed beside it.
  throughput     exact hits/s with --concurrency clients for --seconds: all on A, then split over A
                 and B. Both replicas share this machine's cores with each other and the client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import redis.asyncio as aioredis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The latency bench's paraphrase pairs (its first six) and port helper: one copy of each.
from bench.latency import PAIRS as LATENCY_PAIRS  # noqa: E402
from bench.latency import free_port  # noqa: E402

PAIRS = LATENCY_PAIRS[:6]


def ask_body(prompt: str, namespace: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {"model": "sim-large", "messages": [{"role": "user", "content": prompt}]}
    if namespace is not None:  # a scope of its own: probes alike in wording never hit each other
        body["cache"] = {"namespace": namespace}
    return body


HEADERS = {"authorization": "Bearer sk-bench"}


@contextlib.contextmanager
def process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as sink:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_ready(url: str, path: str, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}{path}", timeout=5).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


def gateway_config(folder: Path, name: str, upstream: str, store: dict[str, object]) -> Path:
    config = {
        "upstream": {"api_base": f"{upstream}/v1", "timeout_s": 10, "models": ["sim-large"]},
        "cache": {"similarity_threshold": 0.8, "store": store},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def progress(message: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def store_through(client: httpx.AsyncClient, url: str, prompt: str) -> None:
    await client.post(f"{url}/v1/chat/completions", json=ask_body(prompt), headers=HEADERS)
    for _ in range(500):
        answer = await client.post(f"{url}/v1/chat/completions", json=ask_body(prompt), headers=HEADERS)
        if answer.headers["x-semcache"] == "exact":
            return
        await asyncio.sleep(0.01)
    raise RuntimeError(f"{prompt!r} was not stored through {url}")


async def timed(client: httpx.AsyncClient, url: str, prompt: str, expect: str) -> float:
    started = time.perf_counter()
    answer = await client.post(f"{url}/v1/chat/completions", json=ask_body(prompt), headers=HEADERS)
    elapsed = (time.perf_counter() - started) * 1000
    if answer.headers["x-semcache"] != expect:
        raise RuntimeError(f"{prompt!r} at {url}: {answer.headers['x-semcache']}, not {expect}")
    return elapsed


async def hit_latency(sqlite_url: str, redis_url: str, rounds: int) -> dict[str, list[float]]:
    series: dict[str, list[float]] = {"sqlite exact": [], "redis exact": [], "sqlite hit": [], "redis hit": []}
    async with httpx.AsyncClient(timeout=30) as client:
        for url in (sqlite_url, redis_url):
            for stored, _ in PAIRS:
                await store_through(client, url, stored)
        for _ in range(rounds):
            for stored, paraphrase in PAIRS:
                series["sqlite exact"].append(await timed(client, sqlite_url, stored, "exact"))
                series["redis exact"].append(await timed(client, redis_url, stored, "exact"))
                series["sqlite hit"].append(await timed(client, sqlite_url, paraphrase, "hit"))
                series["redis hit"].append(await timed(client, redis_url, paraphrase, "hit"))
    return series


async def replication_lag(
    a_url: str, b_url: str, redis_url: str, feed_key: str, prompts: int
) -> tuple[list[float], list[float]]:
    lags: list[float] = []
    polls: list[float] = []
    redis = aioredis.Redis.from_url(redis_url)
    async with httpx.AsyncClient(timeout=30) as client:
        for number in range(prompts):
            prompt = f"Replication probe {number}: name one fact about the number {number * 7919}."
            last = await redis.xrevrange(feed_key, count=1)
            position = last[0][0] if last else b"0-0"
            probe = ask_body(prompt, f"probe-{number}")
            first = await client.post(f"{a_url}/v1/chat/completions", json=probe, headers=HEADERS)
            if first.headers["x-semcache"] != "miss":
                raise RuntimeError(f"probe {number} was not a miss through A")
            seen: float | None = None
            deadline = time.monotonic() + 30
            while seen is None:  # A stores in the background after answering: wait for its event
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no Added event for probe {number} on {feed_key}")
                replies = await redis.xread({feed_key: position}, block=2000, count=10)
                for _, messages in replies:
                    for message_id, fields in messages:
                        position = message_id
                        if b'"kind":"added"' in fields[b"e"] and prompt.encode() in fields[b"e"]:
                            seen = time.perf_counter()
            while True:
                started = time.perf_counter()
                answer = await client.post(
                    f"{b_url}/v1/chat/completions",
                    json=probe,
                    headers={**HEADERS, "cache-control": "no-store"},
                )
                now = time.perf_counter()
                polls.append((now - started) * 1000)
                if answer.headers["x-semcache"] == "exact":
                    lags.append((now - seen) * 1000)
                    break
    await redis.aclose()
    return lags, polls


async def throughput(urls: list[str], prompts: list[str], seconds: float, concurrency: int) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(index: int, client: httpx.AsyncClient) -> None:
        nonlocal done
        turn = index
        while time.perf_counter() < stop:
            url = urls[turn % len(urls)]
            answer = await client.post(
                f"{url}/v1/chat/completions", json=ask_body(prompts[turn % len(prompts)]), headers=HEADERS
            )
            if answer.headers["x-semcache"] == "exact":
                done += 1
            turn += 1

    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(index, client) for index in range(concurrency)))
        return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=30, help="replication probes")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of hit-latency pairs")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    redis_binary = shutil.which("redis-server")
    if redis_binary is None:
        raise SystemExit("redis-server is not installed")
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        redis_port, upstream_port = free_port(), free_port()
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        stack.enter_context(
            process([redis_binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", tmp], folder / "redis.log")
        )  # fmt: skip
        stack.enter_context(
            # `semcache simulate-upstream --port N` refuses the option (argparse REMAINDER): the module
            process([python, "-m", "gateway.http.simulated_upstream", "--port", str(upstream_port)], folder / "up.log")
        )
        upstream = f"http://127.0.0.1:{upstream_port}"
        wait_ready(upstream, "/v1/models")
        redis_store = {"kind": "redis", "url": redis_url, "prefix": "bench"}
        stores = {
            "sqlite": {"kind": "sqlite", "path": str(folder / "cache.db")},
            "a": redis_store,
            "b": redis_store,
        }
        urls: dict[str, str] = {}
        for name, store in stores.items():
            port = free_port()
            config = gateway_config(folder, name, upstream, store)
            stack.enter_context(
                process([python, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)],
                        folder / f"{name}.log")
            )  # fmt: skip
            urls[name] = f"http://127.0.0.1:{port}"
        for url in urls.values():
            wait_ready(url, "/readyz")
        progress("gateways ready; hit latency")
        latency = asyncio.run(hit_latency(urls["sqlite"], urls["a"], args.rounds))
        feed_key = asyncio.run(_feed_key(redis_url))
        progress("replication lag")
        lags, polls = asyncio.run(replication_lag(urls["a"], urls["b"], redis_url, feed_key, args.prompts))
        stored = [stored for stored, _ in PAIRS]
        asyncio.run(_store_all(urls["b"], stored))
        progress("throughput")
        one = asyncio.run(throughput([urls["a"]], stored, args.seconds, args.concurrency))
        two = asyncio.run(throughput([urls["a"], urls["b"]], stored, args.seconds, args.concurrency))

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} logical CPUs; {when}")
    print("\n| series | n | p50 ms | p99 ms |\n|---|---|---|---|")
    for name, values in latency.items():
        print(f"| {name} | {len(values)} | {statistics.median(values):.2f} | {percentile(values, 0.99):.2f} |")
    print(
        f"| lag: A's event on the stream → B's first hit | {len(lags)} | {statistics.median(lags):.2f} | "
        f"{percentile(lags, 0.99):.2f} |"
    )
    print(
        f"| one poll of B (the lag's resolution) | {len(polls)} | {statistics.median(polls):.2f} | "
        f"{percentile(polls, 0.99):.2f} |"
    )
    print(
        f"\nexact hits/s, {args.concurrency} clients, {args.seconds:g} s: one replica {one:.0f}, two replicas {two:.0f}"
    )


async def _feed_key(redis_url: str) -> str:
    redis = aioredis.Redis.from_url(redis_url)
    keys = [key.decode() for key in await redis.keys("{bench:*}:feed")]
    await redis.aclose()
    (key,) = keys
    return key


async def _store_all(url: str, prompts: list[str]) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        for prompt in prompts:
            answer = await client.post(f"{url}/v1/chat/completions", json=ask_body(prompt), headers=HEADERS)
            if answer.headers["x-semcache"] != "exact":
                raise RuntimeError(f"{prompt!r} is not a hit on {url}")


if __name__ == "__main__":
    main()
