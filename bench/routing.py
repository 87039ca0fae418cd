"""Routing benchmark: a plain proxy to the large model against the gateway with routing and load-
adaptive rules, at rising request rates, in one run.

    .venv/bin/python bench/routing.py [--rates 3,6,10,16] [--step-s 15] [--seed 7]

It starts two SIMULATED models (`semcache simulate-upstream`, stand-ins for real LLMs with a real
capacity: beyond it they answer 429, and their latency grows with the requests in flight) and the
gateway (`semcache serve`, a config written to a temporary folder: both models as deployments, the
route `auto`, one category preferring the large model with bounds for load adaptation). Each rate
step replays the same open-loop (Poisson) workload three times, one after the other:

  (a) plain proxy: every request sent directly to the large model (no gateway, no cache, no retry)
  (b) the gateway: cache, routing across small/large by load, adaptive threshold and TTL
  (c) the gateway as a cache alone in front of the large model (no deployments: no routing, the
      rules never move), to tell what the cache does from what the load policy adds

The workload is real queries from ../shared/data/queries: banking77 (a paraphrase is another query
of the same intent; the simulated models answer every query of an intent alike, via `classes`) and
categories_dev (other questions), with exact repeats. Each rate step of (b) and (c) uses its own API
key, so its own cache scope: every step starts with a cold cache, as (a) does. Per rate: p50/p99 latency,
429s seen by clients, the share answered by the cache / small / large model, and the cut in traffic
to the large (overloaded) model, counted as calls the gateway sent it (retries included) against the
calls (a) sent it. Latency percentiles are of the answered (200) requests: a 429 comes back at once.
Prints a Markdown block for bench/RESULTS.md and writes bench/out/routing.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import free_port, subprocess_running, wait_ready  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "queries"
OUT = ROOT / "bench" / "out"

# The simulated models, fixed here so every run compares the same thing.
SMALL = {"capacity": 32, "latency_ms": 150}
LARGE = {"capacity": 6, "latency_ms": 600}

POLICY = {
    "categories": [
        {
            "name": "default",
            "similarity_threshold": 0.9,
            "ttl_s": 600,
            "tier": "large",
            "bounds": {"min_threshold": 0.8, "max_ttl_s": 3600},
        }
    ]
}


# ------------------------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Query:
    text: str
    label: str | None  # the banking77 intent: same intent = paraphrase


def read_queries(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def load_workload(seed: int, *, intents: int = 30, per_intent: int = 12, others: int = 600) -> list[Query]:
    banking, general = DATA / "banking77_intents.jsonl", DATA / "categories_dev.jsonl"
    missing = [str(path) for path in (banking, general) if not path.is_file()]
    if missing:
        raise SystemExit(f"bench/routing.py needs the shared query data, not found: {', '.join(missing)}")
    rng = random.Random(seed)
    by_intent: dict[str, list[str]] = {}
    for row in read_queries(banking):
        by_intent.setdefault(row["intent"], []).append(row["text"])
    chosen = rng.sample(sorted(by_intent), intents)
    pool = [Query(text, intent) for intent in chosen for text in rng.sample(by_intent[intent], per_intent)]
    pool += [Query(row["text"], None) for row in rng.sample(read_queries(general), others)]
    return pool


def arrivals(pool: Sequence[Query], *, rate: float, duration_s: float, seed: int) -> list[tuple[float, Query]]:
    """Poisson arrivals; each request a banking paraphrase (50 %), another question (35 %) or an exact
    repeat of an earlier request (15 %)."""
    rng = random.Random(seed)
    banking = [q for q in pool if q.label is not None]
    general = [q for q in pool if q.label is None]
    at = 0.0
    sent: list[Query] = []
    schedule: list[tuple[float, Query]] = []
    while True:
        at += rng.expovariate(rate)
        if at >= duration_s:
            return schedule
        roll = rng.random()
        if roll < 0.15 and sent:
            query = rng.choice(sent)
        elif roll < 0.65:
            query = rng.choice(banking)
        else:
            query = rng.choice(general)
        sent.append(query)
        schedule.append((at, query))


# ---------------------------------------------------------------------------------------- servers


# This checkout's code in the servers too (the venv's `semcache` script may belong to another one).
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def running(command: list[str], *, log: Path) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    return subprocess_running(command, log=log, env=ENV)


def simulate(port: int, model: dict[str, int], classes: Path) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", "simulate-upstream", "--port", str(port),
            "--capacity", str(model["capacity"]), "--latency-ms", str(model["latency_ms"]),
            "--classes", str(classes)]  # fmt: skip


def gateway_config(workdir: Path, *, port: int, small_url: str, large_url: str, routing: bool = True) -> Path:
    """(b) both models as deployments, routed by load with adaptive rules; without `routing`, (c) the
    cache alone in front of the large model (no deployments: one upstream, rules never move)."""
    (workdir / "policy.yaml").write_text(yaml.safe_dump(POLICY), encoding="utf-8")
    deployment = {"timeout_s": 30}
    config = {
        "server": {"port": port},
        "upstream": {"api_base": f"{large_url}/v1", "timeout_s": 30},
        "deployments": [
            {
                **deployment,
                "name": "small",
                "tier": "small",
                "model": "openai/sim-small",
                "api_base": f"{small_url}/v1",
                "max_concurrency": SMALL["capacity"],
            },
            {
                **deployment,
                "name": "large",
                "tier": "large",
                "model": "openai/sim-large",
                "api_base": f"{large_url}/v1",
                "max_concurrency": LARGE["capacity"],
            },
        ],
        "routes": ["auto"],
        "routing": {"high_watermark": 0.8, "cooldown_s": 1, "error_window_s": 5},
        "policy": "policy.yaml",
        "cache": {"store": {"path": str(workdir / "cache.db")}},
    }
    if not routing:
        for key in ("deployments", "routes", "routing"):
            del config[key]
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ bench


@dataclass(slots=True)
class Step:
    mode: str
    rate: float
    latencies_ms: list[float] = field(default_factory=list)
    answered_by: Counter[str] = field(default_factory=Counter)  # cache / small / large / 429 / error
    large_calls: int = 0
    thresholds: list[float] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.answered_by.values())

    def share(self, key: str) -> float:
        return self.answered_by[key] / self.sent if self.sent else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else float("nan")


def where(response: httpx.Response) -> str:
    if response.status_code == 429:
        return "429"
    if response.status_code != 200:
        return "error"
    if response.headers.get("x-semcache") in ("hit", "exact", "coalesced"):
        return "cache"
    return str(response.headers.get("x-semcache-model", "large"))  # a plain proxy: the large model


async def replay(  # noqa: PLR0917 - the one replay loop of both modes
    client: httpx.AsyncClient, url: str, model: str, key: str, schedule: Sequence[tuple[float, Query]], step: Step
) -> None:
    async def one(at: float, query: Query) -> None:
        await asyncio.sleep(max(0.0, started + at - time.perf_counter()))
        sent = time.perf_counter()
        body = {"model": model, "messages": [{"role": "user", "content": query.text}]}
        try:
            response = await client.post(f"{url}/v1/chat/completions", json=body, headers={"authorization": key})
            response.read()
        except httpx.HTTPError:
            step.answered_by["error"] += 1
            return
        if response.status_code == 200:  # a 429 is fast and answers nothing: counted apart
            step.latencies_ms.append((time.perf_counter() - sent) * 1000)
        step.answered_by[where(response)] += 1
        if "x-semcache-threshold" in response.headers:
            step.thresholds.append(float(response.headers["x-semcache-threshold"]))

    started = time.perf_counter()
    await asyncio.gather(*(one(at, query) for at, query in schedule))


async def large_decisions(client: httpx.AsyncClient, gateway: str, deployment: str) -> float:
    text = (await client.get(f"{gateway}/metrics")).text
    prefix = f'semcache_route_decisions_total{{deployment="{deployment}"'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


LABELS = {
    "plain": "(a) plain proxy to large",
    "cache": "(c) gateway: cache only, large",
    "gateway": "(b) gateway: cache + routing + adaptive",
}
Results = list[dict[str, Step]]


async def measure(args: argparse.Namespace, workdir: Path) -> Results:
    pool = load_workload(args.seed)
    classes = workdir / "classes.json"
    classes.write_text(json.dumps({q.text: q.label for q in pool if q.label}), encoding="utf-8")
    small_port, large_port = free_port(), free_port()
    small_url, large_url = f"http://127.0.0.1:{small_port}", f"http://127.0.0.1:{large_port}"
    ports = {"gateway": free_port(), "cache": free_port()}
    urls = {mode: f"http://127.0.0.1:{port}" for mode, port in ports.items()}
    routed_dir, cached_dir = workdir / "routed", workdir / "cached"
    routed_dir.mkdir()
    cached_dir.mkdir()
    routed = gateway_config(routed_dir, port=ports["gateway"], small_url=small_url, large_url=large_url)
    cached = gateway_config(cached_dir, port=ports["cache"], small_url=small_url, large_url=large_url, routing=False)

    def serve(config: Path) -> list[str]:
        return [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--log-level", "warning"]

    logs = {name: workdir / f"{name}.log" for name in ("small", "large", "gateway", "cache")}
    results: Results = []
    with (
        running(simulate(small_port, SMALL, classes), log=logs["small"]) as small,
        running(simulate(large_port, LARGE, classes), log=logs["large"]) as large,
        running(serve(routed), log=logs["gateway"]) as gateway,
        running(serve(cached), log=logs["cache"]) as cache,
    ):
        probe = httpx.AsyncClient(timeout=5)
        await wait_ready(probe, f"{small_url}/v1/models", small, log=logs["small"], timeout_s=240)
        await wait_ready(probe, f"{large_url}/v1/models", large, log=logs["large"], timeout_s=240)
        print("waiting for the gateways (embedding model, litellm)...", file=sys.stderr, flush=True)
        await wait_ready(probe, f"{urls['gateway']}/readyz", gateway, log=logs["gateway"], timeout_s=240)
        await wait_ready(probe, f"{urls['cache']}/readyz", cache, log=logs["cache"], timeout_s=240)
        await probe.aclose()
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
        targets = {  # mode → (url, model asked for, the large model's name in route decisions)
            "plain": (large_url, "sim-large", ""),
            "cache": (urls["cache"], "sim-large", "default"),
            "gateway": (urls["gateway"], "auto", "large"),
        }
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            # Warm the gateways (model, litellm clients) outside any measured step.
            warm = [(i * 0.05, Query(f"warm-up question number {i}", None)) for i in range(20)]
            for mode in ("gateway", "cache"):
                url, model, _ = targets[mode]
                await replay(client, url, model, "Bearer bench-warm", warm, Step(mode="warm", rate=0))
            for rate in args.rates:
                schedule = arrivals(pool, rate=rate, duration_s=args.step_s, seed=args.seed + int(rate * 100))
                steps: dict[str, Step] = {}
                for mode in ("plain", "cache", "gateway"):
                    url, model, large_name = targets[mode]
                    step = steps[mode] = Step(mode=mode, rate=rate)
                    print(f"rate {rate:g}/s: {len(schedule)} requests, {LABELS[mode]}", file=sys.stderr, flush=True)
                    before = await large_decisions(client, url, large_name) if large_name else 0.0
                    # Its own key per step: its own cache scope, so every step starts cold.
                    await replay(client, url, model, f"Bearer bench-{mode}-{rate:g}", schedule, step)
                    if large_name:
                        step.large_calls = int(await large_decisions(client, url, large_name) - before)
                    else:
                        step.large_calls = step.sent - step.answered_by["error"]
                    await asyncio.sleep(args.step_s / 4)  # load, error window and pressure settle
                results.append(steps)
    return results


# ----------------------------------------------------------------------------------------- report


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()[:10]
    except OSError:
        lscpu = []
    return "\n".join(lscpu) or platform.processor() or platform.machine()


def table(results: Results) -> str:
    lines = [
        "| rate /s | requests | mode | p50 ms | p99 ms | 429s | cache | small | large | calls to large | cut vs (a) "
        "| cut vs (c) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for steps in results:
        plain, cached = steps["plain"], steps["cache"]
        for mode, step in steps.items():
            cut = "" if mode == "plain" else f"{1 - step.large_calls / max(plain.large_calls, 1):.0%}"
            # What the load policy (routing + adaptive rules) adds to the cache alone.
            policy_cut = f"{1 - step.large_calls / max(cached.large_calls, 1):.0%}" if mode == "gateway" else ""
            lines.append(
                f"| {step.rate:g} | {step.sent} | {LABELS[mode]} "
                f"| {step.percentile(50):.0f} | {step.percentile(99):.0f} | {step.answered_by['429']} "
                f"| {step.share('cache'):.0%} | {step.share('small'):.0%} "
                f"| {step.share('large') + step.share('default'):.0%} | {step.large_calls} | {cut} | {policy_cut} |"
            )
    return "\n".join(lines)


def plot(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [steps["plain"].rate for steps in results]
    figure, (latency, refused) = plt.subplots(1, 2, figsize=(12, 4.5))
    for (mode, label), colour in zip(LABELS.items(), ("tab:red", "tab:blue", "tab:green"), strict=True):
        steps = [pair[mode] for pair in results]
        latency.plot(rates, [s.percentile(50) for s in steps], marker="o", color=colour, label=f"{label}: p50")
        latency.plot(rates, [s.percentile(99) for s in steps], marker="x", linestyle="--", color=colour,
                     label=f"{label}: p99")  # fmt: skip
        refused.plot(rates, [s.answered_by["429"] for s in steps], marker="o", color=colour, label=label)
    latency.set(xlabel="requests / s", ylabel="latency of answered requests (ms)", title="Latency", yscale="log")
    refused.set(xlabel="requests / s", ylabel="429s seen by clients (per step)", title="Refused (429)")
    latency.legend(fontsize=7)
    refused.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=lambda text: [float(r) for r in text.split(",")], default=[3, 6, 10, 16])
    parser.add_argument("--step-s", type=float, default=15.0, help="seconds of traffic per rate and mode")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--plot", type=Path, default=OUT / "routing.png")
    args = parser.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="semcache-routing-") as tmp:
        results = asyncio.run(measure(args, Path(tmp)))
    plot(results, args.plot)
    command = f"bench/routing.py --rates {','.join(f'{r:g}' for r in args.rates)} --step-s {args.step_s:g}"
    print(f"\n## Routing by load ({started})\n")
    print(f"Command: `{command}`. Simulated models: small capacity {SMALL['capacity']}, "
          f"{SMALL['latency_ms']} ms; large capacity {LARGE['capacity']}, {LARGE['latency_ms']} ms "
          "(latency x (1 + in flight / capacity); 429 beyond capacity).\n")  # fmt: skip
    print("```\n" + machine() + "\n```\n")
    print(table(results))
    print(f"\nPlot: [{args.plot.relative_to(ROOT) if args.plot.is_relative_to(ROOT) else args.plot}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
