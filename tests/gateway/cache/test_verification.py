"""The verified-threshold state (gateway/cache/verification.py) over a real SQLite store: one state
read per lookup at most, observations appended and kept in memory, category pools restored at
start, the exploration budget, whose observations may move a shared prior."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.cache.verification import Verification, threshold_estimate
from gateway.config import VerifiedConfig
from gateway.metrics import Metrics
from gateway.stores import SqliteStore, pool_key
from policies.verified import CategoryPrior, Observation
from tests.doubles import FakeClock

pytestmark = pytest.mark.anyio


class CountingStore(SqliteStore):
    """The real store, counting its observation reads."""

    reads = 0

    async def observations_many(self, entry_ids: Sequence[str]) -> dict[str, list[Mapping[str, Any]]]:
        self.reads += 1
        return await super().observations_many(entry_ids)


def verification(store: SqliteStore, clock: FakeClock, **config: Any) -> Verification:
    settings = VerifiedConfig(enabled=True, **config)
    return Verification(store=store, config=settings, metrics=Metrics(), clock=clock, seed=1)


def correct(similarity: float) -> Observation:
    return Observation(similarity=similarity, correct=True)


async def test_observations_are_read_once_then_kept_in_memory(tmp_path: Path, clock: FakeClock) -> None:
    async with CountingStore(tmp_path / "c.db") as store:
        await store.append_observation("e1", {"format_version": 1, "similarity": 0.9, "correct": True})
        state = verification(store, clock)

        first = await state.observations(["e1", "e2"])
        again = await state.observations(["e1", "e2"])

        assert first == again == {"e1": (correct(0.9),), "e2": ()}
        assert store.reads == 1


async def test_a_recorded_observation_is_stored_and_in_force_at_once(tmp_path: Path, clock: FakeClock) -> None:
    async with CountingStore(tmp_path / "c.db") as store:
        state = verification(store, clock)
        await state.observations(["e1"])

        await state.record("e1", "default", correct(0.93), pooled=True, source="judge", error_bound=0.02)

        assert (await state.observations(["e1"]))["e1"] == (correct(0.93),)
        assert store.reads == 1  # updated in memory, not re-read
        stored = await store.observations_many(["e1", pool_key("default")])
        assert [record["source"] for record in stored["e1"]] == ["judge"]
        assert len(stored[pool_key("default")]) == 1


async def test_an_unpooled_observation_leaves_the_shared_prior_alone(tmp_path: Path, clock: FakeClock) -> None:
    async with SqliteStore(tmp_path / "c.db") as store:
        state = verification(store, clock, refit_every=1)

        await state.record("e1", "default", correct(0.9), pooled=False, source="judge", error_bound=0.02)

        assert state.prior("default").count == 0
        assert await store.observations(pool_key("default")) == []
        assert len(await store.observations("e1")) == 1


async def test_the_prior_is_refitted_every_n_and_restored_at_start(tmp_path: Path, clock: FakeClock) -> None:
    async with SqliteStore(tmp_path / "c.db") as store:
        state = verification(store, clock, refit_every=3)
        for similarity in (0.9, 0.8):
            await state.record("e1", "default", correct(similarity), pooled=True, source="judge", error_bound=0.02)
        assert state.prior("default").count == 0  # not yet refitted
        await state.record("e1", "default", Observation(similarity=0.6, correct=False), pooled=True,
                           source="judge", error_bound=0.02)  # fmt: skip
        fitted = state.prior("default")
        assert fitted.count == 3

        restarted = verification(store, clock)
        assert await restarted.restore({"default": 0.02, "other": 0.02}) == 3
        assert restarted.prior("default") == fitted
        assert restarted.estimates()["default"].threshold == threshold_estimate(fitted, error_bound=0.02)


async def test_the_budget_refills_over_a_minute(tmp_path: Path, clock: FakeClock) -> None:
    async with SqliteStore(tmp_path / "c.db") as store:
        state = verification(store, clock, explore_budget_per_minute=2)

        assert [state.take_budget("default") for _ in range(3)] == [True, True, False]
        clock.advance(30)
        assert [state.take_budget("default") for _ in range(2)] == [True, False]


async def test_only_trusted_tenants_move_the_shared_prior(tmp_path: Path, clock: FakeClock) -> None:
    async with SqliteStore(tmp_path / "c.db") as store:
        listed = Verification(store=store, config=VerifiedConfig(), metrics=Metrics(), clock=clock)
        everyone = Verification(store=store, config=VerifiedConfig(), metrics=Metrics(), clock=clock,
                                moves_thresholds="everyone")  # fmt: skip

        assert listed.moves_prior("tenant:team-a") and not listed.moves_prior("key:abc")
        assert everyone.moves_prior("key:abc")


def test_the_threshold_estimate_is_where_the_fit_reaches_one_minus_delta() -> None:
    prior = CategoryPrior(slope=30.0, threshold=0.8, spread=0.05, count=10)

    assert threshold_estimate(prior, error_bound=0.05) == pytest.approx(0.8 + 2.944 / 30, abs=1e-3)
    assert threshold_estimate(prior, error_bound=0.0) == 1.0
    assert threshold_estimate(CategoryPrior(slope=30.0, threshold=1.0, spread=1.0, count=0), error_bound=0.05) == 1.0
