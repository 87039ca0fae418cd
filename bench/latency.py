"""Latency benchmark: what the gateway adds on top of the work it cannot avoid, measured in one run.

    .venv/bin/python bench/latency.py [--requests 200] [--concurrency 32]

It starts the simulated upstream (gateway/http/simulated_upstream.py, a stand-in for a real LLM, here
at 0 ms latency) and the gateway (`semcache serve`, real uvicorn with uvloop/httptools when they
are installed) as subprocesses, and measures, interleaved request by request so that other load
on the machine falls on every series alike:

  (a) the upstream called directly over HTTP       (b) a gateway miss (every prompt unique)
  (c) a gateway semantic hit (a stored paraphrase)  (d) a gateway exact hit (the same prompt again)
  (e) the floor: one embedding + one index search in-process, no HTTP

then hits/s with `--concurrency` clients against the embedder's own batched throughput, and
litellm.acompletion against a raw httpx POST. Every figure is printed as measured; the Markdown
block at the end can be pasted into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import itertools
import math
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
MODEL = "sim-large"
# Each key is a tenant of its own, so each is its own cache scope: the misses never land in the
# scope that the hits search, which holds exactly the originals below (as the floor's index does).
HIT_KEY = "bench-hits"
MISS_KEY = "bench-misses"
WARM_KEY = "bench-warm-up"

# (stored prompt, paraphrase): different wording, so only the semantic path can answer.
PAIRS = [
    ("How do I reverse a list in Python?", "What is the way to reverse a Python list?"),
    ("What is the capital city of Australia?", "Which city is the capital of Australia?"),
    ("How many days are there in a leap year?", "How many days does a leap year have?"),
    ("What is the boiling point of water at sea level?", "At sea level, at what temperature does water boil?"),
    ("How do I undo the last git commit?", "How can I revert my most recent git commit?"),
    ("What are the symptoms of vitamin D deficiency?", "What symptoms does a lack of vitamin D cause?"),
    (
        "How do I convert a string to an integer in JavaScript?",
        "In JavaScript, how can I turn a string into an integer?",
    ),
    ("What is the difference between TCP and UDP?", "How does TCP differ from UDP?"),
    ("How long should I boil an egg for a soft yolk?", "For a runny yolk, how many minutes should an egg boil?"),
    ("Who wrote the novel Pride and Prejudice?", "Who is the author of Pride and Prejudice?"),
    ("How do I center a div horizontally with CSS?", "What CSS centers a div horizontally?"),
    ("What is the speed of light in a vacuum?", "How fast does light travel in a vacuum?"),
    ("How can I improve my sleep quality?", "How can I improve the quality of my sleep?"),
    ("How do I read a CSV file with pandas?", "How can I load a CSV file using pandas?"),
    ("What causes the seasons on Earth?", "Why does Earth have seasons?"),
    ("How do I make a cup of green tea?", "How do I prepare a cup of green tea?"),
    ("What is the tallest mountain in the world?", "Which mountain is the highest on Earth?"),
    ("How do I list all running processes on Linux?", "On Linux, how can I see every running process?"),
    ("What is photosynthesis?", "Can you explain what photosynthesis is?"),
    ("How do I compute the factorial of a number recursively?", "How can I write a recursive factorial function?"),
    ("What is the population of Japan?", "How many people live in Japan?"),
    ("How do I remove duplicates from a list in Python?", "How can I remove duplicate items from a Python list?"),
    ("What is the best way to learn a new language?", "What is the best method for learning a new language?"),
    ("How do I change my Wi-Fi password?", "How can I update the password of my Wi-Fi network?"),
    ("What does HTTP status code 404 mean?", "What is the meaning of an HTTP 404 status?"),
    ("How do I create a virtual environment in Python?", "How can I set up a Python virtual environment?"),
    ("What is the chemical formula of table salt?", "What is table salt's chemical formula?"),
    ("How many bones are in the adult human body?", "How many bones does an adult human have?"),
    ("How do I sort a dictionary by value in Python?", "How can I sort a Python dict by its values?"),
    ("What is the difference between a virus and a bacterium?", "How do viruses differ from bacteria?"),
]

# Unique miss prompts are drawn from these, so that no two of them are paraphrases of each other.
_OPENERS = ("Tell me about", "Explain", "Write a note on", "Summarize", "Describe", "Compare")
_WORDS = (
    "anchor",
    "basalt",
    "cactus",
    "dolphin",
    "ember",
    "falcon",
    "glacier",
    "harbor",
    "iceberg",
    "jasmine",
    "kettle",
    "lantern",
    "meadow",
    "nebula",
    "orchard",
    "pepper",
    "quartz",
    "raven",
    "saffron",
    "tundra",
    "umbrella",
    "violin",
    "walnut",
    "yacht",
    "zebra",
    "almanac",
    "bicycle",
    "canyon",
    "dynamo",
    "easel",
    "fjord",
    "gazebo",
    "hammock",
    "igloo",
    "jigsaw",
    "kayak",
    "ledger",
    "marble",
    "nutmeg",
    "oasis",
    "parsec",
    "quiver",
    "rhubarb",
    "sextant",
    "trellis",
    "unicorn",
    "volcano",
    "wombat",
    "xylophone",
    "yodel",
    "zeppelin",
    "abacus",
    "barometer",
    "compass",
    "drizzle",
    "eclipse",
    "furnace",
    "geyser",
    "hopscotch",
    "inkwell",
    "juniper",
    "kiln",
    "lagoon",
    "mosaic",
)


def unique_prompts(count: int, *, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(_OPENERS)} {' '.join(rng.sample(_WORDS, 5))} ({i})" for i in range(count)]


# ------------------------------------------------------------------------------------------ stats


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    samples_ms: list[float]

    @property
    def p50(self) -> float:
        return percentile(self.samples_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.samples_ms, 99)


# -------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def semcache_command() -> list[str]:
    script = Path(sys.executable).parent / "semcache"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


@contextlib.contextmanager
def subprocess_running(command: list[str], *, log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


async def wait_ready(
    client: httpx.AsyncClient, url: str, process: subprocess.Popen[bytes], *, log: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: process exited with {process.returncode}\n{log_tail(log)}")
        with contextlib.suppress(httpx.TransportError):
            if (await client.get(url)).status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise SystemExit(f"{url}: not ready after {timeout_s:.0f} s\n{log_tail(log)}")


# ---------------------------------------------------------------------------------------- bench


def body(prompt: str) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await call()
    return (time.perf_counter() - started) * 1000, result


@dataclass(slots=True)
class Bench:
    client: httpx.AsyncClient
    upstream: str
    gateway: str

    async def post(self, base: str, prompt: str, key: str) -> tuple[float, httpx.Response]:
        elapsed_ms, response = await timed(
            lambda: self.client.post(f"{base}/v1/chat/completions", json=body(prompt), headers=auth(key))
        )
        response.raise_for_status()
        response.json()  # a client reads the answer; parsing it is part of every series alike
        return elapsed_ms, response


def outcome(response: httpx.Response) -> str:
    return response.headers.get("x-semcache", "?")


def write_config(
    workdir: Path, *, upstream_url: str, gateway_port: int, max_wait_ms: float | None, backend: str | None
) -> Path:
    """config.example.yaml with the bench's ports and a fresh store, so every run starts cold."""
    config = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    config["server"]["port"] = gateway_port
    config["upstream"]["api_base"] = f"{upstream_url}/v1"
    for deployment in config.get("deployments") or []:  # every simulated model is the bench's upstream
        deployment["api_base"] = f"{upstream_url}/v1"
    config["cache"]["store"]["path"] = str(workdir / "cache.db")
    if config.get("policy"):  # relative to the config file, which now lives elsewhere
        config["policy"] = str((ROOT / config["policy"]).resolve())
    if max_wait_ms is not None:
        config["embedding"]["max_wait_ms"] = max_wait_ms
    if backend is not None:
        config["embedding"]["backend"] = backend
    # This bench measures the hit path: verified thresholds would explore some paraphrases instead
    # (bench/online.py measures those), so here every candidate above the threshold is served.
    config.setdefault("verified", {})["enabled"] = False
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def warm_up(bench: Bench, count: int) -> None:
    for prompt in unique_prompts(count, seed=1):
        await bench.post(bench.upstream, prompt, WARM_KEY)
        await bench.post(bench.gateway, prompt, WARM_KEY)
    await asyncio.sleep(0.5)
    for prompt in unique_prompts(count, seed=1):
        await bench.post(bench.gateway, prompt, WARM_KEY)


