"""Answer quality: hit rate on true paraphrases against precision, raw cosine vs calibrated
thresholds vs calibrated threshold + verifier, through the real lookup path.

    .venv/bin/python bench/quality.py [--qqp-pairs 6000] [--test-share 0.4] [--mrpc-pairs 800]
        [--stsb-pairs 800] [--seed 7] [--targets 0.95,0.90] [--confidence 0.95] [--floor 0.80]
        [--l2 1.0] [--folds 5] [--output bench/out/quality.md] [--out-dir bench/out]

Data: ../shared/data/pairs/{qqp_dev,mrpc,stsb}.jsonl, third-party and licensed for research only:
read by path, never copied here. Without it the benchmark says so and exits 0.

QQP is sampled (seeded) and split into a tune and a test part BY QUESTION: texts joined by a pair
form one group (union-find) and whole groups go to one part, so no question text is in both.
On tune: the raw-cosine threshold and the verifier's `min_probability` are calibrated (the lowest
threshold whose one-sided Wilson lower bound on precision reaches the target at `--confidence`);
the verifier (policies.verifier.LogisticVerifier) is fitted on tune pairs with similarity ≥
`--floor`, its `min_probability` calibrated on out-of-fold scores (`--folds`, folds by group).
On test, MRPC and STS-B (not retuned): every configuration runs through CacheEngine.lookup with a
real SqliteStore in a temporary folder, the engine's own hnswlib indexes and an EmbeddingBatcher,
in two settings:

  (i)  pairs: side a stored in a scope of its own, side b looked up in it; a hit on a labelled
       duplicate is right, on a labelled non-duplicate wrong.
  (ii) shared: every a side stored in one scope, every b side looked up there; a hit is right
       only when the served text is the query itself or a known duplicate of it (joined through
       the file's duplicate labels), wrong otherwise (unlabelled pairs count as wrong: a bound).

Embeddings are computed once, in bulk, and served from memory to the engine (the embedder is
the cost; the lookup path is what is measured).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import random
import shlex
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from embeddings import EmbeddedText, Embedder, EmbeddingBatcher, SentenceTransformerEmbedder  # noqa: E402
from embeddings.batcher import BatcherConfig  # noqa: E402
from gateway.cache.catalog import Catalog  # noqa: E402
from gateway.cache.decisions import Hit, Miss  # noqa: E402
from gateway.cache.engine import ActivePolicy, CacheEngine, LookupSettings  # noqa: E402
from gateway.cache.scope import normalize_prompt  # noqa: E402
from gateway.metrics import Metrics  # noqa: E402
from gateway.stores import SqliteStore  # noqa: E402
from gateway.wire import CompletionRequest, parse_chat_request  # noqa: E402
from gateway.wire.cache_control import CacheControl  # noqa: E402
from policies import CategoryClassifier, parse_policy  # noqa: E402
from policies.calibration import (  # noqa: E402
    CalibrationResult,
    calibrate_threshold,
    folds_by_group,
    hit_rate_at,
    out_of_fold_scores,
)
from policies.verifier import DEFAULT_VETOES, LogisticVerifier, Verifier, fit_verifier, pair_features  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "pairs"
BATCH = 64
SEARCH_K = 4
NOW = 1_800_000_000.0
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Pair:
    a: str
    b: str
    label: int


# --- data ----------------------------------------------------------------------------------------


def read_pairs(name: str) -> list[Pair]:
    pairs = []
    with (DATA / f"{name}.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            a, b = normalize_prompt(str(row["a"])), normalize_prompt(str(row["b"]))
            if not a or not b:
                continue
            if "score" in row:  # STS-B: 0-5; ≥ 4 paraphrase, ≤ 2 different, between: dropped
                score = float(row["score"])
                if 2.0 < score < 4.0:
                    continue
                label = int(score >= 4.0)
            else:
                label = int(row["label"])
            pairs.append(Pair(a, b, label))
    return pairs


class Groups:
    """Union-find over texts."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def find(self, text: str) -> str:
        parent = self._parent.setdefault(text, text)
        while parent != text:
            grand = self._parent.setdefault(parent, parent)
            self._parent[text] = grand
            text, parent = parent, grand
        return text

    def join(self, one: str, other: str) -> None:
        self._parent[self.find(one)] = self.find(other)

    def same(self, one: str, other: str) -> bool:
        return one == other or self.find(one) == self.find(other)


