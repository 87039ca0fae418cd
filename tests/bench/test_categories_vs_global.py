"""bench/categories_vs_global.py on a tiny synthetic workload, no model and no shared data: the
tuning (global vs per category, with its fallback), the policy the thresholds are written into, the
measurement through the real engine and store, and the report."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest

import bench.categories_vs_global as bench
from bench.quality import MemoEmbedder, Pair, duplicate_groups
from embeddings import EmbeddedText
from policies import Bounds, parse_policy
from policies.calibration import CalibrationResult

# Per half: "tight" pairs whose non-duplicates sit just under their duplicates (dense), "loose"
# pairs whose duplicates sit well under the tight non-duplicates (sparse), and a non-cacheable one.
TIGHT_DUPLICATE, TIGHT_OTHER, LOOSE_OTHER = 0.97, 0.90, 0.50
PER_KIND = 6


class NoModel:
    """Every text is in the MemoEmbedder's table beforehand: the model is never asked."""

    def __init__(self, dimension: int) -> None:
        self._dimension = dimension

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def name(self) -> str:
        return "synthetic"

    def embed(self, texts: list[str]) -> list[EmbeddedText]:
        raise AssertionError(f"not in the table: {texts}")


def loose_duplicate(half: str, number: int) -> float:
    # Interleaved between the halves, so each half's lowest duplicate is not the other's.
    return 0.84 + 0.01 * number + (0.005 if half == "B" else 0.0)


def workload() -> tuple[dict[str, list[Pair]], MemoEmbedder]:
    """Each pair on two axes of its own: similarity exactly as chosen, 0 to every other text."""
    specs: list[tuple[str, str, str, float, int]] = []
    for half in ("A", "B"):
        for number in range(PER_KIND):
            specs += [
                (half, "alpha", f"dup{number}", TIGHT_DUPLICATE, 1),
                (half, "alpha", f"other{number}", TIGHT_OTHER, 0),
                (half, "beta", f"dup{number}", loose_duplicate(half, number), 1),
                (half, "beta", f"other{number}", LOOSE_OTHER, 0),
            ]
        specs.append((half, "weather", "dup", 0.99, 1))
    dimension = 2 * len(specs)
    memo = MemoEmbedder(NoModel(dimension))
    halves: dict[str, list[Pair]] = {"A": [], "B": []}
    for axis, (half, keyword, tag, similarity, label) in enumerate(specs):
        a, b = np.zeros(dimension, np.float32), np.zeros(dimension, np.float32)
        a[2 * axis] = 1.0
        b[2 * axis], b[2 * axis + 1] = similarity, math.sqrt(1 - similarity**2)
        pair = Pair(f"{keyword} stored {half} {tag}", f"{keyword} asked {half} {tag}", label)
        memo.table[pair.a] = EmbeddedText(vector=a, truncated=False)
        memo.table[pair.b] = EmbeddedText(vector=b, truncated=False)
        halves[half].append(pair)
    return halves, memo


POLICY = parse_policy(
    {
        "categories": [
            {"name": "realtime", "cacheable": False, "keywords": ["weather"]},
            {"name": "tight", "keywords": ["alpha"], "similarity_threshold": 0.99, "near_miss_floor": 0.9,
             "bounds": {"min_threshold": 0.98}, "max_entries": 2},
            {"name": "loose", "keywords": ["beta"], "max_entries": 2},
            {"name": "default"},
        ]
    }
)  # fmt: skip


