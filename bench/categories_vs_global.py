"""Category-aware thresholds against one global threshold, on a mixed workload, through the real
lookup path: hit rate on true duplicates and false-hit rate on non-duplicates, both policies tuned
on one half of the workload and measured on the other.

    .venv/bin/python bench/categories_vs_global.py [--policy examples/policy_files/general_assistant.yaml]
        [--exemplars 50] [--qqp-pairs 6000] [--mrpc-pairs 1000] [--stsb-pairs 1500] [--seed 7]
        [--targets 0.95,0.90,0.85] [--confidence 0.95] [--min-category-pairs 100] [--threads 1]
        [--output bench/out/categories_vs_global.md]

Data: ../shared/data/pairs/{qqp_dev,mrpc,stsb}.jsonl and ../shared/data/queries/categories_dev.jsonl,
third-party and licensed for research only: read by path, never copied here. Without them the
benchmark says so and exits 0.

Workload. Labelled pairs (a, b) from the three pair files, sampled with the seed (STS-B: score ≥ 4 a
duplicate, ≤ 2 not, between dropped). Each pair belongs to the category that the policy's own
classifier gives its stored side a, exactly as CacheEngine files a when it stores it. The policy is
`--policy` with `--exemplars` real user queries per label of categories_dev.jsonl added to the
matching category's hand-written exemplars (code → code, factual → factual, chat → chat,
time_sensitive → realtime; finance has no category). Reason: with its 6 to 11 hand-written
exemplars per category, general_assistant.yaml sends about 80% of these pairs to `default`
(measured on 700 sampled pairs: QQP 316 of 400, MRPC 127 of 150, STS-B 133 of 150), which leaves
per-category thresholds almost nothing to differ on. `--exemplars 0` runs the policy as shipped.

Why the categories_dev queries are exemplars only, not pairs: the obvious use is to pair each query
with its nearest neighbour of the same label as a near-miss non-duplicate. That gets the labels
wrong where it matters. The closest neighbours are mostly paraphrases ("check if string is int in
python" / "how to check whether a string is int in python" 0.991, "What is the weather in Taiwan" /
"What's the weather in Taiwan" 0.997, "who won the 1st battle of bull run" / "... the first battle
of bull run" 0.988). Labelling them non-duplicates would put label noise right at the similarities
where the thresholds get chosen, so they are left out.

A caveat on the categories: they are what the classifier makes of QQP, MRPC and STS-B, so a
difference between categories is partly a difference between sources. MRPC's news sentences land
mostly in `default` and `realtime`, STS-B's captions and headlines in `default`, and QQP spreads
over all categories.

Protocol. The workload is split into halves A and B by question (bench/quality.py
split_by_question: texts joined by any pair form one group, whole groups go to one half, no text is
in both). On the tune half, for each target precision:

  global          one threshold, calibrated on every tune pair of a cacheable category, written
                  into every cacheable category. Pairs of non-cacheable categories are left out
                  because no policy ever serves them.
  category-aware  each cacheable category's own threshold, from gateway.tools.calibrate.calibrate (what
                  `semcache calibrate` does). A category with fewer than `--min-category-pairs`
                  tune pairs takes the global threshold instead, marked "fallback".
  category-aware, else global
                  the same, except that a category where no threshold of its own qualifies also
                  takes the global threshold (category-aware gives it exact match only). This is
                  the lenient reading of "keep it strict or add pairs", for comparison.

Calibration picks the lowest threshold whose one-sided Wilson lower bound on precision reaches the
target at `--confidence`. Where no threshold qualifies, the category gets 1.0 (exact match only).
The policies are then measured on the other half, and again with the halves swapped. Each
measurement runs through CacheEngine.lookup with a real SqliteStore in a temporary folder
(bench/quality.py fill / run_config): the policy's classifier, its non-cacheable categories, one
index per category, and the calibrated thresholds. Three things in the policy are changed so that
nothing but the threshold differs: quotas are raised so that nothing is evicted; near-miss bands
and load-adaptation bounds are removed (neither changes a lookup, and a bound above a calibrated
threshold would make the policy invalid); TTLs have no effect because the clock stands still.
(i) Each pair's a side is stored in a scope of its own and b is looked up. (ii) Every a side is
stored in one shared scope. Rows are by the category of the stored side. Embeddings are computed
once, in bulk, and served from memory (MemoEmbedder).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import shlex
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.quality import (  # noqa: E402
    BATCH,
    DATA,
    Config,
    Groups,
    MemoEmbedder,
    Pair,
    Served,
    Tally,
    duplicate_groups,
    fill,
    fmt,
    read_pairs,
    run_config,
    sample,
    shell,
    split_by_question,
    tally_pairs,
    tally_shared,
)
from embeddings import EmbeddingBatcher, SentenceTransformerEmbedder  # noqa: E402
from embeddings.batcher import BatcherConfig  # noqa: E402
from gateway.cache.engine import ActivePolicy  # noqa: E402
from gateway.stores import SqliteStore  # noqa: E402
from gateway.tools.calibrate import LabelledPair, calibrate  # noqa: E402
from policies import Bounds, CategoryClassifier, Policy, load_policy  # noqa: E402
from policies.calibration import CalibrationResult, calibrate_threshold  # noqa: E402

QUERIES = ROOT.parent / "shared" / "data" / "queries" / "categories_dev.jsonl"
POLICY = ROOT / "examples" / "policy_files" / "general_assistant.yaml"
# categories_dev label → the general_assistant category its queries are exemplars of.
LABEL_CATEGORY = {"code": "code", "factual": "factual", "chat": "chat", "time_sensitive": "realtime"}
GLOBAL, AWARE, AWARE_ELSE_GLOBAL = "global", "category-aware", "category-aware, else global"
POLICIES = (GLOBAL, AWARE, AWARE_ELSE_GLOBAL)
EXACT_ONLY = 1.0
NO_EVICTION = 10**7


# --- the policy ----------------------------------------------------------------------------------


def read_queries(path: Path, seed: int) -> dict[str, list[str]]:
    """categories_dev.jsonl by label, each label's texts shuffled with the seed."""
    by_label: dict[str, list[str]] = defaultdict(list)
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            by_label[str(row["category"])].append(str(row["text"]))
    for label, texts in sorted(by_label.items()):
        random.Random(f"{seed}-{label}").shuffle(texts)
    return dict(by_label)