def duplicate_groups(pairs: Iterable[Pair]) -> Groups:
    groups = Groups()
    for pair in pairs:
        if pair.label == 1:
            groups.join(pair.a, pair.b)
    return groups


def split_by_question(pairs: Sequence[Pair], test_share: float, seed: int) -> tuple[list[Pair], list[Pair], Groups]:
    groups = Groups()
    for pair in pairs:
        groups.join(pair.a, pair.b)
    roots = sorted({groups.find(pair.a) for pair in pairs})
    random.Random(seed).shuffle(roots)
    by_root: dict[str, list[Pair]] = defaultdict(list)
    for pair in pairs:
        by_root[groups.find(pair.a)].append(pair)
    test: list[Pair] = []
    test_roots = set()
    for root in roots:
        if len(test) >= test_share * len(pairs):
            break
        test.extend(by_root[root])
        test_roots.add(root)
    tune = [pair for pair in pairs if groups.find(pair.a) not in test_roots]
    return tune, test, groups


# --- embeddings ----------------------------------------------------------------------------------


class MemoEmbedder:
    """The real embedder behind an in-memory table: each text is embedded once per run."""

    def __init__(self, inner: Embedder) -> None:
        self._inner = inner
        self.table: dict[str, EmbeddedText] = {}

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    @property
    def name(self) -> str:
        return self._inner.name

    def embed(self, texts: list[str]) -> list[EmbeddedText]:
        missing = list(dict.fromkeys(text for text in texts if text not in self.table))
        for start in range(0, len(missing), BATCH):
            chunk = missing[start : start + BATCH]
            self.table.update(zip(chunk, self._inner.embed(chunk), strict=True))
        return [self.table[text] for text in texts]

    def matrix(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """The vectors of texts embedded already, one row each."""
        return np.stack([self.table[text].vector for text in texts]).astype(np.float32)

    def similarity(self, one: str, other: str) -> float:
        return min(1.0, max(0.0, float(np.dot(self.table[one].vector, self.table[other].vector))))


# --- configurations ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    name: str
    threshold: float | None  # raw cosine; None: no threshold met the target (exact match only)
    verifier: LogisticVerifier | None = None
    # A whole policy with its thresholds written in (bench/categories_vs_global.py); `threshold`
    # is then unused. None: the one-category policy of `threshold`.
    policy: ActivePolicy | None = None

    @property
    def runnable(self) -> bool:
        return self.verifier is not None or self.threshold is not None or self.policy is not None


@dataclass(frozen=True, slots=True)
class Tally:
    positives: int
    negatives: int
    right_hits: int  # hits on a true duplicate
    wrong_hits: int
    positives_hit: int  # duplicate pairs whose query got a right hit
    negatives_hit: int  # non-duplicate pairs whose query got a wrong hit

    @property
    def hit_rate(self) -> float:
        return self.positives_hit / self.positives if self.positives else math.nan

    @property
    def precision(self) -> float:
        served = self.right_hits + self.wrong_hits
        return self.right_hits / served if served else math.nan

    @property
    def false_hit_rate(self) -> float:
        return self.negatives_hit / self.negatives if self.negatives else math.nan


def pair_scores(memo: MemoEmbedder, pairs: Sequence[Pair]) -> tuple[Floats, Floats, npt.NDArray[np.int64]]:
    similarities = np.array([memo.similarity(pair.a, pair.b) for pair in pairs])
    features = np.stack([pair_features(pair.b, pair.a, float(s)) for pair, s in zip(pairs, similarities, strict=True)])
    labels = np.array([pair.label for pair in pairs], dtype=np.int64)
    return similarities, features, labels


# --- the lookup path -----------------------------------------------------------------------------


def asked(prompt: str) -> CompletionRequest:
    """A request whose prompt is `prompt`; each pair's scope is a tenant of its own (see `fill`)."""
    return parse_chat_request({"model": "m", "messages": [{"role": "user", "content": prompt}]})


def policy_for(threshold: float) -> ActivePolicy:
    policy = parse_policy(
        {"categories": [{"name": "default", "similarity_threshold": threshold, "ttl_s": 1e9, "max_entries": 10**7}]}
    )
    return ActivePolicy(policy=policy, classifier=CategoryClassifier(policy, {}))


def engine_for(
    store: SqliteStore,
    batcher: EmbeddingBatcher,
    threshold: float,
    verifier: Verifier | None,
    policy: ActivePolicy | None = None,
) -> CacheEngine:
    active = policy if policy is not None else policy_for(threshold)
    # Not entered: a benchmark needs neither the feed follower nor the periodic hit flush.
    catalog = Catalog(
        store=store, dimension=batcher.embedder.dimension, policy=active.policy, metrics=Metrics(), clock=lambda: NOW
    )
    return CacheEngine(
        catalog=catalog,
        batcher=batcher,
        policy=active,
        settings=LookupSettings(search_k=SEARCH_K),
        metrics=Metrics(),
        clock=lambda: NOW,
        verifier=verifier,
    )


@dataclass(frozen=True, slots=True)
class Served:
    prompt: str | None  # the served entry's text; None on a miss


async def fill(
    store: SqliteStore, batcher: EmbeddingBatcher, pairs: Sequence[Pair], policy: ActivePolicy | None = None
) -> None:
    """Store every a side: setting (i) in a scope per pair, setting (ii) in one shared scope. With a
    `policy`, each in the category its classifier gives (not at all where that is not cacheable)."""
    writer = engine_for(store, batcher, 1.0, None, policy)
    try:
        for number, pair in enumerate(pairs):
            for scope in (f"pair-{number}", "shared"):
                found = await writer.lookup(asked(pair.a), tenant=scope, control=CacheControl(lookup=False))
                if isinstance(found, Miss):  # else a Bypass: its category is not cacheable
                    await writer.remember(found, response={"id": pair.a})
    finally:
        await writer.catalog.aclose()


async def run_config(
    store: SqliteStore, batcher: EmbeddingBatcher, pairs: Sequence[Pair], config: Config
) -> tuple[list[Served], dict[str, Served], float]:
    assert config.runnable
    threshold = config.threshold if config.threshold is not None else 1.0
    engine = engine_for(store, batcher, threshold, config.verifier, config.policy)
    try:
        await engine.catalog.rebuild()
        started = time.perf_counter()
        per_pair = [await lookup(engine, f"pair-{number}", pair.b) for number, pair in enumerate(pairs)]
        shared = {text: await lookup(engine, "shared", text) for text in dict.fromkeys(pair.b for pair in pairs)}
        lookups = len(per_pair) + len(shared)
        return per_pair, shared, (time.perf_counter() - started) / lookups * 1000
    finally:
        await engine.catalog.aclose()


async def lookup(engine: CacheEngine, scope: str, prompt: str) -> Served:
    found = await engine.lookup(asked(prompt), tenant=scope, control=CacheControl())
    return Served(found.entry.prompt if isinstance(found, Hit) else None)


def tally_pairs(pairs: Sequence[Pair], served: Sequence[Served]) -> Tally:
    right = sum(1 for pair, got in zip(pairs, served, strict=True) if got.prompt is not None and pair.label == 1)
    wrong = sum(1 for pair, got in zip(pairs, served, strict=True) if got.prompt is not None and pair.label == 0)
    positives = sum(pair.label for pair in pairs)
    return Tally(positives, len(pairs) - positives, right, wrong, right, wrong)


def tally_shared(pairs: Sequence[Pair], served: dict[str, Served], groups: Groups) -> Tally:
    right = wrong = positives_hit = negatives_hit = 0
    for query, got in served.items():
        if got.prompt is not None:
            if groups.same(query, got.prompt):
                right += 1
            else:
                wrong += 1
    for pair in pairs:
        got = served[pair.b]
        is_right = got.prompt is not None and groups.same(pair.b, got.prompt)
        positives_hit += int(pair.label == 1 and is_right)
        negatives_hit += int(pair.label == 0 and got.prompt is not None and not is_right)
    positives = sum(pair.label for pair in pairs)
    return Tally(positives, len(pairs) - positives, right, wrong, positives_hit, negatives_hit)


# --- report --------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def describe(config: Config) -> str:
    if config.verifier is not None:
        vetoes = "+vetoes" if config.verifier.vetoes else ""
        return f"floor {config.verifier.floor:g}, p ≥ {config.verifier.min_probability:.3f}{vetoes}"
    return "none qualifies: exact only" if config.threshold is None else f"cosine ≥ {config.threshold:.4f}"


def display(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def shell(command: str) -> str:
    try:
        return subprocess.run(
            command, check=False, shell=True, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"({command} failed: {exc})"


def calibration_line(name: str, result: CalibrationResult | None) -> str:
    if result is None:
        return f"| {name} | none qualifies | — | — | — | — |"
    return (
        f"| {name} | {result.threshold:.4f} | {fmt(result.hit_rate)} | {fmt(result.precision)} "
        f"| {fmt(result.precision_lower_bound)} | {result.true_hits}+{result.false_hits} of {result.n} |"
    )


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qqp-pairs", type=int, default=6000)
    parser.add_argument("--test-share", type=float, default=0.4)
    parser.add_argument("--mrpc-pairs", type=int, default=800)
    parser.add_argument("--stsb-pairs", type=int, default=800)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--targets", default="0.95,0.90", help="target precisions; the first is the main one")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--floor", type=float, default=0.80, help="the verifier's similarity floor")
    parser.add_argument("--l2", type=float, default=1.0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the embedder")
    parser.add_argument(
        "--tune-embedder", action="store_true", help="also fine-tune the embedder on QQP tune (semcache tune) and rerun"
    )
    parser.add_argument("--tune-epochs", type=int, default=1)
    parser.add_argument("--tuned-model", type=Path, help="rerun with this tuned model folder instead of training one")
    # Report kept beside the fitted files; the dated section in bench/RESULTS.md is pasted from it.
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "out" / "quality.md")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "out")
    return parser.parse_args(argv)


def sample(pairs: list[Pair], size: int, seed: int) -> list[Pair]:
    chosen = list(pairs)
    random.Random(seed).shuffle(chosen)
    return chosen[:size]


@dataclass(frozen=True, slots=True)
class Tuned:
    configs: list[tuple[float, Config]]
    calibrations: dict[tuple[str, float], CalibrationResult | None]
    ceiling: dict[str, Floats]  # test-part scores per method
    test_labels: npt.NDArray[np.int64]
    test_similarity: Floats


def tune_configs(args: argparse.Namespace, memo: MemoEmbedder, tune: Sequence[Pair], test: Sequence[Pair]) -> Tuned:
    targets = [float(value) for value in args.targets.split(",")]
    tune_similarity, tune_features, tune_labels = pair_scores(memo, tune)
    fold_of = folds_by_group([(pair.a, pair.b) for pair in tune], args.folds, seed=args.seed)
    variants = {"verifier": (), "verifier+vetoes": DEFAULT_VETOES}
    fitted: dict[str, LogisticVerifier] = {}
    oof: dict[str, Floats] = {}
    for name, vetoes in variants.items():
        fitted[name] = fit_verifier(tune_features, tune_labels, floor=args.floor, l2=args.l2, vetoes=vetoes)
        oof[name] = out_of_fold_scores(tune_features, tune_labels, fold_of, floor=args.floor, l2=args.l2, vetoes=vetoes)
    test_similarity, test_features, test_labels = pair_scores(memo, test)
    calibrations: dict[tuple[str, float], CalibrationResult | None] = {}
    configs: list[tuple[float, Config]] = []
    for target in targets:
        raw = calibrate_threshold(tune_similarity, tune_labels, target_precision=target, confidence=args.confidence)
        calibrations[("raw cosine", target)] = raw
        configs.append((target, Config("raw, oracle on this part", None)))  # threshold set per part
        configs.append((target, Config("raw, calibrated", raw.threshold if raw else None)))
        for name, verifier in fitted.items():
            result = calibrate_threshold(oof[name], tune_labels, target_precision=target, confidence=args.confidence)
            calibrations[(name, target)] = result
            chosen = dataclasses.replace(
                verifier,
                min_probability=result.threshold if result else 1.0,
                description=(
                    f"fitted on {len(tune)} QQP tune pairs (seed {args.seed}, floor {args.floor:g}, l2 {args.l2:g}); "
                    f"min_probability for precision >= {target:g} at {args.confidence:.0%} confidence"
                ),
            )
            configs.append((target, Config(f"{name}, calibrated", None, chosen if result else None)))
    ceiling = {"raw cosine": test_similarity} | {name: v.scores(test_features) for name, v in fitted.items()}
    return Tuned(configs, calibrations, ceiling, test_labels, test_similarity)


Results = dict[tuple[str, float, str], tuple[Tally, Tally, float, str]]


async def measure(
    memo: MemoEmbedder, parts: dict[str, list[Pair]], groups: dict[str, Groups], configs: list[tuple[float, Config]]
) -> Results:
    """Every runnable configuration through the engine, on every part; keyed by (part, target, name),
    valued (setting i, setting ii, ms per lookup, the rule applied)."""
    results: Results = {}
    async with EmbeddingBatcher(memo, BatcherConfig(max_batch=BATCH, max_wait_ms=0.0, deadline_ms=60_000)) as batcher:
        with tempfile.TemporaryDirectory(prefix="semcache-quality-") as folder:
            for part, pairs in parts.items():
                async with SqliteStore(Path(folder) / f"{part.replace(' ', '-')}.db") as store:
                    await fill(store, batcher, pairs)
                    for target, listed in configs:
                        config = listed
                        if config.name.startswith("raw, oracle"):
                            sims = np.array([memo.similarity(pair.a, pair.b) for pair in pairs])
                            labels = np.array([pair.label for pair in pairs])
                            found = calibrate_threshold(sims, labels, target_precision=target, confidence=0.5)
                            config = Config(config.name, found.threshold if found else None)
                        if not config.runnable:
                            continue
                        per_pair, shared, ms = await run_config(store, batcher, pairs, config)
                        results[(part, target, config.name)] = (
                            tally_pairs(pairs, per_pair),
                            tally_shared(pairs, shared, groups[part]),
                            ms,
                            describe(config),
                        )
                        print(f"{part}, precision >= {target:g}, {config.name}: measured", flush=True)
    return results


def write_outputs(args: argparse.Namespace, tuned: Tuned, main_target: float) -> list[str]:
    """bench/out/: every calibrated verifier, `verifier.json` (the recommended one), the thresholds;
    returns the policy snippet they imply."""
    args.out_dir.mkdir(parents=True, exist_ok=True)
    recommended = None
    for target, config in tuned.configs:
        if config.verifier is not None:
            tag = config.name.split(",")[0].replace("+", "-")
            (args.out_dir / f"{tag}-p{target:g}.json").write_text(config.verifier.to_json() + "\n", encoding="utf-8")
            if target == main_target and config.verifier.vetoes:
                recommended = config.verifier
    if recommended is not None:
        (args.out_dir / "verifier.json").write_text(recommended.to_json() + "\n", encoding="utf-8")
    summary = {
        "format_version": 1,
        "confidence": args.confidence,
        "floor": args.floor,
        "calibrations": [
            {"method": name, "target_precision": target}
            | (dataclasses.asdict(result) if result else {"threshold": None})
            for (name, target), result in tuned.calibrations.items()
        ],
    }
    (args.out_dir / "calibration.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    raw = tuned.calibrations[("raw cosine", main_target)]
    return [
        f"# implied by bench/quality.py: QQP tune, precision >= {main_target:g} at {args.confidence:.0%} confidence",
        "categories:",
        "  - name: default",
        (
            f"    similarity_threshold: {raw.threshold:.4f}   # raw cosine, without a verifier"
            if raw
            else "    similarity_threshold: 1.0   # no raw cosine threshold met the target: exact match only"
        ),
        (
            f"# verifier beside the policy: {display(args.out_dir / 'verifier.json')} (floor {recommended.floor:g}, "
            f"min_probability {recommended.min_probability:.4f}, vetoes: {', '.join(recommended.vetoes)})"
            if recommended
            else "# verifier: none met the target on tune; none to load"
        ),
    ]


def report(
    args: argparse.Namespace, facts: dict[str, Any], tuned: Tuned, results: Results, parts: Iterable[str]
) -> list[str]:
    lines = [
        "# Answer quality: hit rate vs precision (bench/quality.py)",
        "",
        f"Run {shell('date -u')} on {shell('nproc')} cores, in {facts['total_s']:.0f} s (a tuned-embedder "
        "section, if any, gives its own time). Command:",
        "",
        f"    {facts['command']}",
        "",
        "```",
        shell("lscpu | head -20"),
        "```",
        "",
        f"Embedder all-MiniLM-L6-v2 (packaged), {args.threads} torch thread(s): {facts['texts']} texts in "
        f"{facts['embed_s']:.0f} s ({facts['texts'] / facts['embed_s']:.0f} texts/s in batches of {BATCH}, "
        "with other work on the machine).",
        "",
        f"Samples (seed {args.seed}): {facts['samples']}. Calibration: the lowest threshold whose one-sided Wilson "
        f"lower bound on precision is ≥ the target at {args.confidence:.0%} confidence. The verifier is fitted on "
        f"tune pairs with cosine ≥ {args.floor:g} (l2 {args.l2:g}); its min_probability is calibrated on "
        f"{args.folds}-fold out-of-fold scores (folds by question group). Vetoes: {', '.join(DEFAULT_VETOES)}. "
        f"search_k {SEARCH_K}.",
        "",
        "## Calibration on QQP tune",
        "",
        "| target precision | method | threshold | hit rate | precision | lower bound | hits (right+wrong) of pairs |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {target:g} " + calibration_line(name, result) for (name, target), result in tuned.calibrations.items()
    ]
    lines += measured_tables(tuned, results, parts)
    return lines + verdict(tuned, results) + NOTES


def measured_tables(tuned: Tuned, results: Results, parts: Iterable[str], heading: str = "##") -> list[str]:
    """The engine-path table and the ceiling table of one embedder's run."""
    lines: list[str] = []
    lines += [
        "",
        f"{heading} Through CacheEngine.lookup",
        "",
        "Hit rate = duplicate pairs served a right answer / duplicate pairs; precision = right hits / all hits;",
        "false-hit rate = non-duplicate pairs served a wrong answer / non-duplicate pairs. (i) one pair per scope;",
        "(ii) every a side in one scope. 'oracle' thresholds are picked on the measured part itself (not",
        "deployable: the baseline's best case); 'calibrated' ones come from QQP tune only.",
        "",
        "| data | target | configuration | rule | (i) hit rate | (i) precision | (i) false-hit rate "
        "| (ii) hit rate | (ii) precision | (ii) false-hit rate | ms/lookup |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for part in parts:
        for target, config in tuned.configs:
            found = results.get((part, target, config.name))
            if found is None:
                lines.append(f"| {part} | {target:g} | {config.name} | none qualifies: no semantic hits |" + " — |" * 7)
                continue
            single, shared, ms, rule = found
            lines.append(
                f"| {part} | {target:g} | {config.name} | {rule} "
                f"| {fmt(single.hit_rate)} | {fmt(single.precision)} | {fmt(single.false_hit_rate)} "
                f"| {fmt(shared.hit_rate)} | {fmt(shared.precision)} | {fmt(shared.false_hit_rate)} | {ms:.2f} |"
            )
    ceiling_targets = sorted({*(t for t, _ in tuned.configs), 0.85}, reverse=True)
    lines += [
        "",
        f"{heading} Ceiling on QQP test (bulk scores, threshold picked on test itself)",
        "",
        "The best hit rate on duplicates at which the point precision on test still reaches the target: what each",
        "score could give with a perfectly chosen threshold (verifier scores: -inf below the floor or vetoed).",
        "",
        "| score | " + " | ".join(f"hit rate @ precision ≥ {t:g}" for t in ceiling_targets) + " |",
        "|---|" + "---|" * len(ceiling_targets),
    ]
    for name, scores in tuned.ceiling.items():
        cells = []
        for target in ceiling_targets:
            best = calibrate_threshold(scores, tuned.test_labels, target_precision=target, confidence=0.5)
            cells.append(fmt(best.hit_rate) if best else "0 (never reached)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Raw cosine bands on QQP test: how precise the labels let the very top be (the cap any scorer faces).",
        "",
        "| cosine ≥ | pairs | precision (labelled duplicates among them) | hit rate |",
        "|---|---|---|---|",
    ]
    for band in (0.99, 0.98, 0.97, 0.95, 0.90):
        rate, precision, hits = hit_rate_at(tuned.test_similarity, tuned.test_labels, band)
        lines.append(f"| {band:g} | {hits} | {fmt(precision)} | {fmt(rate)} |")
    return [*lines, ""]


def verdict(tuned: Tuned, results: Results) -> list[str]:
    """The issue's goal, checked on this run: at the main target precision on QQP test (setting i),
    the calibrated verifier's hit rate ≥ 0.30 and ≥ 5x the raw-cosine baseline of the same run."""
    target = tuned.configs[0][0]

    def single(name: str) -> Tally | None:
        found = results.get(("QQP test", target, name))
        return found[0] if found else None

    lines = ["## Verdict", ""]
    verified = single("verifier+vetoes, calibrated")
    for name in ("raw, oracle on this part", "raw, calibrated", "verifier, calibrated", "verifier+vetoes, calibrated"):
        tally = single(name)
        lines.append(
            f"- {name}: hit rate {fmt(tally.hit_rate) if tally else '0 (nothing served)'}, "
            f"precision {fmt(tally.precision) if tally else '—'}"
        )
    hit_rate = verified.hit_rate if verified and verified.precision >= target else 0.0
    baselines = [tally.hit_rate for tally in (single("raw, calibrated"), single("raw, oracle on this part")) if tally]
    met = hit_rate >= 0.30 and all(hit_rate >= 5 * baseline for baseline in baselines)
    lines += [
        "",
        f"Goal (hit rate ≥ 0.30 at precision ≥ {target:g} on QQP test, ≥ 5x the raw baseline): "
        + ("met." if met else f"not met (calibrated verifier with vetoes: {fmt(hit_rate)} at that precision)."),
        "",
    ]
    return lines


NOTES = [
    "## Notes",
    "",
    "- Cross-encoder: none could be had. No package on the index reachable here ships cross-encoder weights",
    "  (FlashRank's wheel holds code only and fetches its models from a model hub at run time, which this",
    "  machine cannot reach), so none was evaluated.",
    "- QQP's labels cap what any scorer can show at precision 0.95. Among the highest-similarity pairs labelled",
    "  non-duplicate many are duplicates in fact (identical but for case, spacing or a pronoun; the same",
    "  comparison with its two sides listed in the other order), and among the pairs labelled duplicate some",
    "  are answers a cache must not reuse (another age, year, place or product model). The vetoes refuse the",
    "  latter and so lose some QQP 'duplicates' on purpose.",
    "- 'none qualifies': with the tune part's size, no threshold's lower bound reached the target, so the",
    "  calibrated policy serves no semantic hits (exact matches only). More labelled pairs tighten the bound.",
    "- Setting (ii) counts a hit on an entry that no label links to the query as wrong, so its precision is",
    "  a lower bound (STS-B's sentences repeat across pairs, which makes this bound loose there).",
    "",
]


def tuned_embedder_section(  # noqa: PLR0917
    args: argparse.Namespace,
    tune: Sequence[Pair],
    texts: Sequence[str],
    parts: dict[str, list[Pair]],
    groups: dict[str, Groups],
    base_results: Results,
) -> list[str]:
    """The whole pipeline again with the embedder fine-tuned on QQP tune (`semcache tune`): every
    threshold and the verifier recalibrated on the tuned model's similarities, the same test parts."""
    from gateway.tools.calibrate import LabelledPair
    from gateway.tools.tune import TuneSettings, tune_embedder

    started = time.perf_counter()
    path = args.tuned_model
    trained = "given"
    if path is None:
        path = args.out_dir / "tuned-model"
        result = tune_embedder(
            [LabelledPair(a=pair.a, b=pair.b, same=bool(pair.label)) for pair in tune],
            base_model="packaged:all-MiniLM-L6-v2",
            out=path,
            settings=TuneSettings(epochs=args.tune_epochs, threads=args.threads, seed=args.seed),
            progress=lambda message: print(f"tune: {message}", flush=True),
        )
        trained = (
            f"trained here on the {result.pairs} QQP tune pairs in {result.seconds:.0f} s on {result.device} "
            f"({result.steps} steps, {args.tune_epochs} epoch(s), OnlineContrastiveLoss, loss "
            f"{result.first_loss:.3f} -> {result.last_loss:.3f})"
        )
    memo = MemoEmbedder(SentenceTransformerEmbedder(str(path), threads=args.threads))
    memo.embed(list(texts))
    tuned = tune_configs(args, memo, tune, parts["QQP test"])
    results = asyncio.run(measure(memo, parts, groups, tuned.configs))
    target = tuned.configs[0][0]
    lines = [
        "## With the embedder tuned on QQP tune (`semcache tune`), reported separately",
        "",
        f"Model {display(path)}: {trained}. Everything recalibrated on the tuned model's QQP tune similarities; "
        f"test parts unchanged. {time.perf_counter() - started:.0f} s for this section.",
        "",
        "| data | configuration at precision ≥ " + f"{target:g} | base model (i) hit rate | (i) precision "
        "| tuned model (i) hit rate | (i) precision |",
        "|---|---|---|---|---|---|",
    ]
    for part in parts:
        for name in ("raw, oracle on this part", "raw, calibrated", "verifier+vetoes, calibrated"):
            cells = []
            for found in (base_results.get((part, target, name)), results.get((part, target, name))):
                cells += [fmt(found[0].hit_rate), fmt(found[0].precision)] if found else ["0 (none qualifies)", "—"]
            lines.append(f"| {part} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "### Calibration on QQP tune (tuned model)", ""]
    lines += [
        "| target precision | method | threshold | hit rate | precision | lower bound | hits (right+wrong) of pairs |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {t:g} " + calibration_line(name, result) for (name, t), result in tuned.calibrations.items()]
    lines += measured_tables(tuned, results, parts, heading="###")
    lines += [line.replace("## Verdict", "### Verdict (tuned model)") for line in verdict(tuned, results)]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not DATA.is_dir():
        print(f"{DATA} is absent: the quality benchmark needs the shared labelled pairs; nothing to do.")
        return 0
    started = time.perf_counter()
    qqp_all = read_pairs("qqp_dev")
    tune, test, _ = split_by_question(sample(qqp_all, args.qqp_pairs, args.seed), args.test_share, args.seed)
    mrpc, stsb = read_pairs("mrpc"), read_pairs("stsb")
    parts = {
        "QQP test": test,
        "MRPC": sample(mrpc, args.mrpc_pairs, args.seed),
        "STS-B": sample(stsb, args.stsb_pairs, args.seed),
    }
    groups = {"QQP test": duplicate_groups(qqp_all), "MRPC": duplicate_groups(mrpc), "STS-B": duplicate_groups(stsb)}
    tune_texts = {text for pair in tune for text in (pair.a, pair.b)}
    assert not tune_texts & {text for pair in test for text in (pair.a, pair.b)}, "a question in both parts"

    memo = MemoEmbedder(SentenceTransformerEmbedder(threads=args.threads))
    texts = list(
        dict.fromkeys(text for pairs in (tune, *parts.values()) for pair in pairs for text in (pair.a, pair.b))
    )
    embed_started = time.perf_counter()
    memo.embed(texts)
    embed_s = time.perf_counter() - embed_started
    print(f"embedded {len(texts)} texts in {embed_s:.0f} s ({len(texts) / embed_s:.0f} texts/s)", flush=True)

    tuned = tune_configs(args, memo, tune, test)
    results = asyncio.run(measure(memo, parts, groups, tuned.configs))
    main_target = tuned.configs[0][0]
    snippet = write_outputs(args, tuned, main_target)
    print("\n".join(snippet))

    def count(pairs: Sequence[Pair]) -> str:
        return f"{len(pairs)} pairs ({sum(pair.label for pair in pairs)} duplicates)"

    facts = {
        "total_s": time.perf_counter() - started,
        "command": shlex.join([".venv/bin/python", "bench/quality.py", *(argv if argv is not None else sys.argv[1:])]),
        "texts": len(texts),
        "embed_s": embed_s,
        "samples": (
            f"QQP {args.qqp_pairs} pairs, split by question (no text in both parts) into tune {count(tune)} and "
            f"test {count(test)}; MRPC {count(parts['MRPC'])}; STS-B {count(parts['STS-B'])} "
            "(score ≥ 4 a duplicate, ≤ 2 not, between dropped)"
        ),
    }
    lines = report(args, facts, tuned, results, parts)
    if args.tune_embedder or args.tuned_model:
        lines += tuned_embedder_section(args, tune, texts, parts, groups, results)
    lines += ["## Policy snippet implied (files in bench/out/, git-ignored)", "", "```yaml", *snippet, "```", ""]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    print(f"wrote {args.output} and {args.out_dir}/ in {facts['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