async def store_pairs(bench: Bench, results: dict[str, Any]) -> list[tuple[str, str]]:
    """Store every original; keep the pairs whose original is an exact hit and paraphrase a semantic one."""
    for original, _ in PAIRS:
        _, response = await bench.post(bench.gateway, original, HIT_KEY)
        if outcome(response) != "miss":
            raise SystemExit(f"expected a miss for a fresh prompt, got {outcome(response)}")
    await asyncio.sleep(1.0)  # the answers are stored after they are sent
    pairs, probe = [], []
    for original, paraphrase in PAIRS:
        _, exact = await bench.post(bench.gateway, original, HIT_KEY)
        _, semantic = await bench.post(bench.gateway, paraphrase, HIT_KEY)
        categories = (exact.headers.get("x-semcache-category"), semantic.headers.get("x-semcache-category"))
        probe.append(
            (
                paraphrase,
                outcome(semantic),
                semantic.headers.get("x-semcache-similarity"),
                "/".join(map(str, categories)),
            )
        )
        if outcome(exact) == "exact" and outcome(semantic) == "hit":
            pairs.append((original, paraphrase))
    if not pairs:
        raise SystemExit(f"no paraphrase was a semantic hit: {probe}")
    results["pairs_hitting"] = (len(pairs), len(PAIRS))
    results["misses_probe"] = [p for p in probe if p[1] != "hit"]
    return pairs


