"""Embedder backends head to head: torch (sentence-transformers) vs ONNX Runtime fp32 vs ONNX int8.

    .venv/bin/python bench/embedders.py [--rounds 100] [--threads 1] [--pairs 500] [--seed 7]
        [--cache-dir bench/out/onnx]

1. Latency of one prompt, the semantic hit path's whole model cost: p50/p99 per backend for a short
   (~10 words) and a long (~200 words) prompt; the backends take turns call by call, so a busy
   neighbour on a shared machine slows each of them alike.
2. Throughput: texts/s at batch 1, 8 and 32 (the batcher's batches) on short prompts of varied length.
3. Quality, fp32 vs int8 (and torch, which fp32 must equal): on ../shared/data/pairs/{qqp_dev,mrpc,
   stsb}.jsonl (third-party, research licences: read by path, never copied here), `--pairs` sampled
   per file (seeded): ROC AUC of cosine similarity for duplicate vs not, the hit rate (share of
   duplicates served) at the lowest threshold whose precision reaches 0.90 / 0.95, and how many pairs
   change side of 0.8/0.9/0.95 against torch. STS-B: ≥ 4 is a duplicate, ≤ 2 not, between dropped.
   Without the data this part says so and stops; parts 1 and 2 need nothing.

The ONNX graphs are exported (first run) into `--cache-dir`, outside the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from embeddings import Embedder, OnnxEmbedder, SentenceTransformerEmbedder  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "pairs"
THRESHOLDS = (0.8, 0.9, 0.95)
PRECISIONS = (0.90, 0.95)
SHORT = [
    "How do I reverse a list in Python quickly?",
    "What is the capital city of France, please?",
    "Write a haiku about autumn leaves falling down",
    "Convert one pound to grams for my recipe",
    "Explain TCP slow start in simple terms",
    "Best way to sleep on a long plane flight?",
    "sql query to fetch the user with id 1",
    "Why is the sky blue during the day?",
]
_TOPICS = [
    "The service keeps a cache of answers keyed by the meaning of each prompt rather than its exact text",
    "so that a question asked again in other words can be answered without calling the model",
    "which saves both money and the seconds a large model needs to write a long reply",
    "but a cache that answers too eagerly serves the wrong reply to a question that only looks similar",
    "and that is why every category has its own threshold, calibrated on labelled pairs of prompts",
    "while feedback from users tightens a threshold whenever a served answer is rated as wrong",
]
LONG = " ".join(_TOPICS * 3)[: 200 * 6]  # about 200 words, under the 256-token window


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100, help="single-prompt calls per backend and length")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of every backend")
    parser.add_argument("--pairs", type=int, default=500, help="pairs sampled per data file for quality")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "bench" / "out" / "onnx")
    return parser.parse_args(argv)


def shell(command: str) -> str:
    return subprocess.run(command, shell=True, capture_output=True, text=True, check=False).stdout.strip()


def machine() -> list[str]:
    import onnxruntime
    import torch

    cpu = shell("lscpu | grep -i 'model name'").split(":")[-1].strip()
    return [
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs, {cpu}",
        f"- load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}",
    ]


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000, q))


def latency(backends: dict[str, Embedder], rounds: int) -> list[str]:
    lines = ["| prompt | backend | p50 ms | p99 ms |", "|---|---|---:|---:|"]
    for length, texts in (("short (~10 words)", SHORT), ("long (~200 words)", [LONG])):
        samples: dict[str, list[float]] = {name: [] for name in backends}
        for embedder in backends.values():  # warm-up: first calls allocate
            for text in texts[:3]:
                embedder.embed([text])
        for i in range(rounds):
            text = texts[i % len(texts)]
            for name, embedder in backends.items():
                began = time.perf_counter()
                embedder.embed([text])
                samples[name].append(time.perf_counter() - began)
        for name, taken in samples.items():
            lines.append(f"| {length} | {name} | {percentile_ms(taken, 50):.1f} | {percentile_ms(taken, 99):.1f} |")
    truncated = next(iter(backends.values())).embed([LONG])[0].truncated
    lines.append(
        f"\nlong prompt: {len(LONG.split())} words ({'cut at' if truncated else 'within'} the model's window); "
        f"{rounds} calls per backend and prompt, interleaved"
    )
    return lines


def throughput(backends: dict[str, Embedder]) -> list[str]:
    texts = [f"{text} ({i})" for i in range(12) for text in SHORT]  # 96 texts
    lines = ["| backend | batch 1 texts/s | batch 8 texts/s | batch 32 texts/s |", "|---|---:|---:|---:|"]
    rates: dict[str, list[float]] = {name: [] for name in backends}
    for batch in (1, 8, 32):
        for name, embedder in backends.items():
            began = time.perf_counter()
            for start in range(0, len(texts), batch):
                embedder.embed(texts[start : start + batch])
            rates[name].append(len(texts) / (time.perf_counter() - began))
    lines += [f"| {name} | " + " | ".join(f"{rate:.0f}" for rate in found) + " |" for name, found in rates.items()]
    return lines


def read_pairs(path: Path, size: int, seed: int) -> tuple[list[tuple[str, str]], npt.NDArray[np.int64]]:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            if "score" in row:
                score = float(row["score"])
                if 2.0 < score < 4.0:
                    continue
                label = int(score >= 4.0)
            else:
                label = int(row["label"])
            rows.append((str(row["a"]), str(row["b"]), label))
    rows = random.Random(seed).sample(rows, min(size, len(rows)))
    return [(a, b) for a, b, _ in rows], np.array([label for *_, label in rows], dtype=np.int64)


def similarities(embedder: Embedder, pairs: list[tuple[str, str]]) -> npt.NDArray[np.float64]:
    texts = [text for pair in pairs for text in pair]
    items = [item for start in range(0, len(texts), 32) for item in embedder.embed(texts[start : start + 32])]
    vectors = np.stack([item.vector for item in items]).astype(np.float64)
    result: npt.NDArray[np.float64] = np.sum(vectors[0::2] * vectors[1::2], axis=1)
    return result


def auc(scores: npt.NDArray[np.float64], labels: npt.NDArray[np.int64]) -> float:
    """Probability that a duplicate scores above a non-duplicate (ties count half)."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    if not len(positive) or not len(negative):
        return float("nan")
    above = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return float(above / (len(positive) * len(negative)))