def test_category_thresholds_serve_the_sparse_category_that_one_global_threshold_cannot(tmp_path: Path) -> None:
    halves, memo = workload()
    active = bench.activate(POLICY, memo)
    pairs = [pair for half in halves.values() for pair in half]
    category_of = bench.classify_stored_sides(active, memo, pairs)

    directions = asyncio.run(
        bench.run_directions(
            active, memo, halves, category_of, targets=[0.9], confidence=0.5, min_pairs=4, folder=tmp_path
        )
    )

    assert [(d.tune_half, d.test_half) for d in directions] == [("A", "B"), ("B", "A")]
    for direction in directions:
        (tuning,) = direction.tunings
        assert tuning.tune_pairs == {"tight": (12, 6), "loose": (12, 6), "default": (0, 0)}
        assert tuning.disagreements == {}
        # Pooled, the tight non-duplicates at 0.90 keep one threshold above every loose duplicate.
        assert tuning.overall is not None
        assert tuning.overall.threshold == pytest.approx(TIGHT_DUPLICATE, abs=1e-6)
        aware = tuning.thresholds(bench.AWARE)
        assert aware["tight"] == pytest.approx(TIGHT_DUPLICATE, abs=1e-6)
        assert aware["loose"] < TIGHT_OTHER
        assert aware["default"] == tuning.overall.threshold
        assert tuning.policies[bench.AWARE]["default"].how == "fallback to global (0 < 4 pairs)"
        assert tuning.thresholds(bench.GLOBAL) == dict.fromkeys(aware, tuning.overall.threshold)
        test = halves[direction.test_half]
        tallies = {
            name: bench.by_category(test, direction.measured[(0.9, name)].per_pair, category_of, ["tight", "loose"])
            for name in bench.POLICIES
        }
        for name in bench.POLICIES:
            assert tallies[name]["tight"].hit_rate == 1.0
            assert tallies[name]["all"].wrong_hits == 0
        assert tallies[bench.GLOBAL]["loose"].right_hits == 0
        assert tallies[bench.AWARE]["loose"].hit_rate >= (PER_KIND - 1) / PER_KIND
        assert tallies[bench.AWARE]["all"].positives == 2 * PER_KIND  # realtime is left out

    report = bench.direction_tables(directions[0], halves, category_of, duplicate_groups(pairs))
    assert any(line.startswith("| loose | 12 (6) | global | 0.9700 | calibrated on all | 0.000 |") for line in report)
    assert bench.calibration_table(directions)[0] == "### Calibration on the tune halves"
    summary = bench.summary_table(directions, halves, category_of, duplicate_groups(pairs))
    assert [line.split(" | ")[2] for line in summary[4:7]] == list(bench.POLICIES)


def test_written_policy_keeps_the_classifier_inputs_and_drops_what_could_refuse_a_threshold() -> None:
    written = bench.bench_policy(POLICY, {"tight": 0.85})

    tight = written.category("tight")
    assert tight.similarity_threshold == 0.85  # below the file's bounds and near-miss floor: valid here
    assert (tight.near_miss_floor, tight.bounds, tight.max_entries) == (None, Bounds(), bench.NO_EVICTION)
    assert tight.keywords == ("alpha",)
    assert written.category("loose").similarity_threshold == POLICY.category("loose").similarity_threshold
    assert written.category("realtime").cacheable is False


def test_exemplars_are_added_to_the_mapped_categories_only() -> None:
    policy = parse_policy({"categories": [{"name": "code", "exemplars": ["How do I sort a list?"]}]})
    queries = {"code": ["q1", "q2", "q3"], "finance": ["f1"], "factual": ["x"]}

    added = bench.with_exemplars(policy, queries, 2)

    assert added.category("code").exemplars == ("How do I sort a list?", "q1", "q2")
    assert added.category("default").exemplars == ()
    assert bench.with_exemplars(policy, queries, 0) == policy


def test_small_categories_fall_back_to_the_global_threshold() -> None:
    def result(threshold: float) -> CalibrationResult:
        return CalibrationResult(threshold=threshold, hit_rate=0.5, precision=0.96, precision_lower_bound=0.95,
                                 n=200, true_hits=96, false_hits=4)  # fmt: skip

    chosen = bench.choose(
        result(0.93), {"big": result(0.88), "small": result(0.7), "strict": None}, {"big": 500, "small": 20,
        "strict": 300}, min_pairs=100,
    )  # fmt: skip

    assert {name: choice.threshold for name, choice in chosen[bench.GLOBAL].items()} == dict.fromkeys(
        chosen[bench.GLOBAL], 0.93
    )
    aware, hybrid = chosen[bench.AWARE], chosen[bench.AWARE_ELSE_GLOBAL]
    assert aware["big"] == hybrid["big"] == bench.Choice(0.88, "own calibration")
    assert aware["small"] == hybrid["small"] == bench.Choice(0.93, "fallback to global (20 < 100 pairs)")
    assert aware["strict"] == bench.Choice(bench.EXACT_ONLY, "none qualifies: exact only")
    assert hybrid["strict"] == bench.Choice(0.93, "none qualifies: global")
    nothing = bench.choose(None, {"big": None}, {"big": 500}, 100)
    assert {policy: chosen["big"].threshold for policy, chosen in nothing.items()} == dict.fromkeys(
        bench.POLICIES, bench.EXACT_ONLY
    )


def test_without_the_shared_data_it_says_so_and_exits_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(bench, "DATA", tmp_path / "absent")

    assert bench.main([]) == 0
    assert "is absent" in capsys.readouterr().out
