"""Verified thresholds: the category fit, the entry's bound, the explore/serve/refuse decision, and a
simulated stream holding the error bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.verified import (
    DEFAULT_SETTINGS,
    CategoryPrior,
    Observation,
    VerifiedSettings,
    category_prior,
    decide,
    explore_probability,
    fit_correctness,
    posterior,
    record,
    separated_spread,
)

untimed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60)
EPSILONS = DEFAULT_SETTINGS.epsilons
# The bound is interpolated on a grid: float rounding moves it by far less than this.
TOLERANCE = 1e-9

similarities = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
# Two decimals: ties (identical similarities) come up often.
coarse = st.integers(min_value=0, max_value=100).map(lambda value: value / 100)


def observation(similarity: float, correct: bool) -> Observation:
    return Observation(similarity=similarity, correct=correct)


noisy = st.lists(st.builds(observation, st.one_of(similarities, coarse), st.booleans()), max_size=30)


@st.composite
def separable(draw: st.DrawFn) -> list[Observation]:
    cut = draw(similarities)
    points = draw(st.lists(similarities, min_size=1, max_size=30))
    return [observation(point, point >= cut) for point in points]


@st.composite
def degenerate(draw: st.DrawFn) -> list[Observation]:
    point = draw(coarse)
    labels = draw(st.lists(st.booleans(), min_size=1, max_size=10))
    kind = draw(st.sampled_from(["same-similarity", "all-correct", "all-wrong", "single"]))
    if kind == "all-correct":
        labels = [True] * len(labels)
    elif kind == "all-wrong":
        labels = [False] * len(labels)
    elif kind == "single":
        labels = labels[:1]
    return [observation(point, label) for label in labels]


observation_sets = st.one_of(noisy, separable(), degenerate())
priors = st.builds(
    CategoryPrior,
    slope=st.floats(min_value=DEFAULT_SETTINGS.min_slope, max_value=200.0),
    threshold=st.floats(min_value=0.0, max_value=1.0),
    spread=st.floats(min_value=DEFAULT_SETTINGS.min_spread, max_value=1.0),
    count=st.integers(min_value=1, max_value=10_000),
)


def alpha(observations: list[Observation], prior: CategoryPrior, similarity: float) -> float:
    return posterior(observations, prior).lower_bound(similarity, EPSILONS)


def stream(seed: int, count: int, *, low: float, noise: float, boundary: float = 0.85) -> list[Observation]:
    """Correctness is a step at `boundary`, each label flipped with probability `noise`."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(low, 1.0, count)
    flips = rng.random(count) < noise
    return [
        observation(float(point), bool((point >= boundary) != flip)) for point, flip in zip(points, flips, strict=True)
    ]


# --- the category fit --------------------------------------------------------------------------


@untimed
@given(observation_sets.filter(bool))
def test_the_fit_is_finite_and_in_range_for_any_set(observations: list[Observation]) -> None:
    fit = fit_correctness(observations)
    prior = category_prior(observations)

    assert DEFAULT_SETTINGS.min_slope <= fit.slope <= DEFAULT_SETTINGS.max_slope
    assert math.isfinite(fit.threshold) and 0.0 < fit.threshold_variance <= 1.0
    assert all(0.0 <= fit.probability(point) <= 1.0 for point in (0.0, 0.5, fit.threshold, 1.0))
    assert DEFAULT_SETTINGS.min_spread <= prior.spread <= 1.0
    assert prior.count == len(observations)


def test_the_fit_finds_a_noisy_step_and_narrows_with_data() -> None:
    few, many = (
        fit_correctness(stream(1, 200, low=0.6, noise=0.02)),
        fit_correctness(stream(2, 2000, low=0.6, noise=0.02)),
    )

    assert not few.separated and not many.separated
    assert abs(many.threshold - 0.85) < 0.02
    assert many.threshold_variance < few.threshold_variance
    assert many.probability(0.95) > 0.95 and many.probability(0.75) < 0.05


def test_separated_data_use_the_spread_table_and_the_lowest_correct_similarity() -> None:
    fit = fit_correctness(
        [observation(0.7, False), observation(0.8, False), observation(0.9, True), observation(0.95, True)]
    )

    assert fit.separated
    assert fit.threshold == 0.9
    assert fit.slope == DEFAULT_SETTINGS.separated_slope
    assert fit.threshold_variance == pytest.approx(separated_spread(4) ** 2)


def test_all_wrong_puts_the_boundary_at_the_top_and_one_correct_at_itself() -> None:
    assert fit_correctness([observation(0.9, False), observation(0.97, False)]).threshold == 1.0
    assert fit_correctness([observation(0.93, True)]).threshold == 0.93


def test_identical_similarities_with_both_labels_get_the_flattest_slope() -> None:
    fit = fit_correctness([observation(0.9, True), observation(0.9, False), observation(0.9, True)])

    assert not fit.separated
    assert fit.slope == DEFAULT_SETTINGS.min_slope
    assert fit.probability(0.9) == pytest.approx(2 / 3, abs=0.05)  # the share, at that similarity


