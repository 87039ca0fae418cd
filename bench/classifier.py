"""Category classifier benchmark: accuracy on real, labelled user queries, and what one costs.

    .venv/bin/python bench/classifier.py [--exemplars 50] [--held-out 2000] [--seed 7]
                                         [--output FILE]

Data: ../shared/data/queries/categories_dev.jsonl (text, category: code, chat, factual, finance,
time_sensitive), third-party and licensed for research only: read by path, never copied here.
Without it the benchmark says so and exits 0.

One policy category per label, whose exemplars are `--exemplars` queries of that label drawn with
a fixed seed; a disjoint, stratified `--held-out` sample (the file's label mix) is classified,
for both methods and a few margin / floor settings. `default` (the classifier abstaining) counts
as wrong in accuracy; coverage is the share not sent to `default`. Costs: the classification of
one request (its vector already computed), and the embedding of a text, alone and in batches.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from embeddings import SentenceTransformerEmbedder  # noqa: E402
from policies import DEFAULT, CategoryClassifier, ClassifierSettings, parse_policy  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "queries" / "categories_dev.jsonl"
METHODS: list[tuple[str, int]] = [("centroid", 0), ("knn", 5)]  # each with every margin and floor
MARGINS = [0.0, 0.02, 0.05]
FLOORS = [0.0, 0.1, 0.15, 0.2, 0.3]
OTHER_K = [1, 3, 10]  # knn, no margin, no floor
BATCH = 64

Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Setting:
    method: str
    k: int
    min_confidence: float
    min_similarity: float

    @property
    def label(self) -> str:
        method = f"knn k={self.k}" if self.method == "knn" else "centroid"
        return f"{method}, margin {self.min_confidence:g}, floor {self.min_similarity:g}"


@dataclass(frozen=True, slots=True, eq=False)
class Outcome:
    setting: Setting
    predictions: list[str]


def read_rows(path: Path) -> dict[str, list[str]]:
    by_label: dict[str, list[str]] = defaultdict(list)
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            text = str(row["text"]).strip()
            if text:
                by_label[str(row["category"])].append(text)
    return dict(sorted(by_label.items()))


def split(
    by_label: dict[str, list[str]], exemplars: int, held_out: int, seed: int
) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """Exemplars per label, and a disjoint held-out sample in the file's label proportions."""
    rng = random.Random(seed)
    chosen: dict[str, list[str]] = {}
    pools: dict[str, list[str]] = {}
    for label, texts in by_label.items():
        shuffled = list(dict.fromkeys(texts))  # a text repeated in the file must not be on both sides
        rng.shuffle(shuffled)
        chosen[label], pools[label] = shuffled[:exemplars], shuffled[exemplars:]
    total = sum(len(pool) for pool in pools.values())
    quotas = {label: round(held_out * len(pool) / total) for label, pool in pools.items()}
    largest = max(quotas, key=lambda label: quotas[label])
    quotas[largest] += held_out - sum(quotas.values())
    sample = [(text, label) for label, pool in pools.items() for text in pool[: quotas[label]]]
    rng.shuffle(sample)
    return chosen, sample


def embed(embedder: SentenceTransformerEmbedder, texts: Sequence[str]) -> tuple[Matrix, float]:
    """Vectors in batches of BATCH, and the seconds it took. Texts of similar length are batched
    together (as a server's batcher cannot): a batch is padded to its longest text."""
    start = time.perf_counter()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors: list[Matrix] = [np.empty(0, dtype=np.float32)] * len(texts)
    for i in range(0, len(order), BATCH):
        batch = order[i : i + BATCH]
        for index, item in zip(batch, embedder.embed([texts[j] for j in batch]), strict=True):
            vectors[index] = item.vector
    return np.stack(vectors), time.perf_counter() - start


def single_embedding_ms(embedder: SentenceTransformerEmbedder, texts: Sequence[str]) -> list[float]:
    times = []
    for text in texts:
        start = time.perf_counter()
        embedder.embed([text])
        times.append((time.perf_counter() - start) * 1000)
    return times


@dataclass(frozen=True, slots=True)
class Embedded:
    exemplars: dict[str, Matrix]
    sample: Matrix
    exemplar_s: float
    per_label_s: dict[str, float]  # the held-out texts of each label, batched
    single_ms: list[float]  # some held-out texts, one call each


def embed_everything(
    embedder: SentenceTransformerEmbedder, exemplars: dict[str, list[str]], sample: list[tuple[str, str]]
) -> Embedded:
    exemplar_vectors: dict[str, Matrix] = {}
    exemplar_s = 0.0
    for label, texts in exemplars.items():
        exemplar_vectors[label], seconds = embed(embedder, texts)
        exemplar_s += seconds
    # The held-out texts label by label, to show what text length costs (chat turns are long).
    sample_vectors = np.zeros((len(sample), embedder.dimension), dtype=np.float32)
    per_label_s: dict[str, float] = {}
    for label in exemplars:
        rows = [i for i, (_, truth) in enumerate(sample) if truth == label]
        sample_vectors[rows], per_label_s[label] = embed(embedder, [sample[i][0] for i in rows])
    single_ms = single_embedding_ms(embedder, [text for text, _ in sample[:100]])
    return Embedded(exemplar_vectors, sample_vectors, exemplar_s, per_label_s, single_ms)