def hit_rate_at_precision(
    scores: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], target: float
) -> tuple[float, float] | None:
    """The largest share of duplicates served by a threshold whose precision is ≥ target, and that threshold."""
    order = np.argsort(-scores, kind="stable")
    hits = np.cumsum(labels[order])
    served = np.arange(1, len(scores) + 1)
    ok = np.flatnonzero(hits / served >= target)
    positives = int(labels.sum())
    if not len(ok) or not positives:
        return None
    best = int(ok[np.argmax(hits[ok])])
    return float(hits[best] / positives), float(scores[order][best])


def quality(backends: dict[str, Embedder], size: int, seed: int) -> list[str]:
    lines = [
        "| data | pairs (dup) | backend | AUC | hit rate @ p≥0.90 (threshold) | hit rate @ p≥0.95 (threshold) "
        "| decisions changed vs torch at 0.8/0.9/0.95 |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for name in ("qqp_dev", "mrpc", "stsb"):
        pairs, labels = read_pairs(DATA / f"{name}.jsonl", size, seed)
        scores = {backend: similarities(embedder, pairs) for backend, embedder in backends.items()}
        reference = scores["torch"]
        for backend, found in scores.items():
            cells = []
            for target in PRECISIONS:
                at = hit_rate_at_precision(found, labels, target)
                cells.append("n/a" if at is None else f"{at[0]:.3f} ({at[1]:.4f})")
            changed = "/".join(str(int(((found >= t) != (reference >= t)).sum())) for t in THRESHOLDS)
            lines.append(
                f"| {name} | {len(pairs)} ({int(labels.sum())}) | {backend} | {auc(found, labels):.4f} | "
                f"{cells[0]} | {cells[1]} | {changed} |"
            )
        most = float(np.max(np.abs(scores["onnx fp32"] - reference)))
        lines.append(f"| {name} | | fp32 vs torch, max abs cosine difference | {most:.2e} | | | |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print("# Embedder backends (bench/embedders.py)\n")
    print(f"Command: `bench/embedders.py {' '.join(sys.argv[1:])}`\n")
    print("\n".join(machine()), flush=True)
    began = time.perf_counter()
    backends: dict[str, Embedder] = {
        "torch": SentenceTransformerEmbedder(threads=args.threads),
        "onnx fp32": OnnxEmbedder(cache_dir=args.cache_dir, threads=args.threads),
        "onnx int8": OnnxEmbedder(cache_dir=args.cache_dir, threads=args.threads, quantize="int8"),
    }
    print(f"- backends ready in {time.perf_counter() - began:.1f} s (an ONNX export on the first run)\n", flush=True)
    print("## Latency of one prompt\n")
    print("\n".join(latency(backends, args.rounds)) + "\n", flush=True)
    print("## Throughput\n")
    print("\n".join(throughput(backends)) + "\n", flush=True)
    print("## Quality\n")
    if not DATA.is_dir():
        print(f"{DATA} is not here: the quality part needs the shared evaluation data; stopping.")
        return 0
    print("\n".join(quality(backends, args.pairs, args.seed)), flush=True)
    print(
        f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
        f"{time.perf_counter() - began:.0f} s in all"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
