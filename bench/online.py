"""Verified thresholds online: hit rate and error rate over a replayed stream, against every static
threshold, where an answer is right iff it is the query's class's answer.

    .venv/bin/python bench/online.py [--queries 5000] [--seed 7] [--deltas 0.01,0.02,0.05] [--floor 0.70]
        [--output bench/out/online.md] [--plot bench/out/online.png]

Streams (third-party data, read by path and never copied here; without it the benchmark says so
and exits 0):

  banking77  ../shared/data/queries/banking77_intents.jsonl: 77 fine-grained intents, shuffled
             (seeded), `--queries` of them; a query's class is its intent.
  pairs      ../shared/data/pairs/{qqp_dev,mrpc}.jsonl: pairs sampled (seeded) until `--queries`
             texts; classes are the texts joined by duplicate labels (union-find), so a text of a
             non-duplicate pair is a class of its own unless a duplicate label joins it to another.
             (stsb.jsonl has similarity scores, no duplicate labels: not used.)

The simulated LLM answers every query of a class alike ("answer for class X", the signal a real LLM
gives for paraphrases: gateway/http/simulated_upstream.py's `classes`), so a served answer is right
iff the served entry's class is the query's. The judge of verified thresholds compares the two
answers' texts: exactly what the default judge's first step does with these answers.

Configurations, all in one run:
  (a) the shipped static policy: cosine threshold 0.85 (config.example.yaml's cache section), run
      through the real engine (SemanticCache + SQLite in a temp dir), which also checks (b);
  (b) every static threshold 0.70-0.99: replayed with numpy over the same embeddings (the same
      rule: the nearest stored entry is served iff its similarity reaches the threshold, every miss
      is stored), for speed on a small machine;
  (c) verified thresholds at each δ, through the real engine: the floor is `--floor` (the bottom of
      the static sweep, not a tuned value), the exploration budget not binding (its spend is
      reported), the judge queue drained after each request so a run is reproducible.
Error rate = wrong answers served / requests. "Extra upstream calls" = explorations (requests that
went upstream although a candidate could have been served).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.quality import MemoEmbedder  # noqa: E402
from embeddings import SentenceTransformerEmbedder  # noqa: E402
from gateway.cache.decisions import Hit, Miss  # noqa: E402
from gateway.cache.judge import Judgement  # noqa: E402
from gateway.cache.semantic_cache import SemanticCache  # noqa: E402
from gateway.config import (  # noqa: E402
    CacheConfig,
    EmbeddingConfig,
    FeedbackConfig,
    GatewayConfig,
    StoreConfig,
    VerifiedConfig,
)

DATA = ROOT.parent / "shared" / "data"
BANKING = DATA / "queries" / "banking77_intents.jsonl"
PAIRS = [DATA / "pairs" / "qqp_dev.jsonl", DATA / "pairs" / "mrpc.jsonl"]
SHIPPED = 0.85
STATIC = [round(0.70 + 0.01 * i, 2) for i in range(30)]
Floats = npt.NDArray[np.float32]


# --- streams ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stream:
    name: str
    texts: list[str]
    classes: list[str]


def banking_stream(count: int, seed: int) -> Stream:
    rows = [json.loads(line) for line in BANKING.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    rows = rows[:count]
    return Stream("banking77", [row["text"] for row in rows], [row["intent"] for row in rows])


def pairs_stream(count: int, seed: int) -> Stream:
    pairs = []
    for path in PAIRS:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                pairs.append((row["a"], row["b"], int(row["label"])))
    rng = random.Random(seed)
    rng.shuffle(pairs)
    parent: dict[str, str] = {}

    def find(text: str) -> str:
        parent.setdefault(text, text)
        while parent[text] != text:
            parent[text] = parent[parent[text]]
            text = parent[text]
        return text

    texts: list[str] = []
    seen: set[str] = set()
    for a, b, label in pairs:
        if len(seen) >= count:
            break
        for text in (a, b):
            if text not in seen:
                seen.add(text)
                texts.append(text)
            find(text)
        if label == 1:
            parent[find(a)] = find(b)
    # Every text of the sample, once each (a repeat would be an exact hit, which proves nothing).
    texts = texts[:count]
    rng.shuffle(texts)
    return Stream("pairs", texts, [find(text) for text in texts])


# --- embeddings --------------------------------------------------------------------------------------


# --- results -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Result:
    name: str
    hits: list[bool] = field(default_factory=list)
    wrong: list[bool] = field(default_factory=list)
    explorations: int = 0
    wall_s: float = 0.0

    def rates(self, half: bool = False) -> tuple[float, float]:
        start = len(self.hits) // 2 if half else 0
        hits, wrong = self.hits[start:], self.wrong[start:]
        return sum(hits) / max(len(hits), 1), sum(wrong) / max(len(wrong), 1)


def static_replay(stream: Stream, vectors: Floats, threshold: float) -> Result:
    """The static rule over the stream: serve the nearest stored entry iff similarity ≥ threshold;
    store every miss (exact repeats are similarity 1: served, and right)."""
    count = len(stream.texts)
    similarity = vectors @ vectors.T
    stored = np.zeros(count, dtype=bool)
    result = Result(f"static {threshold:.2f}")
    for i in range(count):
        row = np.where(stored[:i], similarity[i, :i], -1.0)
        best = int(np.argmax(row)) if i else -1
        if i and row[best] >= threshold - 1e-6:
            result.hits.append(True)
            result.wrong.append(stream.classes[best] != stream.classes[i])
        else:
            result.hits.append(False)
            result.wrong.append(False)
            stored[i] = True
    return result


class ClassJudge:
    """The simulated LLM's answers are equal iff two queries are of one class: compare the texts."""

    async def equivalent(self, cached: Mapping[str, Any], fresh: Mapping[str, Any]) -> Judgement:
        return Judgement(equivalent=_text(cached) == _text(fresh), method="text")


