"""The feedback controller: bad ratings tighten a category's threshold by bounded steps towards the
safe threshold, good ones relax it slowly, always within [floor, ceiling], holding a target error
rate among rated hits. Most tests here lift the step bound (`max_step=1`) to check the rule itself;
the bound has tests of its own."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from policies.calibration import precision_lower_bound
from policies.feedback import ControllerSettings, Rating, ThresholdState, rate, safe_threshold

SETTINGS = ControllerSettings(max_step=1.0)
BOUNDED = ControllerSettings()  # the default step bound: 0.01
FLOOR = 0.85


def rated(state: ThresholdState, similarity: float, *, good: bool, floor: float = FLOOR,
          ceiling: float = 1.0, settings: ControllerSettings = SETTINGS) -> ThresholdState:  # fmt: skip
    return rate(state, Rating(similarity=similarity, good=good), floor=floor, ceiling=ceiling,
                target_error_rate=0.05, settings=settings)  # fmt: skip


def effective(state: ThresholdState, *, floor: float = FLOOR, ceiling: float = 1.0) -> float:
    return state.effective(floor=floor, ceiling=ceiling)


def test_without_ratings_the_configured_threshold_holds() -> None:
    assert effective(ThresholdState()) == FLOOR


def test_good_ratings_alone_never_move_it() -> None:
    state = ThresholdState()
    for similarity in (0.86, 0.9, 0.99, 1.0):
        state = rated(state, similarity, good=True)
    assert effective(state) == FLOOR
    assert state.threshold is None  # at the floor: a reloaded floor applies as it is
    assert effective(state, floor=0.8) == 0.8


def test_one_bad_hit_stops_its_similarity_from_being_served() -> None:
    state = rated(ThresholdState(), 0.91, good=False)

    assert effective(state) == 0.9101
    assert state.bad == 1


def test_one_bad_rating_moves_the_threshold_by_at_most_the_step() -> None:
    state = rated(ThresholdState(), 0.91, good=False, settings=BOUNDED)

    assert effective(state) == pytest.approx(FLOOR + BOUNDED.max_step)


def test_repeated_bad_ratings_still_reach_the_safe_threshold_a_step_at_a_time() -> None:
    thresholds = [effective(ThresholdState())]
    state = ThresholdState()
    for _ in range(20):
        state = rated(state, 0.91, good=False, settings=BOUNDED)
        thresholds.append(effective(state))

    steps = [after - before for before, after in itertools.pairwise(thresholds)]
    assert all(0 <= step <= BOUNDED.max_step + 1e-9 for step in steps)
    assert thresholds[-1] == 0.9101  # where the unbounded rule jumps at once
    assert thresholds.index(0.9101) == 7  # 0.85 + 6 steps of 0.01, then the rest of the way


@given(
    max_step=st.floats(min_value=0.001, max_value=1.0),
    sequence=st.lists(st.tuples(st.floats(0.0, 1.0), st.booleans()), max_size=30),
)
def test_no_rating_raises_a_threshold_by_more_than_the_step(
    max_step: float, sequence: list[tuple[float, bool]]
) -> None:
    settings = ControllerSettings(max_step=max_step)
    state = ThresholdState()
    for similarity, good in sequence:
        after = rated(state, similarity, good=good, settings=settings)
        assert effective(after) - effective(state) <= max_step + 1e-9
        state = after


def test_a_bad_hit_below_the_threshold_in_force_changes_nothing() -> None:
    state = rated(ThresholdState(), 0.95, good=False)
    before = effective(state)

    assert effective(rated(state, 0.92, good=False)) == before


def test_the_ceiling_caps_tightening() -> None:
    state = rated(ThresholdState(), 0.97, good=False, ceiling=0.95)

    assert effective(state, ceiling=0.95) == 0.95


def test_one_bad_hit_among_many_good_ones_is_within_the_target() -> None:
    state = ThresholdState()
    for _ in range(40):
        state = rated(state, 0.9, good=True)

    state = rated(state, 0.9, good=False)  # 1 in 41: not shown to be above 5 %

    assert effective(state) == FLOOR


def test_bad_hits_that_show_a_problem_tighten_to_the_safe_threshold() -> None:
    state = ThresholdState()
    for _ in range(10):
        state = rated(state, 0.96, good=True)
    state = rated(state, 0.87, good=False)
    assert effective(state) == FLOOR  # 1 bad in 11: not shown to be above 5 %

    state = rated(state, 0.88, good=False)  # 2 in 12 is: and everything above them was good
    assert effective(state) == 0.8801

    tightened = effective(state)
    state = rated(state, 0.89, good=False)  # 1 bad in 11 at or above the threshold in force: holds
    assert effective(state) == tightened


def test_a_handful_of_good_ratings_does_not_undo_a_bad_one() -> None:
    state = rated(ThresholdState(), 0.9, good=False)
    tightened = effective(state)
    for _ in range(20):
        state = rated(state, 0.95, good=True)

    # 1 bad in 21: the error rate's upper bound is far above 5 %.
    assert effective(state) == tightened


def test_enough_good_ratings_relax_it_step_by_step_down_to_the_floor() -> None:
    state = rated(ThresholdState(), 0.9, good=False)
    thresholds = [effective(state)]
    for _ in range(400):
        state = rated(state, 0.95, good=True)
        thresholds.append(effective(state))

    steps = [before - after for before, after in itertools.pairwise(thresholds)]
    assert all(0 <= step <= SETTINGS.relax_step + 1e-12 for step in steps)  # never up, never fast
    assert thresholds[-1] == FLOOR
    assert sum(step > 0 for step in steps) >= (0.9 - FLOOR) / SETTINGS.relax_step  # many small steps


def test_the_safe_threshold_is_the_lowest_whose_error_bound_meets_the_target() -> None:
    # 1 bad at 0.88 among 200 good above 0.9: cutting at the floor serves 1 bad in 201 — within 5 %.
    ratings = [Rating(similarity=0.88, good=False)] + [Rating(similarity=0.95, good=True)] * 200
    assert safe_threshold(ratings, floor=FLOOR, ceiling=1.0, target_error_rate=0.05, confidence=0.95) == FLOOR
    # Ten bad ones at 0.88 are not: the lowest safe cut is just above them.
    ratings += [Rating(similarity=0.88, good=False)] * 9
    cut = safe_threshold(ratings, floor=FLOOR, ceiling=1.0, target_error_rate=0.05, confidence=0.95)
    assert cut == 0.8801


def test_ties_are_served_together() -> None:
    # A good and a bad at the same similarity: no threshold serves one without the other.
    ratings = [Rating(similarity=0.9, good=True), Rating(similarity=0.9, good=False)]
    assert safe_threshold(ratings, floor=FLOOR, ceiling=1.0, target_error_rate=0.05, confidence=0.95) > 0.9


def test_ratings_below_the_floor_are_ignored() -> None:
    ratings = [Rating(similarity=0.5, good=False)]
    assert safe_threshold(ratings, floor=FLOOR, ceiling=1.0, target_error_rate=0.05, confidence=0.95) == FLOOR


def test_the_window_keeps_the_most_recent_ratings() -> None:
    settings = ControllerSettings(window=3)
    state = ThresholdState()
    for similarity in (0.9, 0.91, 0.92, 0.93):
        state = rated(state, similarity, good=True, settings=settings)
    assert [rating.similarity for rating in state.ratings] == [0.91, 0.92, 0.93]


def test_it_holds_the_target_error_rate_on_a_simulated_stream() -> None:
    """Hits are served at or above the threshold in force and rated; a hit below 0.9 is wrong,
    and 2 % of all answers are wrong anyway (half the hits the floor would serve are wrong). The
    controller settles at the true boundary, and the error rate of what it serves near 5 %."""
    rng = random.Random(2)
    floor, state, served = 0.8, ThresholdState(), []
    for _ in range(6000):
        similarity = rng.uniform(floor, 1.0)
        if similarity < effective(state, floor=floor):
            continue
        bad = similarity < 0.9 or rng.random() < 0.02
        served.append(bad)
        state = rated(state, similarity, good=not bad, floor=floor, settings=BOUNDED)

    assert len(served) > 2000
    assert sum(served) / len(served) <= 0.075
    assert 0.88 <= effective(state, floor=floor) <= 0.91


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"confidence": 1.0}, "confidence"),
        ({"confidence": 0.4}, "confidence"),
        ({"relax_step": -0.1}, "relax_step"),
        ({"window": 0}, "window"),
    ],
)
def test_settings_are_checked(fields: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ControllerSettings(**fields)  # type: ignore[arg-type]


def test_a_similarity_must_be_one() -> None:
    with pytest.raises(ValueError, match="similarity"):
        Rating(similarity=1.2, good=True)


def test_the_target_must_be_an_error_rate() -> None:
    with pytest.raises(ValueError, match="target_error_rate"):
        safe_threshold([], floor=FLOOR, ceiling=1.0, target_error_rate=0.0, confidence=0.95)


ratings = st.lists(
    st.tuples(st.floats(min_value=0.0, max_value=1.0, allow_nan=False), st.booleans()), min_size=1, max_size=60
)
unit = st.floats(min_value=0.01, max_value=1.0, allow_nan=False)


@given(ratings, unit, unit, st.sampled_from([0.0, 0.005, 0.05]))
def test_any_feedback_keeps_the_threshold_within_its_bounds(
    sequence: list[tuple[float, bool]], floor: float, ceiling: float, relax_step: float
) -> None:
    settings = ControllerSettings(relax_step=relax_step, window=1000)
    state = ThresholdState()
    for similarity, good in sequence:
        before = effective(state, floor=floor, ceiling=ceiling)
        state = rated(state, similarity, good=good, floor=floor, ceiling=ceiling, settings=settings)
        after = effective(state, floor=floor, ceiling=ceiling)
        assert floor <= after <= max(floor, ceiling)
        if good:
            assert before - relax_step - 1e-12 <= after <= before  # relaxes slowly, never tightens
        else:
            assert after >= before  # never relaxes
    if all(good for _, good in sequence):
        assert effective(state, floor=floor, ceiling=ceiling) == floor


@given(ratings, unit, st.floats(min_value=0.0, max_value=0.999, allow_nan=False))
def test_a_first_bad_rating_stops_its_similarity_from_being_served(
    sequence: list[tuple[float, bool]], floor: float, similarity: float
) -> None:
    state = ThresholdState()
    for earlier, good in sequence:
        state = rated(state, earlier, good=good, floor=floor)
    fresh = ThresholdState(threshold=state.threshold)  # the threshold they led to, without them
    served_at = max(similarity, effective(fresh, floor=floor))
    assume(served_at < 1.0)  # nothing is above 1.0: there the entry's removal is all a rating can do

    after = rated(fresh, served_at, good=False, floor=floor)

    assert effective(after, floor=floor) > served_at


@given(ratings, unit)
def test_the_safe_threshold_is_within_bounds_and_leaves_no_unbounded_bad_hit(
    sequence: list[tuple[float, bool]], floor: float
) -> None:
    ratings = [Rating(similarity=similarity, good=good) for similarity, good in sequence]
    safe = safe_threshold(ratings, floor=floor, ceiling=1.0, target_error_rate=0.05, confidence=0.95)
    assert floor <= safe <= 1.0
    served = [rating for rating in ratings if rating.similarity >= safe]
    bad = sum(not rating.good for rating in served)
    if bad and safe < 1.0:
        assert 1 - precision_lower_bound(len(served) - bad, bad, 0.95) <= 0.05
