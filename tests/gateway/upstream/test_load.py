"""Live load of one deployment, with an injected clock."""

from __future__ import annotations

import pytest

from gateway.upstream.load import LoadSettings, LoadTracker, outcome_of
from tests.doubles import FakeClock


def tracker(clock: FakeClock, **settings: float | int | None) -> LoadTracker:
    return LoadTracker(LoadSettings(**{"capacity": 4, "cooldown_s": 5.0, "window_s": 30.0, **settings}), clock=clock)  # type: ignore[arg-type]


def test_in_flight_calls_count_against_capacity() -> None:
    load = tracker(FakeClock())
    for _ in range(3):
        load.begin()
    assert load.load() == pytest.approx(0.75)
    load.end(status=None, latency_s=0.1)
    assert load.in_flight == 2
    assert load.load() == pytest.approx(0.5)


def test_latency_is_a_true_moving_average_and_goes_stale_without_calls() -> None:
    clock = FakeClock()
    load = tracker(clock, target_latency_s=1.0, alpha=0.5)
    for latency_s in (1.0, 3.0, 3.0, 3.0):  # each new sample counts, not only the first ones
        load.begin()
        load.end(status=None, latency_s=latency_s)
    assert load.ewma_latency_s == pytest.approx(2.75)
    assert load.load() == pytest.approx(2.75)  # latency against its target
    clock.advance(31)
    assert load.sample().ewma_latency_s is None  # nothing refreshed it: not a load signal any more
    assert load.load() == 0.0


def test_time_to_first_token_is_tracked_for_streams() -> None:
    load = tracker(FakeClock())
    load.begin()
    load.end(status=None, latency_s=0.2, first_byte=True)
    assert load.ewma_ttft_s == pytest.approx(0.2)
    assert load.ewma_latency_s == pytest.approx(0.2)


def test_refusals_and_failures_cool_it_down_and_raise_the_error_rate_for_a_window() -> None:
    clock = FakeClock()
    load = tracker(clock)
    for status in (None, None, None, 429):
        load.begin()
        load.end(status=status, latency_s=0.1)
    assert not load.healthy()
    assert load.error_rate() == pytest.approx(0.25)
    assert load.load() == pytest.approx(1.25)  # 25 % refused is past the 20 % taken as capacity
    clock.advance(5)
    assert load.healthy()
    clock.advance(26)
    assert load.error_rate() == 0.0


def test_a_callers_own_mistake_says_nothing_about_the_deployment() -> None:
    load = tracker(FakeClock())
    load.begin()
    load.end(status=400, latency_s=0.1)
    assert load.healthy()
    assert load.error_rate() == 0.0
    assert [outcome_of(s) for s in (None, 400, 404, 429, 500, 502, 503, 504)] == [
        "ok", "ok", "ok", "rate-limited", "failed", "failed", "failed", "timeout"
    ]  # fmt: skip


def test_tokens_of_the_last_minute_against_a_budget() -> None:
    clock = FakeClock()
    load = tracker(clock, tokens_per_minute=1000)
    load.begin()
    load.end(status=None, latency_s=0.1, tokens=600)
    clock.advance(30)
    load.begin()
    load.end(status=None, latency_s=0.1, tokens=300)
    assert load.tokens_last_minute() == 900
    assert load.load() == pytest.approx(0.9)
    clock.advance(31)
    assert load.tokens_last_minute() == 300