def test_the_prior_counts_as_prior_weight_observations_at_most() -> None:
    observations = stream(3, 2000, low=0.6, noise=0.02)
    fit = fit_correctness(observations)
    prior = category_prior(observations)

    assert prior.spread == pytest.approx(math.sqrt(fit.threshold_variance * 2000 / DEFAULT_SETTINGS.prior_weight))
    assert category_prior([]).count == 0


# --- the entry's bound -------------------------------------------------------------------------


@untimed
@given(observation_sets, priors, similarities, st.sampled_from([0.0, 0.01, 0.05, 0.2, 0.5]), st.floats(0.0, 0.999))
def test_probabilities_stay_in_range(
    observations: list[Observation], prior: CategoryPrior, similarity: float, error_bound: float, rng_value: float
) -> None:
    decision = decide(observations, prior, similarity, error_bound=error_bound, floor=0.0, rng_value=rng_value)
    own = posterior(observations, prior)

    assert 0.0 <= decision.bound <= 1.0
    assert 0.0 <= decision.explore_probability <= 1.0
    assert all(0.0 <= own.bound_at(similarity, epsilon) <= 1.0 for epsilon in EPSILONS)
    low, high = own.interval(0.9)
    assert low <= high


@untimed
@given(observation_sets, priors, similarities, similarities)
def test_a_correct_observation_never_lowers_the_bound_and_a_wrong_one_never_raises_it(
    observations: list[Observation], prior: CategoryPrior, added: float, probe: float
) -> None:
    before = alpha(observations, prior, probe)

    assert alpha([*observations, observation(added, True)], prior, probe) >= before - TOLERANCE
    assert alpha([*observations, observation(added, False)], prior, probe) <= before + TOLERANCE


@untimed
@given(observation_sets, priors, similarities, similarities)
def test_the_bound_rises_with_similarity(
    observations: list[Observation], prior: CategoryPrior, first: float, second: float
) -> None:
    low, high = sorted((first, second))

    assert alpha(observations, prior, low) <= alpha(observations, prior, high) + TOLERANCE


@untimed
@given(observation_sets, priors)
def test_observations_never_widen_the_interval_beyond_the_priors(
    observations: list[Observation], prior: CategoryPrior
) -> None:
    """Each observation's likelihood is log-concave in t, so the posterior is the Gaussian prior
    times a log-concave function: by Caffarelli's contraction theorem a 1-Lipschitz image of the
    prior, and no interval of it is wider than the prior's. (A surprising observation can widen the
    interval of the posterior before it, so "more is narrower" holds only on average: the stream
    test below.)"""
    low, high = posterior(observations, prior, settings=VerifiedSettings(max_observations=200)).interval(0.9)

    # Plus one grid step (0.002) for the discretisation.
    assert high - low <= 2 * 1.6448536269514722 * prior.spread + 0.002


def test_a_stream_of_observations_narrows_the_interval() -> None:
    prior = CategoryPrior(slope=60.0, threshold=0.5, spread=1.0, count=1)
    observations = stream(4, 64, low=0.7, noise=0.0)

    intervals = [posterior(observations[:n], prior).interval(0.9) for n in (0, 4, 16, 64)]
    widths = [high - low for low, high in intervals]

    assert widths == sorted(widths, reverse=True)
    assert widths[-1] < 0.05


# --- the decision --------------------------------------------------------------------------------


@untimed
@given(observation_sets, priors, similarities, st.floats(0.0, 0.999))
def test_no_error_allowed_never_serves(
    observations: list[Observation], prior: CategoryPrior, similarity: float, rng_value: float
) -> None:
    decision = decide(observations, prior, similarity, error_bound=0.0, floor=0.0, rng_value=rng_value)

    assert decision.action == "refuse"


@untimed
@given(observation_sets, priors, similarities, st.floats(0.001, 0.5), st.floats(0.0, 0.999))
def test_a_bound_of_at_least_one_minus_delta_always_serves(
    observations: list[Observation], prior: CategoryPrior, similarity: float, error_bound: float, rng_value: float
) -> None:
    decision = decide(observations, prior, similarity, error_bound=error_bound, floor=0.0, rng_value=rng_value)

    if decision.bound >= 1.0 - error_bound:
        assert decision.action == "serve" and decision.explore_probability == 0.0
    else:
        assert decision.explore_probability > 0.0
        # Serving at all holds the bound: P(serve) · (1 - alpha) ≤ δ.
        assert (1.0 - decision.explore_probability) * (1.0 - decision.bound) <= error_bound + TOLERANCE


def test_below_the_floor_nothing_is_served_or_explored() -> None:
    prior = CategoryPrior(slope=100.0, threshold=0.5, spread=0.01, count=1000)

    decision = decide([], prior, 0.84, error_bound=0.05, floor=0.85, rng_value=0.999)

    assert decision.action == "refuse"
    assert decide([], prior, 0.86, error_bound=0.05, floor=0.85, rng_value=0.999).action == "serve"