def with_exemplars(policy: Policy, queries: Mapping[str, Sequence[str]], per_label: int) -> Policy:
    """`policy` with `per_label` queries of each mapped label added to its category's exemplars."""
    added: dict[str, tuple[str, ...]] = {}
    for label, category in LABEL_CATEGORY.items():
        if category in policy.names and per_label > 0:
            added[category] = tuple(queries.get(label, ())[:per_label])
    categories = tuple(
        dataclasses.replace(category, exemplars=(*category.exemplars, *added.get(category.name, ())))
        for category in policy.categories
    )
    return dataclasses.replace(policy, categories=categories)


def bench_policy(policy: Policy, thresholds: Mapping[str, float]) -> Policy:
    """`policy` with `thresholds` written in, and nothing else that could tell two runs apart:
    quotas too large to evict, no near-miss band, no load-adaptation bounds."""
    categories = tuple(
        dataclasses.replace(
            category,
            similarity_threshold=thresholds.get(category.name, category.similarity_threshold),
            max_entries=NO_EVICTION,
            near_miss_floor=None,
            bounds=Bounds(),
        )
        for category in policy.categories
    )
    return dataclasses.replace(policy, categories=categories)


def activate(policy: Policy, memo: MemoEmbedder) -> ActivePolicy:
    """The classifier the gateway builds at load: the exemplars embedded once."""
    vectors = {
        name: np.stack([item.vector for item in memo.embed(list(texts))]) for name, texts in policy.exemplars().items()
    }
    return ActivePolicy(policy=policy, classifier=CategoryClassifier(policy, vectors))


