"""Load figures and the pressure they put on the rules: pure, so the invariants are properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.load import ERROR_RATE_AT_CAPACITY, LoadSample, Pressure, PressureSettings, load_of, update_pressure

loads = st.floats(min_value=0.0, max_value=5.0, allow_nan=False)


@st.composite
def pressure_settings(draw: st.DrawFn, min_hysteresis: float = 0.0) -> PressureSettings:
    watermark = draw(st.floats(min_value=0.1, max_value=0.95))
    full_at = draw(st.floats(min_value=watermark + 0.01, max_value=2.0))
    return PressureSettings(watermark=watermark, full_at=full_at, hysteresis=draw(st.floats(min_hysteresis, 0.2)))


@st.composite
def samples(draw: st.DrawFn) -> LoadSample:
    capacity = draw(st.integers(1, 1000))
    return LoadSample(
        in_flight=draw(st.integers(0, 3 * capacity)),
        capacity=capacity,
        tokens_last_minute=draw(st.integers(0, 10**7)),
        tokens_per_minute=draw(st.none() | st.integers(1, 10**7)),
        ewma_latency_s=draw(st.none() | st.floats(0, 100)),
        target_latency_s=draw(st.none() | st.floats(0.001, 100)),
        error_rate=draw(st.floats(0, 1)),
    )


@given(samples())
def test_load_is_the_tightest_ratio_to_capacity(sample: LoadSample) -> None:
    load = load_of(sample)

    assert load >= 0
    assert load >= sample.in_flight / sample.capacity
    assert load >= sample.error_rate / ERROR_RATE_AT_CAPACITY
    if sample.tokens_per_minute:
        assert load >= sample.tokens_last_minute / sample.tokens_per_minute


def test_an_idle_deployment_has_no_load_and_a_full_one_is_at_one() -> None:
    assert load_of(LoadSample(in_flight=0, capacity=8)) == 0.0
    assert load_of(LoadSample(in_flight=8, capacity=8)) == 1.0
    assert load_of(LoadSample(in_flight=1, capacity=8, ewma_latency_s=2.0, target_latency_s=1.0)) == 2.0
    assert load_of(LoadSample(in_flight=0, capacity=8, error_rate=ERROR_RATE_AT_CAPACITY)) == 1.0


@given(pressure_settings(), st.lists(loads | st.just(float("inf")), max_size=60))
def test_pressure_stays_in_the_unit_interval_for_any_load_sequence(
    settings: PressureSettings, sequence: list[float]
) -> None:
    pressure = Pressure()
    for load in sequence:
        pressure = update_pressure(pressure, load, settings)
        assert 0.0 <= pressure.value <= 1.0
        if load < settings.watermark - settings.hysteresis:
            assert pressure == Pressure()  # well below the watermark nothing moves
        if load >= settings.full_at:
            assert pressure.value == 1.0


@given(pressure_settings(min_hysteresis=0.01), st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=60))
def test_pressure_does_not_flap_around_the_watermark(settings: PressureSettings, jitter: list[float]) -> None:
    """Once engaged, a load within the hysteresis band around the watermark never lets go, and
    pressure never falls by a step smaller than the hysteresis."""
    pressure = update_pressure(Pressure(), settings.watermark, settings)
    assert pressure.engaged
    for unit in jitter:
        load = settings.watermark + unit * settings.hysteresis * 0.99
        after = update_pressure(pressure, load, settings)
        assert after.engaged
        if after.value < pressure.value:
            assert pressure.value - after.value > settings.hysteresis
        pressure = after


def test_pressure_rises_linearly_and_lets_go_below_the_band() -> None:
    settings = PressureSettings(watermark=0.6, full_at=1.0, hysteresis=0.05)
    assert update_pressure(Pressure(), 0.59, settings) == Pressure()
    half = update_pressure(Pressure(), 0.8, settings)
    assert half.value == pytest.approx(0.5)
    assert update_pressure(half, 0.78, settings).value == pytest.approx(0.5)  # a small dip holds
    assert update_pressure(half, 0.6, settings).value == pytest.approx(0.0)
    assert update_pressure(half, 0.6, settings).engaged
    assert update_pressure(half, 0.54, settings) == Pressure()


def test_full_at_must_be_above_the_watermark() -> None:
    with pytest.raises(ValueError, match="above the watermark"):
        PressureSettings(watermark=0.9, full_at=0.9)