def _text(response: Mapping[str, Any]) -> str:
    return str(response["choices"][0]["message"]["content"])


def llm_answer(label: str) -> dict[str, Any]:
    return {"id": "chatcmpl-sim", "object": "chat.completion", "created": 1, "model": "sim-large",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer for class {label}"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12}}  # fmt: skip


POLICY = """
error_bound: {delta}
categories:
  - name: default
    similarity_threshold: {floor}
    ttl_s: 1000000000
    max_entries: 1000000
"""


async def engine_replay(
    stream: Stream, memo: MemoEmbedder, *, name: str, floor: float, delta: float | None, seed: int, folder: Path
) -> Result:
    """The stream through SemanticCache (SQLite in `folder`): `delta` None is the static rule at `floor`."""
    policy = folder / f"{name.replace(' ', '_')}.yaml"
    policy.write_text(POLICY.format(delta=delta or 0.02, floor=floor), encoding="utf-8")
    config = GatewayConfig(
        policy=str(policy),
        embedding=EmbeddingConfig(deadline_ms=60_000),
        cache=CacheConfig(
            store=StoreConfig(path=str(folder / f"{name.replace(' ', '_')}.db"), deadline_ms=60_000),
            index_deadline_ms=60_000,
            search_k=4,
        ),
        feedback=FeedbackConfig(moves_thresholds="everyone"),
        verified=VerifiedConfig(enabled=delta is not None, explore_budget_per_minute=1_000_000, seed=seed),
    )
    result = Result(name)
    started = time.perf_counter()
    async with SemanticCache(config, embedder=memo, judge=ClassJudge()) as cache:
        for text, label in zip(stream.texts, stream.classes, strict=True):
            decision = await cache.lookup({"model": "sim-large", "messages": [{"role": "user", "content": text}]},
                                          api_key="sk-bench")  # fmt: skip
            if isinstance(decision, Hit):
                result.hits.append(True)
                result.wrong.append(_text(decision.entry.response) != f"answer for class {label}")
                continue
            result.hits.append(False)
            result.wrong.append(False)
            assert isinstance(decision, Miss)
            if decision.reason == "explore":
                result.explorations += 1
            cache.complete(decision, llm_answer(label), store=True)
            if cache.judges is not None:
                await cache.judges.wait_idle(timeout_s=60)
            await cache.tasks.drain(timeout_s=60)
    result.wall_s = time.perf_counter() - started
    return result


# --- report -----------------------------------------------------------------------------------------


def best_static_at(static: Sequence[Result], error_rate: float, *, half: bool) -> Result | None:
    """The static threshold with the most hits among those at most `error_rate` wrong."""
    eligible = [result for result in static if result.rates(half)[1] <= error_rate + 1e-12]
    return max(eligible, key=lambda result: result.rates(half)[0], default=None)


def table(stream: Stream, shipped: Result, check: Result, static: list[Result], verified: list[Result]) -> list[str]:
    lines = [f"### {stream.name}: {len(stream.texts)} queries, {len(set(stream.classes))} classes", ""]
    lines += ["| configuration | hit rate | error rate | hit rate (2nd half) | error rate (2nd half) | "
              "extra upstream calls | wall s |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip

    def row(result: Result) -> str:
        (hit, err), (hit2, err2) = result.rates(), result.rates(half=True)
        wall = f"{result.wall_s:.0f}" if result.wall_s else "-"
        return (f"| {result.name} | {hit:.3f} | {err:.4f} | {hit2:.3f} | {err2:.4f} | "
                f"{result.explorations} | {wall} |")  # fmt: skip

    lines.append(row(shipped))
    lines.append(row(check))
    lines += [row(result) for result in static]
    lines += [row(result) for result in verified]
    lines += ["", "Verified against the best static threshold chosen in hindsight at no more error "
              "(whole stream; second half):", "",
              "| verified | hit rate | error rate | best static at ≤ that error | its hit rate | more hits? "
              "| 2nd half: verified | best static | more hits? |",
              "|---|---:|---:|---|---:|---|---:|---|---|"]  # fmt: skip
    for result in verified:
        cells = []
        for half in (False, True):
            hit, err = result.rates(half)
            best = best_static_at(static, err, half=half)
            best_hit = best.rates(half)[0] if best else 0.0
            name = best.name if best else "none"
            cells.append((hit, err, name, best_hit, "yes" if hit > best_hit else "no"))
        (hit, err, name, best_hit, more), (hit2, _err2, name2, best_hit2, more2) = cells
        lines.append(f"| {result.name} | {hit:.3f} | {err:.4f} | {name} | {best_hit:.3f} | {more} | "
                     f"{hit2:.3f} | {name2} ({best_hit2:.3f}) | {more2} |")  # fmt: skip
    return [*lines, ""]


def plot(path: Path, panels: list[tuple[Stream, Result, list[Result], list[Result]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(panels), figsize=(6 * len(panels), 9), squeeze=False)
    for column, (stream, shipped, static, verified) in enumerate(panels):
        for row, half in enumerate((False, True)):
            ax = axes[row][column]
            xs = [result.rates(half)[1] for result in static]
            ys = [result.rates(half)[0] for result in static]
            ax.plot(xs, ys, "o-", color="grey", markersize=3, label="static 0.70-0.99")
            for result, x, y in zip(static, xs, ys, strict=True):
                if result.name.endswith(("0", "5")):
                    ax.annotate(result.name.split()[-1], (x, y), fontsize=7, textcoords="offset points",
                                xytext=(3, 3))  # fmt: skip
            hit, err = shipped.rates(half)
            ax.plot([err], [hit], "*", color="black", markersize=12, label="shipped static (0.85)")
            for result, colour in zip(verified, ("tab:blue", "tab:orange", "tab:green"), strict=False):
                hit, err = result.rates(half)
                ax.plot([err], [hit], "D", color=colour, markersize=8, label=result.name)
            ax.set_xlabel("error rate (wrong served / requests)")
            ax.set_ylabel("hit rate")
            ax.set_title(f"{stream.name}: {'second half' if half else 'whole stream'}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def machine() -> str:
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--deltas", default="0.01,0.02,0.05")
    parser.add_argument("--floor", type=float, default=0.70)
    parser.add_argument("--streams", default="banking77,pairs")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "out" / "online.md")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "out" / "online.png")
    args = parser.parse_args(argv)
    missing = [path for path in (BANKING, *PAIRS) if not path.is_file()]
    if missing:
        print(f"bench/online.py: data not found ({', '.join(map(str, missing))}); nothing to measure")
        return 0
    deltas = [float(value) for value in args.deltas.split(",")]
    builders = {"banking77": banking_stream, "pairs": pairs_stream}
    streams = [builders[name](args.queries, args.seed) for name in args.streams.split(",")]
    memo = MemoEmbedder(SentenceTransformerEmbedder())
    started = time.perf_counter()
    for stream in streams:
        memo.embed(stream.texts)
    print(f"embedded {len(memo.table)} texts in {time.perf_counter() - started:.0f} s", flush=True)
    lines: list[str] = []
    panels = []
    with tempfile.TemporaryDirectory(prefix="semcache-online-") as folder:
        for stream in streams:
            vectors = memo.matrix(stream.texts)
            static = [static_replay(stream, vectors, threshold) for threshold in STATIC]
            shipped = await engine_replay(stream, memo, name="(a) shipped static 0.85 (engine)", floor=SHIPPED,
                                          delta=None, seed=args.seed, folder=Path(folder))  # fmt: skip
            check = static_replay(stream, vectors, SHIPPED)
            check.name = "(b) static 0.85 (numpy replay: the check of (a))"
            print(f"{stream.name}: {shipped.name} {shipped.rates()} vs replay {check.rates()}", flush=True)
            verified = []
            for delta in deltas:
                result = await engine_replay(stream, memo, name=f"(c) verified δ={delta:g}", floor=args.floor,
                                             delta=delta, seed=args.seed, folder=Path(folder))  # fmt: skip
                print(f"{stream.name}: {result.name} {result.rates()} explorations {result.explorations} "
                      f"in {result.wall_s:.0f} s", flush=True)  # fmt: skip
                verified.append(result)
            for result in static:
                result.name = f"(b) {result.name}"
            lines += table(stream, shipped, check, static, verified)
            panels.append((stream, shipped, static, verified))
    plot(args.plot, panels)
    command = "python bench/online.py " + " ".join(shlex.quote(arg) for arg in (argv or sys.argv[1:]))
    header = [f"Command: `{command.strip()}`; floor of the verified runs {args.floor:g}; seed {args.seed}.", ""]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join([*header, *lines]), encoding="utf-8")
    print("\n".join([*header, *lines]))
    print(machine().splitlines()[:12])
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