@given(similarities, st.floats(0.0, 0.999))
def test_a_category_without_observations_explores_above_the_floor(similarity: float, rng_value: float) -> None:
    decision = decide([], category_prior([]), similarity, error_bound=0.05, floor=0.0, rng_value=rng_value)

    assert decision.action == "explore" and decision.explore_probability == 1.0


def test_an_entry_without_observations_decides_from_the_prior() -> None:
    prior = category_prior(stream(5, 2000, low=0.6, noise=0.01))

    high = decide([], prior, 0.97, error_bound=0.05, floor=0.8, rng_value=0.0)
    near = decide([], prior, 0.86, error_bound=0.05, floor=0.8, rng_value=0.5)

    assert high.action == "serve"
    assert near.action == "explore" and near.explore_probability > 0.9


def test_an_empty_prior_with_own_observations_uses_them_as_the_category() -> None:
    own = stream(6, 64, low=0.6, noise=0.0)

    assert decide(own, category_prior([]), 0.99, error_bound=0.05, floor=0.8, rng_value=0.5) == decide(
        own, category_prior(own), 0.99, error_bound=0.05, floor=0.8, rng_value=0.5
    )


def test_explore_probability_edges() -> None:
    assert explore_probability(0.0, 0.05) == pytest.approx(0.95)
    assert explore_probability(0.95, 0.05) == 0.0
    assert explore_probability(0.99, 0.0) == 1.0


def test_observations_are_bounded() -> None:
    kept: tuple[Observation, ...] = ()
    for index in range(10):
        kept = record(kept, observation(index / 10, True), cap=4)

    assert [item.similarity for item in kept] == [0.6, 0.7, 0.8, 0.9]


@pytest.mark.parametrize(
    ("name", "value"), [("prior_weight", 0.0), ("min_slope", 0.0), ("epsilons", ()), ("max_observations", 0)]
)
def test_settings_are_checked(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name.split("_", maxsplit=1)[0]):
        VerifiedSettings(**{name: value})  # type: ignore[arg-type]


def test_inputs_are_checked() -> None:
    prior = category_prior([])
    with pytest.raises(ValueError, match="similarity"):
        observation(1.5, True)
    with pytest.raises(ValueError, match="error_bound"):
        decide([], prior, 0.9, error_bound=1.0, floor=0.8, rng_value=0.5)
    with pytest.raises(ValueError, match="rng_value"):
        decide([], prior, 0.9, error_bound=0.05, floor=0.8, rng_value=1.0)


# --- simulated traffic ---------------------------------------------------------------------------


def run_entry(
    seed: int, steps: int, *, prior: CategoryPrior | None, error_bound: float, low: float = 0.8, noise: float = 0.01
) -> dict[str, float]:
    """One entry's traffic: queries at uniform similarity in [low, 1], correctness a step at 0.85 with
    `noise` flipped labels. Explorations are observed; `prior` None: the category is this entry's
    own observations (refitted every 20), as when it is the category's first entry."""
    rng = np.random.default_rng(seed)
    own: tuple[Observation, ...] = ()
    served = wrong = explored = high = high_served = 0
    first_serve_after: float = math.inf
    current = prior if prior is not None else category_prior([])
    for step in range(steps):
        similarity = float(rng.uniform(low, 1.0))
        correct = bool((similarity >= 0.85) != (rng.random() < noise))
        decision = decide(own, current, similarity, error_bound=error_bound, floor=low, rng_value=float(rng.random()))
        if decision.action == "explore":
            own = record(own, observation(similarity, correct), cap=DEFAULT_SETTINGS.max_observations)
            explored += 1
            if prior is None and explored % 20 == 0:
                current = category_prior(own)
        elif decision.action == "serve":
            served += 1
            wrong += not correct
            first_serve_after = min(first_serve_after, explored)
        if step >= steps // 2 and similarity >= 0.9:
            high += 1
            high_served += decision.action == "serve"
    return {"wrong_rate": wrong / steps, "served": served / steps, "served_above_0.9": high_served / max(high, 1),
            "explored": explored, "first_serve_after": first_serve_after}  # fmt: skip


def test_an_entry_learns_the_boundary_and_holds_the_error_bound() -> None:
    result = run_entry(7, 800, prior=None, error_bound=0.05)

    assert result["wrong_rate"] <= 0.05
    assert result["served_above_0.9"] >= 0.9
    assert result["explored"] < 400


def test_the_category_prior_lets_a_new_entry_serve_at_once() -> None:
    learnt = category_prior(stream(8, 2000, low=0.6, noise=0.01))

    with_prior = run_entry(9, 100, prior=learnt, error_bound=0.05, low=0.9)
    alone = run_entry(9, 100, prior=None, error_bound=0.05, low=0.9)

    assert with_prior["first_serve_after"] <= 2
    assert alone["first_serve_after"] > with_prior["first_serve_after"]
    assert with_prior["wrong_rate"] <= 0.05
