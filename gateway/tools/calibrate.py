"""`semcache calibrate`: per-category similarity thresholds, and a verifier, from labelled pairs.

Each pair (a, b, label) is classified with the policy's classifier (by side a, the stored side),
then each category's threshold is the lowest whose one-sided lower confidence bound on precision
meets the target (not the point estimate: a small sample must not look precise). A verifier is
fitted on all pairs with out-of-fold calibration. Synchronous: a command-line job, not a request.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from embeddings import EmbeddedText, Embedder
from gateway.tools.policy_file import threshold_value
from policies import CategoryClassifier, Policy
from policies.calibration import (
    CalibrationResult,
    best_reachable,
    calibrate_threshold,
    calibrate_verifier,
    folds_by_group,
)
from policies.verifier import DEFAULT_VETOES, pair_features

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelledPair:
    a: str
    b: str
    same: bool


def read_pairs(path: Path) -> list[LabelledPair]:
    """JSON lines with `a`, `b` and `label` (0/1) or `score` (0-5: ≥4 same, ≤2 different, else skipped)."""
    pairs: list[LabelledPair] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "label" in row:
                same = bool(int(row["label"]))
            elif "score" in row:
                score = float(row["score"])
                if 2 < score < 4:
                    continue
                same = score >= 4
            else:
                raise ValueError(f"{path}:{number}: a pair needs `label` or `score`")
            pairs.append(LabelledPair(a=str(row["a"]), b=str(row["b"]), same=same))
    return pairs


def _embed(embedder: Embedder, texts: Sequence[str], progress: Progress, *, batch: int = 64) -> list[EmbeddedText]:
    embedded: list[EmbeddedText] = []
    for start in range(0, len(texts), batch):
        embedded.extend(embedder.embed(list(texts[start : start + batch])))
        progress(f"embedded {min(start + batch, len(texts))}/{len(texts)}")
    return embedded


@dataclass(frozen=True, slots=True, kw_only=True)
class Calibration:
    thresholds: dict[str, CalibrationResult | None]
    # For each category whose threshold is None: the best precision lower bound the pairs allow
    # (None: no pair of it, or not one true hit to serve).
    best: dict[str, CalibrationResult | None]
    pairs_per_category: dict[str, int]
    verifier_json: str | None
    verifier_result: CalibrationResult | None


def calibrate(
    pairs: Sequence[LabelledPair],
    *,
    policy: Policy,
    embedder: Embedder,
    target_precision: float,
    confidence: float,
    progress: Progress,
) -> Calibration:
    texts = sorted({text for pair in pairs for text in (pair.a, pair.b)})
    embedded = dict(zip(texts, _embed(embedder, texts, progress), strict=True))
    # The engine never serves a semantic hit for a text the model had to cut (exact match only):
    # such pairs say nothing about the threshold.
    kept = [pair for pair in pairs if not (embedded[pair.a].truncated or embedded[pair.b].truncated)]
    if len(kept) < len(pairs):
        progress(f"left out {len(pairs) - len(kept)} pairs with a text longer than the model's window")
    pairs = kept
    vectors = {text: item.vector for text, item in embedded.items()}
    exemplars = policy.exemplars()
    exemplar_vectors = {
        name: np.stack([item.vector for item in embedder.embed(list(group))]) for name, group in exemplars.items()
    }
    classifier = CategoryClassifier(policy, exemplar_vectors)
    similarity = np.array([float(np.clip(vectors[p.a] @ vectors[p.b], 0.0, 1.0)) for p in pairs])
    labels = np.array([p.same for p in pairs], dtype=bool)
    category = np.array([classifier.classify(p.a, vectors[p.a]).category for p in pairs])
    thresholds: dict[str, CalibrationResult | None] = {}
    best: dict[str, CalibrationResult | None] = {}
    counts: dict[str, int] = {}
    for name in policy.names:
        if not policy.category(name).cacheable:
            continue  # never served: no threshold to set
        chosen = category == name
        counts[name] = int(chosen.sum())
        thresholds[name] = (
            calibrate_threshold(
                similarity[chosen], labels[chosen], target_precision=target_precision, confidence=confidence
            )
            if chosen.any()
            else None
        )
        if thresholds[name] is None:
            best[name] = (
                best_reachable(similarity[chosen], labels[chosen], confidence=confidence) if chosen.any() else None
            )
    progress("fitting the verifier")
    features = np.stack([pair_features(p.b, p.a, s) for p, s in zip(pairs, similarity, strict=True)])
    folds = folds_by_group([(p.a, p.b) for p in pairs], 5, seed=7)
    fitted = calibrate_verifier(
        features, labels, folds, floor=0.8, l2=1.0, vetoes=DEFAULT_VETOES,
        target_precision=target_precision, confidence=confidence, description="semcache calibrate",
    )  # fmt: skip
    return Calibration(
        thresholds=thresholds,
        best=best,
        pairs_per_category=counts,
        verifier_json=None if fitted is None else fitted[0].to_json(),
        verifier_result=None if fitted is None else fitted[1],
    )


def calibrated_thresholds(result: Calibration) -> dict[str, float]:
    """The categories that got a threshold, and its value."""
    return {name: found.threshold for name, found in result.thresholds.items() if found is not None}


def report(result: Calibration, *, target_precision: float, confidence: float, out: TextIO = sys.stdout) -> str:
    """Print what was found per category (and, where the target is out of reach, the best that the
    pairs allow); returns the text."""
    lines = [f"# semcache calibrate: precision >= {target_precision} at {confidence:.0%} confidence (lower bound)"]
    for name, found in result.thresholds.items():
        count = result.pairs_per_category[name]
        if found is not None:
            lines.append(
                f"# {name}: {count} pairs; threshold {threshold_value(found.threshold):.4f} serves "
                f"{found.hit_rate:.1%} of true duplicates at precision {found.precision:.3f} "
                f"(lower bound {found.precision_lower_bound:.3f})"
            )
            continue
        best = result.best.get(name)
        if best is None:
            why = "no pairs" if count == 0 else "no true duplicate among them to serve"
            lines.append(f"# {name}: {count} pairs, {why}: target not reachable, threshold left as it is")
            continue
        lines.append(
            f"# {name}: {count} pairs, target not reachable; the best these pairs allow is precision lower bound "
            f"{best.precision_lower_bound:.3f} (precision {best.precision:.3f}) at threshold "
            f"{threshold_value(best.threshold):.4f}, serving {best.hit_rate:.1%} of true duplicates; "
            f"threshold left as it is (add labelled pairs, or --target-precision "
            f"{math.floor(best.precision_lower_bound * 1000) / 1000:g})"
        )
    if result.verifier_result is not None:
        found = result.verifier_result
        lines.append(
            f"# verifier: serves {found.hit_rate:.1%} of true duplicates at precision {found.precision:.3f} "
            f"(lower bound {found.precision_lower_bound:.3f}), out of fold"
        )
    else:
        lines.append("# verifier: no acceptance threshold reaches the target out of fold; none written")
    text = "\n".join(lines) + "\n"
    print(text, file=out, end="")
    return text
