"""Threshold calibration: the lowest threshold whose precision lower bound meets the target."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.calibration import (
    best_reachable,
    calibrate_threshold,
    calibrate_verifier,
    folds_by_group,
    hit_rate_at,
    out_of_fold_scores,
    precision_lower_bound,
)
from policies.verifier import pair_features

untimed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the bound -----------------------------------------------------------------------------------


def test_no_hits_have_no_precision_to_vouch_for() -> None:
    assert precision_lower_bound(0, 0, 0.95) == 0.0
    assert precision_lower_bound(0, 10, 0.95) == 0.0


def test_confidence_one_half_is_the_point_estimate() -> None:
    assert precision_lower_bound(81, 19, 0.5) == pytest.approx(0.81)


@pytest.mark.parametrize(("true_hits", "false_hits"), [(1, 0), (19, 1), (95, 5), (400, 7), (3, 9)])
def test_the_bound_solves_the_score_test(true_hits: int, false_hits: int) -> None:
    # Wilson's bound is the p at which the one-sided score statistic equals z: checked from that
    # definition rather than from the closed form the code uses.
    served = true_hits + false_hits
    bound = precision_lower_bound(true_hits, false_hits, 0.95)
    share = true_hits / served
    z = (share - bound) / math.sqrt(bound * (1 - bound) / served)
    assert z == pytest.approx(1.6448536, rel=1e-6)


def test_a_familiar_case() -> None:
    # 95 right out of 100 at 95% confidence is not yet "at least 95%".
    assert 0.90 < precision_lower_bound(95, 5, 0.95) < 0.95
    assert precision_lower_bound(990, 10, 0.95) > 0.98


@given(st.integers(0, 500), st.integers(0, 500), st.floats(0.5, 0.999))
def test_the_bound_is_a_probability_below_the_point_estimate(true_hits: int, false_hits: int, conf: float) -> None:
    bound = precision_lower_bound(true_hits, false_hits, conf)
    assert 0.0 <= bound <= 1.0
    if true_hits + false_hits:
        assert bound <= true_hits / (true_hits + false_hits) + 1e-12


@given(st.integers(0, 300), st.integers(0, 300), st.floats(0.5, 0.99), st.floats(0.5, 0.99))
def test_the_bound_is_monotonic(true_hits: int, false_hits: int, conf: float, other_conf: float) -> None:
    bound = precision_lower_bound(true_hits, false_hits, conf)
    assert precision_lower_bound(true_hits + 1, false_hits, conf) >= bound - 1e-12
    assert precision_lower_bound(true_hits, false_hits + 1, conf) <= bound + 1e-12
    low, high = sorted((conf, other_conf))
    assert (
        precision_lower_bound(true_hits, false_hits, high) <= precision_lower_bound(true_hits, false_hits, low) + 1e-12
    )


@pytest.mark.parametrize(("true_hits", "false_hits", "confidence"), [(-1, 0, 0.9), (1, 0, 1.0), (1, 0, 0.4)])
def test_the_bound_refuses_bad_input(true_hits: int, false_hits: int, confidence: float) -> None:
    with pytest.raises(ValueError, match=r"."):
        precision_lower_bound(true_hits, false_hits, confidence)


# --- the threshold -------------------------------------------------------------------------------


def test_the_lowest_threshold_that_meets_the_target() -> None:
    result = calibrate_threshold([0.9, 0.8, 0.7, 0.6, 0.5], [1, 1, 1, 0, 1], target_precision=0.9, confidence=0.5)
    assert result is not None
    assert result.threshold == 0.7
    assert (result.true_hits, result.false_hits, result.n) == (3, 0, 5)
    assert result.hit_rate == pytest.approx(0.75)
    assert result.precision == 1.0


def test_ties_are_served_together() -> None:
    # At 0.8 a positive and a negative tie: a threshold cannot take one without the other.
    result = calibrate_threshold([0.9, 0.8, 0.8], [1, 1, 0], target_precision=0.9, confidence=0.5)
    assert result is not None
    assert result.threshold == 0.9


def test_none_when_no_threshold_is_safe_enough() -> None:
    assert calibrate_threshold([0.9, 0.8], [0, 1], target_precision=0.9, confidence=0.5) is None
    # Right, but too few to vouch for 95% with 95% confidence.
    assert calibrate_threshold([0.99] * 5, [1] * 5, target_precision=0.95, confidence=0.95) is None
    assert calibrate_threshold([], [], target_precision=0.9, confidence=0.5) is None


def test_never_servable_examples_count_only_as_missed_positives() -> None:
    result = calibrate_threshold([0.9, -math.inf, -math.inf], [1, 1, 0], target_precision=0.5, confidence=0.5)
    assert result is not None
    assert result.threshold == 0.9
    assert result.hit_rate == 0.5
    assert calibrate_threshold([-math.inf], [1], target_precision=0.5, confidence=0.5) is None


def test_more_data_gets_a_looser_threshold_at_the_same_precision() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=4000)
    scores = np.clip(0.5 + 0.4 * labels + rng.normal(0.0, 0.1, size=4000), 0.0, 1.0)
    small = calibrate_threshold(scores[:300], labels[:300], target_precision=0.95, confidence=0.95)
    large = calibrate_threshold(scores, labels, target_precision=0.95, confidence=0.95)
    assert small is not None
    assert large is not None
    assert large.threshold <= small.threshold
    assert large.precision_lower_bound >= 0.95


@pytest.mark.parametrize(
    ("scores", "labels", "target", "confidence"),
    [
        ([0.5], [2], 0.9, 0.9),
        ([math.nan], [1], 0.9, 0.9),
        ([math.inf], [1], 0.9, 0.9),
        ([0.5, 0.6], [1], 0.9, 0.9),
        ([0.5], [1], 0.0, 0.9),
        ([0.5], [1], 0.9, 1.0),
    ],
)
def test_bad_input_is_refused(scores: list[float], labels: list[int], target: float, confidence: float) -> None:
    with pytest.raises(ValueError, match=r"."):
        calibrate_threshold(scores, labels, target_precision=target, confidence=confidence)


def test_hit_rate_at_a_threshold() -> None:
    assert hit_rate_at([0.9, 0.8, 0.7], [1, 0, 1], 0.8) == (0.5, 0.5, 2)
    rate, precision, hits = hit_rate_at([0.1], [1], 0.5)
    assert (rate, hits) == (0.0, 0)
    assert math.isnan(precision)


# --- properties ----------------------------------------------------------------------------------

# Scores from a small grid, so that ties are common.
examples = st.lists(st.tuples(st.integers(0, 20).map(lambda step: step / 20), st.integers(0, 1)), max_size=120)
targets = st.floats(0.5, 1.0)
confidences = st.floats(0.5, 0.99)


def split(rows: list[tuple[float, int]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([score for score, _ in rows], dtype=float), np.array([label for _, label in rows], dtype=int)


def threshold_or_inf(rows: list[tuple[float, int]], target: float, confidence: float) -> float:
    scores, labels = split(rows)
    result = calibrate_threshold(scores, labels, target_precision=target, confidence=confidence)
    return math.inf if result is None else result.threshold


@untimed
@given(examples, targets, confidences)
def test_a_chosen_threshold_meets_the_target_and_is_the_lowest_that_does(
    rows: list[tuple[float, int]], target: float, confidence: float
) -> None:
    scores, labels = split(rows)
    result = calibrate_threshold(scores, labels, target_precision=target, confidence=confidence)

    def bound_at(threshold: float) -> float:
        served = scores >= threshold
        return precision_lower_bound(int(labels[served].sum()), int((1 - labels[served]).sum()), confidence)

    lower = [score for score in set(scores.tolist()) if result is None or score < result.threshold]
    assert all(bound_at(score) < target for score in lower)
    if result is None:
        return
    served = scores >= result.threshold
    assert result.true_hits == int(labels[served].sum())
    assert result.false_hits == int(served.sum()) - result.true_hits
    assert result.precision_lower_bound == pytest.approx(bound_at(result.threshold))
    assert result.precision_lower_bound >= target
    assert result.precision >= result.precision_lower_bound
    assert result.hit_rate == pytest.approx(result.true_hits / labels.sum())


@untimed
@given(examples, targets, confidences)
def test_the_best_reachable_bound_is_the_highest_and_reachable_as_a_target(
    rows: list[tuple[float, int]], target: float, confidence: float
) -> None:
    scores, labels = split(rows)
    best = best_reachable(scores, labels, confidence=confidence)
    met = calibrate_threshold(scores, labels, target_precision=target, confidence=confidence)
    if best is None:
        assert met is None
        return
    assert met is None or met.precision_lower_bound <= best.precision_lower_bound
    # A target above the best bound is out of reach; the best bound itself is a reachable target.
    assert (met is None) == (target > best.precision_lower_bound)
    found = calibrate_threshold(scores, labels, target_precision=best.precision_lower_bound, confidence=confidence)
    assert found is not None and found.threshold <= best.threshold


@untimed
@given(examples, targets, targets, confidences)
def test_a_stricter_target_never_loosens_the_threshold(
    rows: list[tuple[float, int]], target: float, other: float, confidence: float
) -> None:
    low, high = sorted((target, other))
    assert threshold_or_inf(rows, low, confidence) <= threshold_or_inf(rows, high, confidence)


@untimed
@given(examples, targets, confidences, confidences)
def test_more_confidence_never_loosens_the_threshold(
    rows: list[tuple[float, int]], target: float, confidence: float, other: float
) -> None:
    low, high = sorted((confidence, other))
    assert threshold_or_inf(rows, target, low) <= threshold_or_inf(rows, target, high)


# --- the verifier --------------------------------------------------------------------------------

NOUNS = ["gold", "silver", "oil", "wheat", "copper", "coffee", "sugar", "cotton", "rice", "corn"]
VERBS = ["buy", "sell", "store", "ship", "grade", "price", "insure", "weigh", "test", "trade"]


def labelled_features(count: int, *, seed: int = 3) -> tuple[list[tuple[str, str]], np.ndarray, np.ndarray]:
    """Made-up pairs: true paraphrases at cosine 0.85-0.95, wrong-year false hits at 0.93-0.99."""
    rng = np.random.default_rng(seed)
    sides, rows, labels = [], [], []
    for number in range(count):
        noun, verb = NOUNS[number % len(NOUNS)], VERBS[(number // len(NOUNS)) % len(VERBS)]
        if number % 2:
            one, other = f"How do I {verb} {noun} no. {number}?", f"How can I {verb} {noun} no. {number}?"
            similarity, label = rng.uniform(0.85, 0.95), 1
        else:
            one = f"What was the price of {noun} in {1900 + number}?"
            other = f"What was the price of {noun} in {1901 + number}?"
            similarity, label = rng.uniform(0.93, 0.99), 0
        sides.append((one, other))
        rows.append(pair_features(other, one, float(similarity)))
        labels.append(label)
    return sides, np.stack(rows), np.array(labels)


def test_folds_keep_joined_texts_together() -> None:
    sides = [("a", "b"), ("b", "c"), ("d", "e"), ("f", "g"), ("c", "h"), ("i", "j")]
    fold_of = folds_by_group(sides, 3, seed=1)
    assert fold_of[0] == fold_of[1] == fold_of[4]
    assert set(fold_of.tolist()) <= {0, 1, 2}
    assert np.array_equal(fold_of, folds_by_group(sides, 3, seed=1))
    with pytest.raises(ValueError, match="folds"):
        folds_by_group(sides, 1)


def test_a_calibrated_verifier_meets_its_target_on_its_pairs() -> None:
    sides, matrix, labels = labelled_features(400)
    found = calibrate_verifier(
        matrix,
        labels,
        folds_by_group(sides, 5),
        floor=0.8,
        l2=1.0,
        target_precision=0.95,
        confidence=0.95,
        description="made-up pairs",
    )
    assert found is not None
    verifier, result = found
    assert verifier.min_probability == result.threshold
    assert verifier.description == "made-up pairs"
    assert result.precision_lower_bound >= 0.95
    accepted = verifier.scores(matrix) >= verifier.min_probability
    assert accepted[labels == 1].mean() > 0.9
    assert not accepted[labels == 0].any()


def test_no_calibrated_verifier_without_signal() -> None:
    _, matrix, _ = labelled_features(200)
    coin = np.random.default_rng(5).integers(0, 2, size=200)
    found = calibrate_verifier(
        matrix, coin, np.arange(200) % 4, floor=0.8, l2=1.0, target_precision=0.95, confidence=0.95
    )
    assert found is None


def test_out_of_fold_scores_block_what_the_verifier_never_serves() -> None:
    sides, matrix, labels = labelled_features(100)
    scores = out_of_fold_scores(matrix, labels, folds_by_group(sides, 4), floor=0.9, l2=1.0, vetoes=("year_mismatch",))
    assert np.isneginf(scores[labels == 0]).all()  # every false hit here has another year
    assert np.isneginf(scores[matrix[:, 0] < 0.9]).all()
    assert np.isfinite(scores[(labels == 1) & (matrix[:, 0] >= 0.9)]).all()