def classify_stored_sides(active: ActivePolicy, memo: MemoEmbedder, pairs: Sequence[Pair]) -> dict[str, str]:
    """The category of each pair's a side, as CacheEngine decides it when storing a (rules only for
    a text the model had to cut)."""
    categories = {}
    for text in dict.fromkeys(pair.a for pair in pairs):
        (embedded,) = memo.embed([text])
        categories[text] = active.classify(text, None if embedded.truncated else embedded.vector).name
    return categories


# --- tuning --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Choice:
    threshold: float  # EXACT_ONLY: no semantic hits
    how: str


def choose(
    global_result: CalibrationResult | None,
    per_category: Mapping[str, CalibrationResult | None],
    tune_pairs: Mapping[str, int],
    min_pairs: int,
) -> dict[str, dict[str, Choice]]:
    """Each policy's threshold per category. Category-aware: the category's own calibration, the
    global threshold where it had fewer than `min_pairs` tune pairs, exact only where no threshold
    of its own qualified; "else global" takes the global threshold in that last case too."""
    overall = (
        Choice(EXACT_ONLY, "none qualifies: exact only") if global_result is None
        else Choice(global_result.threshold, "calibrated on all")
    )  # fmt: skip
    policies: dict[str, dict[str, Choice]] = {name: {} for name in POLICIES}
    for name, result in per_category.items():
        count = tune_pairs.get(name, 0)
        policies[GLOBAL][name] = overall
        if count < min_pairs:
            fallback = Choice(overall.threshold, f"fallback to global ({count} < {min_pairs} pairs)")
            policies[AWARE][name] = policies[AWARE_ELSE_GLOBAL][name] = fallback
        elif result is None:
            policies[AWARE][name] = Choice(EXACT_ONLY, "none qualifies: exact only")
            policies[AWARE_ELSE_GLOBAL][name] = Choice(overall.threshold, "none qualifies: global")
        else:
            policies[AWARE][name] = policies[AWARE_ELSE_GLOBAL][name] = Choice(result.threshold, "own calibration")
    return policies


@dataclass(frozen=True, slots=True)
class Tuning:
    target: float
    tune_pairs: dict[str, tuple[int, int]]  # per cacheable category: (pairs, duplicates)
    overall: CalibrationResult | None  # calibrated on every pair of a cacheable category
    own: dict[str, CalibrationResult | None]  # each cacheable category's own calibration
    policies: dict[str, dict[str, Choice]]  # policy → category → threshold
    disagreements: dict[str, tuple[int, int]]  # category: (semcache calibrate's count, ours), if any

    def thresholds(self, policy: str) -> dict[str, float]:
        return {name: choice.threshold for name, choice in self.policies[policy].items()}


def tune(
    active: ActivePolicy,
    memo: MemoEmbedder,
    pairs: Sequence[Pair],
    category_of: Mapping[str, str],
    *,
    target: float,
    confidence: float,
    min_pairs: int,
) -> Tuning:
    policy = active.policy
    # As `semcache calibrate` does: pairs with a text the model cuts are never semantic hits.
    cacheable = [
        pair
        for pair in pairs
        if policy.category(category_of[pair.a]).cacheable
        and not (memo.table[pair.a].truncated or memo.table[pair.b].truncated)
    ]
    overall = (
        calibrate_threshold(
            np.array([memo.similarity(pair.a, pair.b) for pair in cacheable]),
            np.array([pair.label for pair in cacheable]),
            target_precision=target,
            confidence=confidence,
        )
        if cacheable
        else None
    )
    # `semcache calibrate`'s own per-category calibration (it classifies the a sides itself; it
    # also fits a verifier, which is not used here).
    found = calibrate(
        [LabelledPair(a=pair.a, b=pair.b, same=bool(pair.label)) for pair in pairs],
        policy=policy,
        embedder=memo,
        target_precision=target,
        confidence=confidence,
        progress=lambda _: None,
    )
    counts = Counter(category_of[pair.a] for pair in cacheable)
    duplicates = Counter(category_of[pair.a] for pair in cacheable if pair.label)
    disagreements = {
        name: (count, counts.get(name, 0))
        for name, count in found.pairs_per_category.items()
        if count != counts.get(name, 0)
    }
    return Tuning(
        target=target,
        tune_pairs={name: (count, duplicates.get(name, 0)) for name, count in found.pairs_per_category.items()},
        overall=overall,
        own=dict(found.thresholds),
        policies=choose(overall, found.thresholds, found.pairs_per_category, min_pairs),
        disagreements=disagreements,
    )