def build(setting: Setting, exemplars: dict[str, list[str]], vectors: dict[str, Matrix]) -> CategoryClassifier:
    classifier: dict[str, Any] = {
        "method": setting.method,
        "min_confidence": setting.min_confidence,
        "min_similarity": setting.min_similarity,
    }
    if setting.method == "knn":
        classifier["k"] = setting.k
    policy = parse_policy(
        {
            "classifier": classifier,
            "categories": [{"name": label, "exemplars": texts} for label, texts in exemplars.items()],
        },
        source="bench",
    )
    return CategoryClassifier(policy, vectors)


def scores(labels: list[str], truth: list[str], predicted: list[str]) -> dict[str, tuple[float, float, float, int]]:
    """Per label: precision, recall, F1, support. `default` is a prediction of no label."""
    out = {}
    for label in labels:
        tp = sum(1 for t, p in zip(truth, predicted, strict=True) if t == label and p == label)
        fp = sum(1 for t, p in zip(truth, predicted, strict=True) if t != label and p == label)
        fn = sum(1 for t, p in zip(truth, predicted, strict=True) if t == label and p != label)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[label] = (precision, recall, f1, tp + fn)
    return out


def summary(labels: list[str], truth: list[str], outcome: Outcome) -> str:
    predicted = outcome.predictions
    correct = sum(1 for t, p in zip(truth, predicted, strict=True) if t == p)
    covered = [(t, p) for t, p in zip(truth, predicted, strict=True) if p != DEFAULT]
    covered_correct = sum(1 for t, p in covered if t == p)
    macro_f1 = statistics.mean(f1 for _, _, f1, _ in scores(labels, truth, predicted).values())
    return (
        f"| {outcome.setting.label} | {correct / len(truth):.3f} | {macro_f1:.3f} | "
        f"{len(covered) / len(truth):.3f} | {covered_correct / max(1, len(covered)):.3f} |"
    )


def per_label_table(labels: list[str], truth: list[str], outcome: Outcome) -> list[str]:
    lines = [
        f"**{outcome.setting.label}**",
        "",
        "| category | precision | recall | F1 | support | sent to default |",
        "|---|---|---|---|---|---|",
    ]
    table = scores(labels, truth, outcome.predictions)
    for label in labels:
        precision, recall, f1, support = table[label]
        abstained = sum(1 for t, p in zip(truth, outcome.predictions, strict=True) if t == label and p == DEFAULT)
        lines.append(f"| {label} | {precision:.3f} | {recall:.3f} | {f1:.3f} | {support} | {abstained} |")
    return [*lines, ""]


