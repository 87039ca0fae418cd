"""Thresholds from labelled pairs: the most permissive threshold whose precision is still at the
target with a stated confidence. Pure: scores and labels in, a threshold out.

    result = calibrate_threshold(similarities, labels, target_precision=0.95, confidence=0.95)
    result.threshold   # serve a candidate when its score ≥ this; None: no threshold is safe enough

The bound is the one-sided Wilson score lower bound on precision (true hits among all hits): with
`confidence=0.95`, a threshold is accepted only if precision ≥ target holds with 95% confidence
from the hits counted at it. `confidence=0.5` gives the plain point estimate (z = 0). Scanning many
thresholds and taking the lowest that passes is a mild multiple comparison: keep a test split to
check the chosen threshold on (bench/quality.py does).

For a verifier (what `semcache calibrate` does with labelled pairs (a, b, label)):

    features = np.stack([pair_features(b, a, similarity) for ...])
    fold_of = folds_by_group(list(zip(a_texts, b_texts)), 5)
    found = calibrate_verifier(features, labels, fold_of, floor=0.8, l2=1.0, vetoes=DEFAULT_VETOES,
                               target_precision=0.95, confidence=0.95)
    if found: verifier, result = found; path.write_text(verifier.to_json())
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from policies.verifier import LogisticVerifier, fit_verifier


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationResult:
    threshold: float  # serve when score ≥ threshold
    hit_rate: float  # share of the positives served at it
    precision: float  # share of the served that are positives (point estimate)
    precision_lower_bound: float  # one-sided Wilson lower bound at the requested confidence
    n: int  # labelled examples calibrated on
    true_hits: int
    false_hits: int


def _z(confidence: float) -> float:
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence!r}")
    return NormalDist().inv_cdf(confidence)


def _wilson_lower(
    true_hits: npt.NDArray[np.float64], served: npt.NDArray[np.float64], z: float
) -> npt.NDArray[np.float64]:
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(served > 0, true_hits / np.maximum(served, 1), 0.0)
        z2 = z * z
        centre = share + z2 / (2 * served)
        spread = z * np.sqrt(share * (1 - share) / served + z2 / (4 * served * served))
        bound = (centre - spread) / (1 + z2 / served)
    result: npt.NDArray[np.float64] = np.where(served > 0, np.clip(bound, 0.0, 1.0), 0.0)
    return result


def precision_lower_bound(true_hits: int, false_hits: int, confidence: float) -> float:
    """One-sided Wilson score lower bound on precision = true / (true + false); 0 with no hits."""
    if true_hits < 0 or false_hits < 0:
        raise ValueError("hit counts must be >= 0")
    return float(precision_lower_bounds([true_hits], [true_hits + false_hits], confidence)[0])


def precision_lower_bounds(
    true_hits: npt.ArrayLike, served: npt.ArrayLike, confidence: float
) -> npt.NDArray[np.float64]:
    """`precision_lower_bound` for many (true hits, served) counts at once; 0 where none is served."""
    true = np.asarray(true_hits, dtype=np.float64)
    total = np.asarray(served, dtype=np.float64)
    if true.shape != total.shape or np.any(true < 0) or np.any(total < true):
        raise ValueError("need 0 <= true_hits <= served, of one shape")
    bounds = _wilson_lower(true, total, _z(confidence))
    point = np.where(total > 0, true / np.maximum(total, 1), 0.0)
    result: npt.NDArray[np.float64] = np.minimum(bounds, point)
    return result


def calibrate_threshold(
    scores: npt.ArrayLike, labels: npt.ArrayLike, *, target_precision: float, confidence: float
) -> CalibrationResult | None:
    """The lowest threshold (one of the scores) whose precision lower bound is ≥ `target_precision`,
    i.e. the one that serves the most positives while staying safe; None when none qualifies.

    A score of -inf marks an example that can never be served (below a verifier's floor, say): it
    still counts among the positives for the hit rate, never as a threshold."""
    values = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(labels)
    if values.ndim != 1 or truth.shape != values.shape:
        raise ValueError(f"scores and labels must be 1-d and of one length, got {values.shape} and {truth.shape}")
    if np.any(np.isnan(values)) or np.any(values == np.inf):
        raise ValueError("scores must not be NaN or +inf")
    if not np.all((truth == 0) | (truth == 1)):
        raise ValueError("labels must be 0 or 1")
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target_precision must be in (0, 1], got {target_precision!r}")
    cuts = _cuts(values, truth, confidence)
    if cuts is None:
        return None
    ok = cuts.last_of_tie & (cuts.lower >= target_precision)
    if not np.any(ok):
        return None
    return cuts.result(int(np.flatnonzero(ok)[-1]))


def best_reachable(scores: npt.ArrayLike, labels: npt.ArrayLike, *, confidence: float) -> CalibrationResult | None:
    """The threshold with the highest precision lower bound (the lowest such threshold on a tie):
    what can be promised from these labels when a target cannot be. None without servable scores
    or without a single true hit."""
    values = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(labels)
    if values.ndim != 1 or truth.shape != values.shape:
        raise ValueError(f"scores and labels must be 1-d and of one length, got {values.shape} and {truth.shape}")
    cuts = _cuts(values, truth, confidence)
    if cuts is None:
        return None
    lower = np.where(cuts.last_of_tie, cuts.lower, -1.0)
    best = float(lower.max())
    if best <= 0.0:
        return None
    return cuts.result(int(np.flatnonzero(lower == best)[-1]))


@dataclass(frozen=True, slots=True, kw_only=True)
class _Cuts:
    """Every candidate threshold (the scores, highest first) with what serving from it gives."""

    ranked: npt.NDArray[np.float64]
    true_hits: npt.NDArray[np.float64]
    served: npt.NDArray[np.float64]
    lower: npt.NDArray[np.float64]  # min(Wilson lower bound, point estimate)
    last_of_tie: npt.NDArray[np.bool_]
    positives: int
    n: int

    def result(self, cut: int) -> CalibrationResult:
        tp, total = int(self.true_hits[cut]), int(self.served[cut])
        return CalibrationResult(
            threshold=float(self.ranked[cut]),
            hit_rate=tp / self.positives if self.positives else 0.0,
            precision=tp / total,
            precision_lower_bound=float(self.lower[cut]),
            n=self.n,
            true_hits=tp,
            false_hits=total - tp,
        )


def _cuts(values: npt.NDArray[np.float64], truth: npt.NDArray[Any], confidence: float) -> _Cuts | None:
    z = _z(confidence)
    servable = np.isfinite(values)
    order = np.argsort(-values[servable], kind="stable")
    ranked = values[servable][order]
    hits = truth[servable][order].astype(np.float64)
    if ranked.size == 0:
        return None
    true_hits = np.cumsum(hits)
    served = np.arange(1, ranked.size + 1, dtype=np.float64)
    # A threshold serves every tie at its score: only the last of a run of equal scores is a cut.
    last_of_tie = np.append(ranked[1:] != ranked[:-1], True)
    lower = np.minimum(_wilson_lower(true_hits, served, z), true_hits / served)
    return _Cuts(ranked=ranked, true_hits=true_hits, served=served, lower=lower, last_of_tie=last_of_tie,
                 positives=int(truth.sum()), n=int(values.size))  # fmt: skip


def hit_rate_at(scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float) -> tuple[float, float, int]:
    """(hit rate on positives, precision, hits) when serving every score ≥ `threshold`; precision
    is nan when nothing is served."""
    values = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(labels).astype(bool)
    served = values >= threshold
    true_hits = int(np.sum(served & truth))
    hits = int(np.sum(served))
    positives = int(truth.sum())
    return (true_hits / positives if positives else 0.0, true_hits / hits if hits else math.nan, hits)


# --- the verifier --------------------------------------------------------------------------------


def folds_by_group(sides: Sequence[tuple[str, str]], folds: int, *, seed: int = 0) -> npt.NDArray[np.int64]:
    """A fold number per labelled pair such that texts joined by pairs stay in one fold (no question
    on both sides of a fit/score split). Deterministic for a seed."""
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    parent: dict[str, str] = {}

    def find(text: str) -> str:
        root = parent.setdefault(text, text)
        while root != parent.setdefault(root, root):
            parent[root] = parent[parent[root]]
            root = parent[root]
        return root

    for one, other in sides:
        parent[find(one)] = find(other)
    roots = sorted({find(one) for one, _ in sides})
    np.random.default_rng(seed).shuffle(roots)
    fold_of_root = {root: number % folds for number, root in enumerate(roots)}
    return np.array([fold_of_root[find(one)] for one, _ in sides], dtype=np.int64)


def out_of_fold_scores(
    features: npt.ArrayLike,
    labels: npt.ArrayLike,
    fold_of: npt.ArrayLike,
    *,
    floor: float,
    l2: float,
    vetoes: tuple[str, ...] = (),
) -> npt.NDArray[np.float64]:
    """Each pair's verifier score (`LogisticVerifier.scores`) from a model fitted without its fold:
    honest scores to calibrate `min_probability` on."""
    matrix = np.asarray(features, dtype=np.float64)
    truth = np.asarray(labels)
    folds = np.asarray(fold_of)
    scores = np.empty(truth.shape[0], dtype=np.float64)
    for fold in np.unique(folds):
        held = folds == fold
        model = fit_verifier(matrix[~held], truth[~held], floor=floor, l2=l2, vetoes=vetoes)
        scores[held] = model.scores(matrix[held])
    return scores


def calibrate_verifier(
    features: npt.ArrayLike,
    labels: npt.ArrayLike,
    fold_of: npt.ArrayLike,
    *,
    floor: float,
    l2: float,
    vetoes: tuple[str, ...] = (),
    target_precision: float,
    confidence: float,
    description: str = "",
) -> tuple[LogisticVerifier, CalibrationResult] | None:
    """Fit a verifier on every pair (rows of `pair_features`) and set its `min_probability` to the
    threshold calibrated on out-of-fold scores; None when no threshold meets the target."""
    scores = out_of_fold_scores(features, labels, fold_of, floor=floor, l2=l2, vetoes=vetoes)
    result = calibrate_threshold(scores, labels, target_precision=target_precision, confidence=confidence)
    if result is None:
        return None
    model = fit_verifier(features, labels, floor=floor, l2=l2, vetoes=vetoes)
    return replace(model, min_probability=result.threshold, description=description), result