# --- measurement ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measured:
    per_pair: list[Served]  # setting (i)
    shared: dict[str, Served]  # setting (ii), by query
    ms_per_lookup: float


@dataclass(frozen=True, slots=True)
class Direction:
    tune_half: str
    test_half: str
    tunings: list[Tuning]
    measured: dict[tuple[float, str], Measured]  # (target, policy)


async def run_directions(
    active: ActivePolicy,
    memo: MemoEmbedder,
    halves: Mapping[str, Sequence[Pair]],
    category_of: Mapping[str, str],
    *,
    targets: Sequence[float],
    confidence: float,
    min_pairs: int,
    folder: Path,
) -> list[Direction]:
    """Tune on each half, measure on the other, through CacheEngine.lookup."""
    base = bench_policy(active.policy, {})
    writer = ActivePolicy(policy=base, classifier=active.classifier)
    directions = []
    async with EmbeddingBatcher(memo, BatcherConfig(max_batch=BATCH, max_wait_ms=0.0, deadline_ms=60_000)) as batcher:
        for tune_half, test_half in (tuple(halves), tuple(reversed(tuple(halves)))):
            tunings = [
                tune(active, memo, halves[tune_half], category_of, target=target, confidence=confidence,
                     min_pairs=min_pairs)
                for target in targets
            ]  # fmt: skip
            test = halves[test_half]
            measured: dict[tuple[float, str], Measured] = {}
            async with SqliteStore(folder / f"{test_half}.db") as store:
                await fill(store, batcher, test, writer)
                for tuning in tunings:
                    for name in POLICIES:
                        policy = bench_policy(active.policy, tuning.thresholds(name))
                        config = Config(name, None, policy=ActivePolicy(policy=policy, classifier=active.classifier))
                        per_pair, shared, ms = await run_config(store, batcher, test, config)
                        measured[(tuning.target, name)] = Measured(per_pair, shared, ms)
                        print(f"tuned on {tune_half}, measured on {test_half}: {tuning.target:g} {name}", flush=True)
            directions.append(Direction(tune_half, test_half, tunings, measured))
    return directions


def by_category(
    pairs: Sequence[Pair], served: Sequence[Served], category_of: Mapping[str, str], names: Sequence[str]
) -> dict[str, Tally]:
    """Setting (i) tallied per category of the stored side, and over all `names` ("all")."""
    tallies = {}
    for name in (*names, "all"):
        chosen = [
            (pair, got)
            for pair, got in zip(pairs, served, strict=True)
            if category_of[pair.a] == name or (name == "all" and category_of[pair.a] in names)
        ]
        tallies[name] = tally_pairs([pair for pair, _ in chosen], [got for _, got in chosen])
    return tallies


# --- report --------------------------------------------------------------------------------------


def ratio(new: float, old: float) -> str:
    if np.isnan(new) or np.isnan(old):
        return "—"
    if old == 0:
        return "—" if new == 0 else "∞"
    return f"{new / old:.2f}x"


def difference(new: float, old: float) -> str:
    return "—" if np.isnan(new) or np.isnan(old) else f"{new - old:+.3f}"


def hits(tally: Tally) -> str:
    return f"{tally.right_hits}+{tally.wrong_hits}"


