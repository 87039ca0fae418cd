"""The rules in force for one request: a pure function, so its invariants are properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies import Bounds, Category
from policies.load import Pressure, PressureSettings, update_pressure
from policies.rules import rules_for

unit = st.floats(min_value=0.01, max_value=1.0, allow_nan=False)


@st.composite
def categories(draw: st.DrawFn) -> Category:
    threshold = draw(unit)
    floor = draw(st.none() | st.floats(min_value=0.0, max_value=threshold, exclude_max=True))
    return Category(
        name="c", keywords=("c",), similarity_threshold=threshold, near_miss_floor=floor,
        ttl_s=draw(st.floats(min_value=1, max_value=1e6)),
    )  # fmt: skip


@given(categories(), unit, st.none() | unit, st.none() | st.floats(min_value=0.001, max_value=1e7))
def test_a_request_can_only_make_its_rules_stricter(
    category: Category, in_force: float, requested: float | None, ttl_s: float | None
) -> None:
    threshold = max(in_force, category.similarity_threshold)
    rules = rules_for(category, threshold=threshold, requested_threshold=requested, requested_ttl_s=ttl_s)

    assert rules.hit_threshold >= threshold
    assert requested is None or rules.hit_threshold >= requested
    assert rules.ttl_s <= category.ttl_s
    assert ttl_s is None or rules.ttl_s <= ttl_s
    # The band lies below the threshold in force, or there is none.
    assert rules.near_miss_floor is None or rules.near_miss_floor < rules.hit_threshold
    for similarity in (0.0, 0.5, rules.hit_threshold, 1.0):
        assert not (rules.is_hit(similarity) and rules.is_near_miss(similarity))


def test_the_band_closes_when_feedback_raises_the_threshold_above_nothing_but_keeps_its_floor() -> None:
    category = Category(name="c", keywords=("c",), similarity_threshold=0.9, near_miss_floor=0.8, ttl_s=100)

    assert rules_for(category, threshold=0.9).near_miss_floor == 0.8
    assert rules_for(category, threshold=0.95).near_miss_floor == 0.8  # wider band, same floor
    assert rules_for(category, threshold=0.9, requested_threshold=0.97).hit_threshold == 0.97
    assert rules_for(category, threshold=0.9, requested_ttl_s=1000).ttl_s == 100
    assert rules_for(category, threshold=0.9, requested_ttl_s=10).ttl_s == 10


@st.composite
def bounded_categories(draw: st.DrawFn) -> Category:
    threshold = draw(st.floats(min_value=0.2, max_value=1.0))
    min_threshold = draw(st.none() | st.floats(min_value=0.1, max_value=threshold))
    ttl_s = draw(st.floats(min_value=1, max_value=1e6))
    max_ttl_s = draw(st.none() | st.floats(min_value=ttl_s, max_value=1e7))
    return Category(
        name="c", keywords=("c",), similarity_threshold=threshold, ttl_s=ttl_s,
        bounds=Bounds(min_threshold=min_threshold, max_ttl_s=max_ttl_s),
    )  # fmt: skip


@given(
    bounded_categories(),
    st.lists(st.floats(min_value=0.0, max_value=5.0) | st.just(float("inf")), max_size=40),
    st.floats(0.1, 0.95),
)
def test_under_any_load_sequence_threshold_and_ttl_stay_within_the_bounds(
    category: Category, sequence: list[float], watermark: float
) -> None:
    settings = PressureSettings(watermark=watermark, full_at=watermark + 0.3)
    pressure = Pressure()
    for load in sequence:
        pressure = update_pressure(pressure, load, settings)
        rules = rules_for(category, threshold=category.similarity_threshold, pressure=pressure.value)
        assert category.min_threshold <= rules.hit_threshold <= category.similarity_threshold
        assert category.ttl_s <= rules.ttl_s <= category.max_ttl_s
        if category.bounds == Bounds():
            assert (rules.hit_threshold, rules.ttl_s) == (category.similarity_threshold, category.ttl_s)


def test_full_pressure_reaches_the_bounds_and_none_leaves_the_configured_values() -> None:
    category = Category(name="c", keywords=("c",), similarity_threshold=0.9, ttl_s=100,
                        bounds=Bounds(min_threshold=0.8, max_ttl_s=300))  # fmt: skip

    assert rules_for(category, threshold=0.9, pressure=0.0).hit_threshold == 0.9
    assert rules_for(category, threshold=0.9, pressure=1.0).hit_threshold == pytest.approx(0.8)
    assert rules_for(category, threshold=0.9, pressure=0.5).hit_threshold == pytest.approx(0.85)
    assert rules_for(category, threshold=0.9, pressure=1.0).ttl_s == pytest.approx(300)
    assert rules_for(category, threshold=0.9, pressure=7.0).ttl_s == pytest.approx(300)  # clipped