async def direct_and_miss(bench: Bench, count: int, results: dict[str, Any]) -> tuple[Series, Series]:
    """(a) and (b): the same unique prompts, to the upstream and through the gateway, interleaved."""
    direct, miss, outcomes = [], [], Counter[str]()
    for prompt in unique_prompts(count, seed=2):
        direct.append((await bench.post(bench.upstream, prompt, MISS_KEY))[0])
        elapsed_ms, response = await bench.post(bench.gateway, prompt, MISS_KEY)
        outcomes[outcome(response)] += 1
        if outcome(response) == "miss":
            miss.append(elapsed_ms)
    results["miss_outcomes"] = dict(outcomes)
    await asyncio.sleep(0.5)
    return Series("(a) upstream direct (httpx)", direct), Series("(b) gateway miss", miss)


async def hits_and_floor(
    bench: Bench, embedder: Any, pairs: Sequence[tuple[str, str]], count: int, *, search_k: int, results: dict[str, Any]
) -> tuple[Series, Series, Series, Series]:
    """(c), (d), (e) and the HTTP floor (f), interleaved. The floor's index holds the same originals
    as the hit scope."""
    from gateway.cache.index import IndexItem, VectorIndex

    index = VectorIndex(embedder.dimension)
    try:
        now = time.time()
        vectors = embedder.embed([original for original, _ in pairs])
        items = [
            IndexItem(entry_id=str(i), scope="bench", vector=v.vector, created_at=now, expires_at=now + 86_400)
            for i, v in enumerate(vectors)
        ]
        await index.add(items)
        hit, exact, floor, http, similarities, outcomes = [], [], [], [], [], Counter[str]()
        for i in range(count):
            original, paraphrase = pairs[i % len(pairs)]
            elapsed_ms, response = await bench.post(bench.gateway, paraphrase, HIT_KEY)
            outcomes[outcome(response)] += 1
            if outcome(response) == "hit":
                hit.append(elapsed_ms)
                similarities.append(float(response.headers["x-semcache-similarity"]))
            elapsed_ms, response = await bench.post(bench.gateway, original, HIT_KEY)
            if outcome(response) == "exact":
                exact.append(elapsed_ms)
            started = time.perf_counter()
            vector = embedder.embed([paraphrase])[0].vector
            matches = await index.search(vector, scope="bench", k=search_k)
            floor.append((time.perf_counter() - started) * 1000)
            if not matches:
                raise SystemExit("the floor's index search found nothing")
            http.append((await timed(lambda: bench.client.get(f"{bench.gateway}/healthz")))[0])
    finally:
        index.close()
    results["hit_outcomes"] = dict(outcomes)
    results["hit_similarity_p50"] = percentile(similarities, 50) if similarities else None
    return (
        Series("(c) gateway semantic hit", hit),
        Series("(d) gateway exact hit", exact),
        Series("(e) floor: embed 1 + index search, in-process", floor),
        Series("(f) HTTP floor: GET /healthz on the gateway", http),
    )


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from embeddings import open_embedder
    from gateway.config import embedder_spec, load_config
    from gateway.upstream import import_litellm

    upstream_port, gateway_port = free_port(), free_port()
    upstream_url, gateway_url = f"http://127.0.0.1:{upstream_port}", f"http://127.0.0.1:{gateway_port}"
    config_path = write_config(
        workdir, upstream_url=upstream_url, gateway_port=gateway_port, max_wait_ms=args.max_wait_ms,
        backend=args.backend,
    )  # fmt: skip
    config = yaml.safe_load(config_path.read_text())
    embedding, cache = config["embedding"], config["cache"]
    batch = int(embedding.get("max_batch", 32))
    results: dict[str, Any] = {
        "config": {
            **embedding,
            "similarity_threshold": cache.get("similarity_threshold"),
            "policy": config.get("policy"),
        }
    }

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    upstream_cmd = [sys.executable, "-m", "gateway.http.simulated_upstream", "--port", str(upstream_port)]
    gateway_cmd = [*semcache_command(), "serve", "--config", str(config_path), "--port", str(gateway_port)]
    up_log, gw_log = workdir / "upstream.log", workdir / "gateway.log"
    with (
        subprocess_running([*upstream_cmd, "--latency-ms", "0"], log=up_log, env=env) as up_proc,
        subprocess_running([*gateway_cmd, "--log-level", "warning"], log=gw_log, env=env) as gw_proc,
    ):
        # The bench's own model and litellm load while both servers start.
        status("loading the embedding model and litellm in-process (servers start meanwhile)")
        # The floor embeds with what the gateway embeds with (the config's backend and model).
        loaded = load_config(config_path)
        embedder = open_embedder(embedder_spec(loaded, loaded.embedding.model))
        litellm = import_litellm()
        # Idle connections are dropped well before uvicorn's 5 s keep-alive timeout, so that no request
        # races the server closing its connection while the bench measures something in-process.
        limits = httpx.Limits(
            max_connections=args.concurrency, max_keepalive_connections=args.concurrency, keepalive_expiry=2.0
        )
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            await wait_ready(client, f"{upstream_url}/v1/models", up_proc, log=up_log, timeout_s=60)
            await wait_ready(client, f"{gateway_url}/readyz", gw_proc, log=gw_log, timeout_s=180)
            bench = Bench(client=client, upstream=upstream_url, gateway=gateway_url)
            status("warming up")
            await warm_up(bench, args.warmup)
            status(f"storing {len(PAIRS)} prompts, then checking that their paraphrases hit")
            pairs = await store_pairs(bench, results)
            status(f"(a) upstream direct vs (b) gateway miss: {args.requests} unique prompts each, interleaved")
            a, b = await direct_and_miss(bench, args.requests, results)
            status("(c) semantic hit vs (d) exact hit vs (e) embed + search in-process, interleaved")
            c, d, e, f = await hits_and_floor(
                bench, embedder, pairs, args.requests, search_k=cache.get("search_k", 4), results=results
            )
            results["series"] = dict(zip("abcdef", (a, b, c, d, e, f), strict=True))
            status(
                f"hits/s at concurrency {args.concurrency} ({args.concurrent_requests} requests) vs the embedder "
                f"in batches of {batch} vs the batcher in-process, alternating rounds"
            )
            results["concurrent"] = await throughput(
                bench,
                embedder,
                pairs,
                concurrency=args.concurrency,
                total=args.concurrent_requests,
                batch=batch,
                max_wait_ms=float(embedding.get("max_wait_ms", 0.0)),
                gateway_pid=gw_proc.pid,
            )
            status(f"litellm.acompletion vs raw httpx POST to the upstream, {args.requests} each, interleaved")
            results["litellm"], results["httpx"] = await litellm_cost(litellm, bench, args.requests)
            metrics = (await client.get(f"{gateway_url}/metrics")).text
            results["fail_open"] = [
                line
                for line in metrics.splitlines()
                if line.startswith("semcache_fail_open_total") and not line.endswith(" 0.0")
            ]
    return results


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process, all threads (Linux /proc); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_s() -> tuple[float, float] | None:
    """(busy, idle) CPU seconds of the whole machine since boot (Linux /proc/stat); None elsewhere."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), idle / os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class Tally:
    seconds: float = 0.0
    count: int = 0

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


async def throughput(
    bench: Bench,
    embedder: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    concurrency: int,
    total: int,
    batch: int,
    max_wait_ms: float,
    gateway_pid: int,
    rounds: int = 3,
) -> dict[str, Any]:
    """Hits/s over HTTP with `concurrency` clients, the embedder alone in batches of `batch`, and the
    batcher alone with `concurrency` callers, in alternating rounds so that other load on the
    machine falls on all three alike."""
    from embeddings import BatcherConfig, EmbeddingBatcher

    paraphrases = [paraphrase for _, paraphrase in pairs]
    texts = itertools.cycle(paraphrases)
    http, model, batched = Tally(), Tally(), Tally()
    outcomes, timed = Counter[str](), Counter[str]()
    cpu = {"gateway_s": 0.0, "client_s": 0.0, "embedder_s": 0.0, "machine_busy_s": 0.0, "machine_idle_s": 0.0}

    async def concurrently(count: int, call: Callable[[str], Awaitable[bool]]) -> tuple[float, int]:
        remaining, done = count, 0

        async def worker() -> None:
            nonlocal remaining, done
            while remaining > 0:
                remaining -= 1
                succeeded = await call(next(texts))  # awaited first: `done += await ...` loses updates
                done += succeeded

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, done

    async def hit(text: str) -> bool:
        _, response = await bench.post(bench.gateway, text, HIT_KEY)
        outcomes[outcome(response)] += 1
        return outcome(response) == "hit"

    async def via_batcher(text: str) -> bool:
        await batcher.embed(text)
        return True

    batch_texts = list(itertools.islice(itertools.cycle(paraphrases), batch))
    async with EmbeddingBatcher(embedder, BatcherConfig(max_batch=batch, max_wait_ms=max_wait_ms)) as batcher:
        await concurrently(concurrency * 2, hit)  # warm-up: opens every connection
        await concurrently(concurrency, via_batcher)
        embedder.embed(batch_texts)
        for _ in range(rounds):
            await concurrently(concurrency, hit)  # untimed: reopens the connections dropped while idle
            before, gateway_cpu, client_cpu = outcomes.copy(), process_cpu_s(gateway_pid), time.process_time()
            machine = machine_cpu_s()
            elapsed_s, hits = await concurrently(total // rounds, hit)
            timed.update(outcomes - before)
            http.seconds += elapsed_s
            http.count += hits
            cpu["client_s"] += time.process_time() - client_cpu
            if gateway_cpu is not None:
                cpu["gateway_s"] += (process_cpu_s(gateway_pid) or 0.0) - gateway_cpu
            if machine is not None and (after := machine_cpu_s()) is not None:
                cpu["machine_busy_s"] += after[0] - machine[0]
                cpu["machine_idle_s"] += after[1] - machine[1]
            started, thread_cpu = time.perf_counter(), time.thread_time()
            while (elapsed_s := time.perf_counter() - started) < 1.0:
                embedder.embed(batch_texts)
                model.count += batch
            model.seconds += elapsed_s
            cpu["embedder_s"] += time.thread_time() - thread_cpu
            elapsed_s, done = await concurrently(max(batch, total // rounds // 2), via_batcher)
            batched.seconds += elapsed_s
            batched.count += done
    requests = sum(timed.values())
    return {
        "outcomes": dict(timed),
        "hits_per_s": http.rate,
        "embedder_texts_per_s": model.rate,
        "batcher_texts_per_s": batched.rate,
        "gateway_cpu_ms_per_request": cpu["gateway_s"] * 1000 / requests if requests else None,
        "client_cpu_ms_per_request": cpu["client_s"] * 1000 / requests if requests else None,
        "http_seconds": http.seconds,
        "embedder_cpu_ms_per_text": cpu["embedder_s"] * 1000 / model.count if model.count else None,
        "machine_busy_share": (
            cpu["machine_busy_s"] / (cpu["machine_busy_s"] + cpu["machine_idle_s"]) if cpu["machine_idle_s"] else None
        ),
        "others_cpu_ms_per_request": (
            (cpu["machine_busy_s"] - cpu["gateway_s"] - cpu["client_s"]) * 1000 / requests
            if cpu["machine_busy_s"] and requests
            else None
        ),
    }


async def litellm_cost(litellm: Any, bench: Bench, count: int) -> tuple[Series, Series]:
    api_base = f"{bench.upstream}/v1"

    async def via_litellm(prompt: str) -> Any:
        return await litellm.acompletion(
            model=f"openai/{MODEL}",
            messages=body(prompt)["messages"],
            api_base=api_base,
            api_key="bench",
            max_retries=0,
            timeout=60,
        )

    async def via_httpx(prompt: str) -> Any:
        response = await bench.client.post(f"{api_base}/chat/completions", json=body(prompt), headers=auth("bench"))
        response.raise_for_status()
        return response.json()

    for prompt in unique_prompts(10, seed=3):
        await via_litellm(prompt)
        await via_httpx(prompt)
    lite, raw = [], []
    for prompt in unique_prompts(count, seed=4):
        lite.append((await timed(lambda p=prompt: via_litellm(p)))[0])
        raw.append((await timed(lambda p=prompt: via_httpx(p)))[0])
    return Series("litellm.acompletion", lite), Series("raw httpx POST + .json()", raw)


# --------------------------------------------------------------------------------------- report


def status(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def versions() -> str:
    found = []
    for name in ("uvicorn", "uvloop", "httptools", "starlette", "httpx", "litellm", "torch", "sentence-transformers"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    return ", ".join(found)


def fmt_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def fmt_ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or not denominator:
        return "n/a"
    return f"{numerator / denominator:.2f} ({numerator:.1f} / {denominator:.1f} ms)"


def fmt_share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    s: dict[str, Series] = results["series"]
    a, b, c, d, e, f = (s[k] for k in "abcdef")
    ratio_ce = c.p50 / e.p50
    conc = results["concurrent"]
    embed_rate = conc["embedder_texts_per_s"]
    ratio_hits = conc["hits_per_s"] / embed_rate
    lite, raw = results["litellm"], results["httpx"]
    cfg = results["config"]
    cores = os.cpu_count() or 1
    policy = os.path.relpath(cfg["policy"], ROOT) if cfg["policy"] else None
    lines = [
        f"### bench/latency.py, {time.strftime('%Y-%m-%d %H:%M %Z')}",
        "",
        f"- Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; {versions()}",
        f"- gateway config: embedding max_batch={cfg['max_batch']} max_wait_ms={cfg['max_wait_ms']} "
        f"threads={cfg['threads']} backend={cfg.get('backend', 'torch')}; policy={policy} "
        f"(else similarity_threshold={cfg['similarity_threshold']}); "
        f"--requests {args.requests} --concurrency {args.concurrency} "
        f"--concurrent-requests {args.concurrent_requests}",
        f"- paraphrase pairs that hit: {results['pairs_hitting'][0]}/{results['pairs_hitting'][1]}"
        + (f" (below threshold: {results['misses_probe']})" if results["misses_probe"] else "")
        + f"; median hit similarity {results['hit_similarity_p50']}",
        f"- outcomes: (b) {results['miss_outcomes']}; (c) {results['hit_outcomes']}; "
        f"concurrent {conc['outcomes']}; fail-open counters: {results['fail_open'] or 'none'}",
        f"- CPU during the concurrent hits ({cores} cores give {cores * 1000 / max(conc['hits_per_s'], 1e-9):.1f} ms "
        "per hit): "
        f"gateway {fmt_ms(conc['gateway_cpu_ms_per_request'])} per request, "
        f"this bench's HTTP client {fmt_ms(conc['client_cpu_ms_per_request'])} per request, "
        f"everything else on the machine {fmt_ms(conc['others_cpu_ms_per_request'])} per request; "
        f"machine busy {fmt_share(conc['machine_busy_share'])} of the time",
        "",
        "| measurement | p50 ms | p99 ms | n |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {x.label} | {x.p50:.2f} | {x.p99:.2f} | {len(x.samples_ms)} |" for x in (a, b, c, d, e, f)]
    lines += [f"| {x.label} | {x.p50:.2f} | {x.p99:.2f} | {len(x.samples_ms)} |" for x in (lite, raw)]
    lines += [
        "",
        "| figure | value | target | result |",
        "| --- | ---: | --- | --- |",
        f"| (c) / (e), p50 | {ratio_ce:.2f}x ({c.p50:.2f} / {e.p50:.2f} ms) | ≤ 1.3x | {verdict(ratio_ce <= 1.3)} |",
        f"| (c) / (e), p99 | {c.p99 / e.p99:.2f}x | — | — |",
        f"| (d) exact hit, p50 | {d.p50:.2f} ms | ≤ 2 ms | {verdict(d.p50 <= 2.0)} |",
        f"| (d) - (f): the exact path above a bare HTTP round trip, p50 | {d.p50 - f.p50:.2f} ms | — | — |",
        f"| (c) - (e): the semantic path above its floor, p50 | {c.p50 - e.p50:.2f} ms | — | — |",
        f"| (b) - (a), p50 | {b.p50 - a.p50:.2f} ms | — | — |",
        f"| (b) - (a), p99 | {b.p99 - a.p99:.2f} ms | — | — |",
        f"| hits/s at concurrency {args.concurrency} (HTTP) | {conc['hits_per_s']:.0f} | — | — |",
        f"| embedder alone, texts/s in batches of {cfg['max_batch']} | {embed_rate:.0f} | — | — |",
        f"| batcher in-process, {args.concurrency} concurrent callers, texts/s | "
        f"{conc['batcher_texts_per_s']:.0f} | — | — |",
        f"| CPU per text, embedder alone ÷ CPU per hit, gateway process | "
        f"{fmt_ratio(conc['embedder_cpu_ms_per_text'], conc['gateway_cpu_ms_per_request'])} | — | — |",
        f"| hits/s ÷ embedder texts/s | {ratio_hits:.2f} | ≥ 0.8 | {verdict(ratio_hits >= 0.8)} |",
        f"| litellm.acompletion - raw httpx, p50 | {lite.p50 - raw.p50:.2f} ms "
        f"({lite.p50:.2f} vs {raw.p50:.2f}) | — | — |",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per latency series")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients for hits/s")
    parser.add_argument("--concurrent-requests", type=int, default=1024, help="requests in the hits/s run")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up requests per path")
    parser.add_argument("--max-wait-ms", type=float, help="override embedding.max_wait_ms of config.example.yaml")
    parser.add_argument(
        "--backend", choices=["onnx", "torch"], help="override embedding.backend of config.example.yaml"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import uvloop
    except ImportError:
        uvloop = None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="semcache-bench-") as workdir:
        coroutine = measure(args, Path(workdir))
        try:
            results = uvloop.run(coroutine) if uvloop is not None else asyncio.run(coroutine)
        except Exception:
            for log in sorted(Path(workdir).glob("*.log")):
                print(f"--- last lines of {log.name} ---\n{log_tail(log)}", file=sys.stderr)
            raise
    status(f"done in {time.perf_counter() - started:.0f} s")
    print(report(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