def direction_tables(
    direction: Direction, halves: Mapping[str, Sequence[Pair]], category_of: Mapping[str, str], groups: Groups
) -> list[str]:
    test = halves[direction.test_half]
    lines = [f"### Tuned on half {direction.tune_half}, measured on half {direction.test_half}", ""]
    for tuning in direction.tunings:
        names = list(tuning.own)
        tallies = {
            policy: by_category(test, direction.measured[(tuning.target, policy)].per_pair, category_of, names)
            for policy in POLICIES
        }
        shared = {
            policy: tally_shared(test, direction.measured[(tuning.target, policy)].shared, groups)
            for policy in POLICIES
        }
        if all(threshold == EXACT_ONLY for p in POLICIES for threshold in tuning.thresholds(p).values()):
            every = tallies[GLOBAL]["all"]
            lines += [
                f"**Target precision {tuning.target:g}**: no threshold qualifies, globally or in any category: "
                f"every policy serves exact matches only ((i) hit rate {fmt(every.hit_rate)}, "
                f"{hits(every)} hits; (ii) {hits(shared[GLOBAL])} hits).",
                "",
            ]
            continue
        lines += [
            f"**Target precision {tuning.target:g}.** (i) each pair in a scope of its own, by category of the "
            "stored side; x G and - G: against the global threshold of the same run.",
            "",
            "| category | test pairs (dup) | policy | threshold | how | hit rate | x G | precision "
            "| false-hit rate | - G | hits (right+wrong) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name in (*names, "all"):
            base = tallies[GLOBAL][name]
            for policy in POLICIES:
                tally = tallies[policy][name]
                choice = tuning.policies[policy].get(name)
                lines.append(
                    f"| {name if name != 'all' else '**all cacheable**'} | {tally.positives + tally.negatives} "
                    f"({tally.positives}) | {policy} | {fmt(choice.threshold, 4) if choice else ''} "
                    f"| {choice.how if choice else ''} | {fmt(tally.hit_rate)} "
                    f"| {ratio(tally.hit_rate, base.hit_rate)} | {fmt(tally.precision)} | {fmt(tally.false_hit_rate)} "
                    f"| {difference(tally.false_hit_rate, base.false_hit_rate)} | {hits(tally)} |"
                )
        lines += [
            "",
            f"(ii) every a side in one scope, all {len(test)} test pairs:",
            "",
            "| policy | hit rate | x G | precision | false-hit rate | - G | hits (right+wrong) | ms per lookup |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for policy in POLICIES:
            tally, base = shared[policy], shared[GLOBAL]
            lines.append(
                f"| {policy} | {fmt(tally.hit_rate)} | {ratio(tally.hit_rate, base.hit_rate)} | {fmt(tally.precision)} "
                f"| {fmt(tally.false_hit_rate)} | {difference(tally.false_hit_rate, base.false_hit_rate)} "
                f"| {hits(tally)} | {direction.measured[(tuning.target, policy)].ms_per_lookup:.2f} |"
            )
        lines.append("")
        if tuning.disagreements:
            lines += [
                f"Note: `semcache calibrate` counted other pairs per category than the engine's classification "
                f"(calibrate, ours): {tuning.disagreements}.",
                "",
            ]
    return lines


def summary_table(
    directions: Sequence[Direction],
    halves: Mapping[str, Sequence[Pair]],
    category_of: Mapping[str, str],
    groups: Groups,
) -> list[str]:
    """Every cacheable pair together, per direction, target and policy: (i) and (ii)."""
    lines = [
        "### Summary: all cacheable pairs",
        "",
        "| tuned → measured | target | policy | (i) hit rate | x G | (i) precision | (i) false-hit rate | - G "
        "| (ii) hit rate | x G | (ii) precision | (ii) false-hit rate |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for direction in directions:
        test = halves[direction.test_half]
        for tuning in direction.tunings:
            names = list(tuning.own)
            single = {
                policy: by_category(test, direction.measured[(tuning.target, policy)].per_pair, category_of, names)[
                    "all"
                ]
                for policy in POLICIES
            }
            shared = {
                policy: tally_shared(test, direction.measured[(tuning.target, policy)].shared, groups)
                for policy in POLICIES
            }
            exact_only = all(t == EXACT_ONLY for p in POLICIES for t in tuning.thresholds(p).values())
            for policy in (GLOBAL,) if exact_only else POLICIES:
                one, every = single[policy], shared[policy]
                lines.append(
                    f"| {direction.tune_half} → {direction.test_half} | {tuning.target:g} "
                    f"| {'every policy: none qualifies, exact only' if exact_only else policy} "
                    f"| {fmt(one.hit_rate)} | {ratio(one.hit_rate, single[GLOBAL].hit_rate)} | {fmt(one.precision)} "
                    f"| {fmt(one.false_hit_rate)} | {difference(one.false_hit_rate, single[GLOBAL].false_hit_rate)} "
                    f"| {fmt(every.hit_rate)} | {ratio(every.hit_rate, shared[GLOBAL].hit_rate)} "
                    f"| {fmt(every.precision)} | {fmt(every.false_hit_rate)} |"
                )
    return [*lines, ""]


def calibration_table(directions: Sequence[Direction]) -> list[str]:
    lines = [
        "### Calibration on the tune halves",
        "",
        "| tuned on | target | category | tune pairs (dup) | own threshold | hit rate | precision | lower bound "
        "| hits (right+wrong) | category-aware sets | else global sets |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for direction in directions:
        for tuning in direction.tunings:
            total = tuple(sum(column) for column in zip(*tuning.tune_pairs.values(), strict=True)) or (0, 0)
            rows: list[tuple[str, tuple[int, ...], CalibrationResult | None, str, str]] = [
                ("(global: all cacheable)", total, tuning.overall, "", "")
            ]
            for name, found in tuning.own.items():
                aware, hybrid = tuning.policies[AWARE][name], tuning.policies[AWARE_ELSE_GLOBAL][name]
                rows.append(
                    (name, tuning.tune_pairs[name], found, f"{fmt(aware.threshold, 4)} ({aware.how})",
                     f"{fmt(hybrid.threshold, 4)} ({hybrid.how})")
                )  # fmt: skip
            for name, (count, duplicates), found, aware_set, hybrid_set in rows:
                lines.append(
                    f"| {direction.tune_half} | {tuning.target:g} | {name} | {count} ({duplicates}) "
                    f"| {fmt(found.threshold, 4) if found else 'none qualifies'} "
                    f"| {fmt(found.hit_rate) if found else '—'} | {fmt(found.precision) if found else '—'} "
                    f"| {fmt(found.precision_lower_bound) if found else '—'} "
                    f"| {f'{found.true_hits}+{found.false_hits}' if found else '—'} | {aware_set} | {hybrid_set} |"
                )
    return [*lines, ""]


def workload_table(
    halves: Mapping[str, Sequence[Pair]], source_of: Mapping[Pair, str], category_of: Mapping[str, str], policy: Policy
) -> list[str]:
    sources = sorted(set(source_of.values()))
    lines = [
        "### Workload: pairs (duplicates) per category of the stored side",
        "",
        "| category | cacheable | " + " | ".join(f"{half}: {source}" for half in halves for source in sources) + " |",
        "|---|---|" + "---|" * (len(halves) * len(sources)),
    ]
    for name in policy.names:
        cells = []
        for pairs in halves.values():
            for source in sources:
                chosen = [p for p in pairs if source_of[p] == source and category_of[p.a] == name]
                cells.append(f"{len(chosen)} ({sum(p.label for p in chosen)})")
        lines.append(f"| {name} | {'yes' if policy.category(name).cacheable else 'no'} | " + " | ".join(cells) + " |")
    return [*lines, ""]


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, default=POLICY)
    parser.add_argument("--exemplars", type=int, default=50, help="categories_dev queries added per category")
    parser.add_argument("--qqp-pairs", type=int, default=6000)
    parser.add_argument("--mrpc-pairs", type=int, default=1000)
    parser.add_argument("--stsb-pairs", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--targets", default="0.95,0.90,0.85", help="target precisions")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--min-category-pairs", type=int, default=100, help="fewer tune pairs: the global threshold")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the embedder")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "out" / "categories_vs_global.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not DATA.is_dir() or (args.exemplars > 0 and not QUERIES.is_file()):
        print(f"{DATA} or {QUERIES} is absent: this benchmark needs the shared labelled data; nothing to do.")
        return 0
    started = time.perf_counter()
    source_of: dict[Pair, str] = {}
    every: list[Pair] = []
    for name, size in (("qqp_dev", args.qqp_pairs), ("mrpc", args.mrpc_pairs), ("stsb", args.stsb_pairs)):
        pairs = read_pairs(name)
        every += pairs
        for pair in sample(pairs, size, args.seed):
            source_of.setdefault(pair, name)
    groups = duplicate_groups(every)
    workload = list(source_of)
    half_b, half_a, _ = split_by_question(workload, 0.5, args.seed)
    halves = {"A": half_a, "B": half_b}
    assert not {t for p in half_a for t in (p.a, p.b)} & {t for p in half_b for t in (p.a, p.b)}, "a text in both"

    policy = load_policy(args.policy)
    if args.exemplars > 0:
        policy = with_exemplars(policy, read_queries(QUERIES, args.seed), args.exemplars)
    memo = MemoEmbedder(SentenceTransformerEmbedder(threads=args.threads))
    texts = list(dict.fromkeys(text for pair in workload for text in (pair.a, pair.b)))
    embed_started = time.perf_counter()
    memo.embed(texts)
    active = activate(policy, memo)
    embed_s = time.perf_counter() - embed_started
    print(f"embedded {len(memo.table)} texts in {embed_s:.0f} s", flush=True)
    category_of = classify_stored_sides(active, memo, workload)

    targets = [float(value) for value in args.targets.split(",")]
    with tempfile.TemporaryDirectory(prefix="semcache-categories-") as folder:
        directions = asyncio.run(
            run_directions(
                active, memo, halves, category_of, targets=targets, confidence=args.confidence,
                min_pairs=args.min_category_pairs, folder=Path(folder),
            )
        )  # fmt: skip
    total_s = time.perf_counter() - started
    command = shlex.join(
        [".venv/bin/python", "bench/categories_vs_global.py", *(argv if argv is not None else sys.argv[1:])]
    )
    non_cacheable = [name for name in policy.names if not policy.category(name).cacheable]
    lines = [
        "## Category-aware vs one global threshold (`bench/categories_vs_global.py`)",
        "",
        f"Run {shell('date -u')} on {shell('nproc')} cores ({shell('uptime')}), in {total_s:.0f} s. Command:",
        "",
        f"    {command}",
        "",
        (
            f"Policy {args.policy.name} with {args.exemplars} categories_dev exemplars added per category "
            f"({', '.join(f'{k} → {v}' for k, v in LABEL_CATEGORY.items())})."
            if args.exemplars
            else f"Policy {args.policy.name} as it is (no exemplars added)."
        )
        + " Embedder all-MiniLM-L6-v2 (packaged), "
        f"{args.threads} torch thread(s): {len(memo.table)} texts in {embed_s:.0f} s. Samples (seed {args.seed}): "
        f"QQP {args.qqp_pairs}, MRPC {args.mrpc_pairs}, STS-B {args.stsb_pairs} pairs (STS-B: score ≥ 4 a "
        f"duplicate, ≤ 2 not, between dropped); split by question into A {len(half_a)} and B {len(half_b)} pairs. "
        f"Calibration: lowest threshold whose one-sided Wilson lower bound on precision at {args.confidence:.0%} "
        f"confidence reaches the target; none: 1.0 (exact only). Category-aware: a category with fewer than "
        f"{args.min_category_pairs} tune pairs falls back to the global threshold; one where no threshold of its "
        "own qualifies gets exact match only (category-aware) or the global threshold (category-aware, else "
        f"global). Non-cacheable categories ({', '.join(non_cacheable) or 'none'}): never served by any policy, "
        "left out of calibration and of the per-category rows.",
        "",
        "Hit rate = duplicate pairs served a right answer / duplicate pairs; precision = right hits / all hits; "
        "false-hit rate = non-duplicate pairs served a wrong answer / non-duplicate pairs. G = the global "
        "threshold's figure in the same run.",
        "",
        *summary_table(directions, halves, category_of, groups),
        *workload_table(halves, source_of, category_of, policy),
        *calibration_table(directions),
    ]
    for direction in directions:
        lines += direction_tables(direction, halves, category_of, groups)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    print(f"wrote {args.output} in {total_s:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