def confusion(labels: list[str], truth: list[str], outcome: Outcome) -> list[str]:
    counts = Counter(zip(truth, outcome.predictions, strict=True))
    columns = [*labels, DEFAULT]
    lines = [
        f"**Confusion, {outcome.setting.label}** (rows: true label, columns: predicted)",
        "",
        "| true \\ predicted | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(str(counts[(label, column)]) for column in columns) + " |")
    return [*lines, ""]


def cost_us(classifier: CategoryClassifier, sample: list[tuple[str, str]], vectors: Matrix) -> list[float]:
    for (text, _), vector in zip(sample[:200], vectors[:200], strict=True):  # warm-up
        classifier.classify(text, vector)
    times = []
    for (text, _), vector in zip(sample, vectors, strict=True):
        start = time.perf_counter_ns()
        classifier.classify(text, vector)
        times.append((time.perf_counter_ns() - start) / 1000)
    return times


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def machine() -> list[str]:
    def run(command: str) -> str:
        try:
            return subprocess.run(command, shell=True, capture_output=True, text=True, check=False).stdout.strip()
        except OSError as exc:
            return f"({command}: {exc})"

    return [
        f"- date: {run('date')}",
        f"- `nproc`: {run('nproc')}",
        f"- `uptime` (other work on the machine during the run): {run('uptime')}",
        "- `lscpu | head -20`:",
        "",
        "```",
        run("lscpu | head -20"),
        "```",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--exemplars", type=int, default=50, help="exemplars per category")
    parser.add_argument("--held-out", type=int, default=2000, help="queries classified, stratified by label")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the embedding model")
    parser.add_argument("--output", type=Path, help="also write the Markdown report here")
    args = parser.parse_args(argv)

    if not args.data.exists():
        print(f"{args.data} is not here: this benchmark needs the shared evaluation data; nothing to do.")
        return 0
    began = time.perf_counter()
    by_label = read_rows(args.data)
    labels = list(by_label)
    exemplars, sample = split(by_label, args.exemplars, args.held_out, args.seed)
    truth = [label for _, label in sample]
    print(f"{len(labels)} categories, {args.exemplars} exemplars each, {len(sample)} held-out queries", flush=True)

    embedder = SentenceTransformerEmbedder(threads=args.threads)
    embedder.embed(["warm-up"])
    embedded = embed_everything(embedder, exemplars, sample)
    exemplar_vectors, sample_vectors = embedded.exemplars, embedded.sample
    exemplar_s, per_label_s, single_ms = embedded.exemplar_s, embedded.per_label_s, embedded.single_ms
    sample_s = sum(per_label_s.values())
    count = sum(len(texts) for texts in exemplars.values()) + len(sample)
    print(f"embedded {count} texts in {exemplar_s + sample_s:.1f} s", flush=True)

    defaults = ClassifierSettings()
    default_setting = Setting(defaults.method, defaults.k, defaults.min_confidence, defaults.min_similarity)
    settings = [
        *(Setting(method, k, margin, floor) for method, k in METHODS for margin in MARGINS for floor in FLOORS),
        *(Setting("knn", k, 0.0, 0.0) for k in OTHER_K),
    ]
    if default_setting not in settings:
        settings.append(default_setting)
    outcomes: list[Outcome] = []
    classifiers: dict[tuple[str, int], CategoryClassifier] = {}
    for setting in settings:
        classifier = build(setting, exemplars, exemplar_vectors)
        classifiers.setdefault((setting.method, setting.k), classifier)
        predictions = [
            classifier.classify(text, vector).category for (text, _), vector in zip(sample, sample_vectors, strict=True)
        ]
        outcomes.append(Outcome(setting, predictions))
    costs = {
        key: cost_us(classifier, sample, sample_vectors) for key, classifier in classifiers.items() if key in METHODS
    }

    by_setting = {outcome.setting: outcome for outcome in outcomes}
    shown = [*(by_setting[Setting(method, k, 0.0, 0.0)] for method, k in METHODS), by_setting[default_setting]]
    support = Counter(truth)
    python = Path(sys.executable)
    python_shown = str(python.relative_to(ROOT)) if python.is_relative_to(ROOT) else "python"
    command = " ".join([python_shown, *map(shlex.quote, sys.argv)])
    report = [
        "# Category classifier: accuracy and cost",
        "",
        f"Command: `{command}` (seed {args.seed}); run time {time.perf_counter() - began:.0f} s.",
        "",
        *machine(),
        "",
        f"Data: `{args.data.relative_to(ROOT.parent) if args.data.is_relative_to(ROOT.parent) else args.data}` "
        f"(third-party, research-only; read by path). Model: all-MiniLM-L6-v2 (packaged), CPU, "
        f"{args.threads} torch thread(s). Exemplars: {args.exemplars} per category, drawn with the seed; "
        f"held out: {len(sample)} other queries, stratified by label "
        f"({', '.join(f'{label} {support[label]}' for label in labels)}).",
        "",
        "`margin` is `min_confidence` (best score minus the runner-up's), `floor` is `min_similarity` (the "
        "best score itself); below either the request goes to `default`, which counts as wrong in accuracy. "
        "Coverage: share of requests not sent to `default`; covered accuracy: accuracy on those.",
        "",
        "## All settings",
        "",
        "| setting | accuracy | macro F1 | coverage | covered accuracy |",
        "|---|---|---|---|---|",
        *(summary(labels, truth, outcome) for outcome in outcomes),
        "",
        "## Per category",
        "",
        "The first two without margin or floor; the last with the library's defaults (`ClassifierSettings()`).",
        "",
        *(line for outcome in dict.fromkeys(shown) for line in per_label_table(labels, truth, outcome)),
        *confusion(labels, truth, shown[1]),
        *confusion(labels, truth, shown[-1]),
        "## Cost per request",
        "",
        f"Classification of one request, its vector already computed ({sum(map(len, exemplars.values()))} "
        f"exemplars, {len(labels)} categories, {len(sample)} calls of `classify(text, vector)`):",
        "",
        "| method | median µs | p90 µs | p99 µs |",
        "|---|---|---|---|",
        *(
            f"| {'knn k=' + str(k) if method == 'knn' else method} | {statistics.median(times):.1f} | "
            f"{percentile(times, 0.9):.1f} | {percentile(times, 0.99):.1f} |"
            for (method, k), times in costs.items()
        ),
        "",
        "Embedding (not part of the classifier; the gateway computes it once per request for the cache lookup too):",
        "",
        f"- one text at a time ({len(single_ms)} held-out texts): median {statistics.median(single_ms):.1f} ms, "
        f"p90 {percentile(single_ms, 0.9):.1f} ms",
        f"- in batches of {BATCH} (texts of similar length together): {count / (exemplar_s + sample_s):.0f} "
        f"texts/s overall ({(exemplar_s + sample_s) * 1000 / count:.2f} ms per text); by label of the "
        "held-out texts:",
        "",
        "| label | texts | mean characters | texts/s |",
        "|---|---|---|---|",
        *(
            f"| {label} | {support[label]} | "
            f"{statistics.mean(len(text) for text, truth_label in sample if truth_label == label):.0f} | "
            f"{support[label] / per_label_s[label]:.0f} |"
            for label in labels
        ),
        "",
    ]
    text = "\n".join(report)
    print(text)
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
        print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
