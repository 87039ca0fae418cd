"""`semcache calibrate` on a small hand-written labelled set, with the real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embeddings import Embedder
from gateway.tools.calibrate import LabelledPair, calibrate, calibrated_thresholds, read_pairs, report
from gateway.tools.policy_file import threshold_value
from policies import parse_policy

SUBJECTS = ["Python lists", "the French revolution", "sourdough bread", "black holes", "tax returns",
            "marathon training", "the Roman empire", "house plants", "electric cars", "chess openings",
            "jazz piano", "climate change", "the stock market", "yoga for beginners", "machine learning",
            "coffee brewing", "the moon landing", "dog training", "solar panels", "Shakespeare"]  # fmt: skip


def write_pairs(path: Path) -> None:
    rows = []
    for i, subject in enumerate(SUBJECTS):
        rows.append({"a": f"Can you explain {subject} to me?", "b": f"Please explain {subject} to me.", "label": 1})
        other = SUBJECTS[(i + 7) % len(SUBJECTS)]
        rows.append({"a": f"Can you explain {subject} to me?", "b": f"What is a good book about {other}?", "label": 0})
    rows.append({"a": "x", "b": "y", "score": 3.0})  # between the bands: skipped
    path.write_text("\n".join(json.dumps(row) for row in rows))


def test_calibrate_finds_a_threshold_meeting_the_lower_bound(tmp_path: Path, real_embedder: Embedder) -> None:
    write_pairs(tmp_path / "pairs.jsonl")
    pairs = read_pairs(tmp_path / "pairs.jsonl")
    assert len(pairs) == 2 * len(SUBJECTS)
    policy = parse_policy({"categories": [{"name": "default", "similarity_threshold": 0.99}]})
    messages: list[str] = []

    result = calibrate(
        pairs, policy=policy, embedder=real_embedder, target_precision=0.8, confidence=0.9, progress=messages.append
    )

    found = result.thresholds["default"]
    assert found is not None
    assert found.precision_lower_bound >= 0.8
    assert found.hit_rate > 0.5
    assert messages  # progress was shown
    with (tmp_path / "out.txt").open("w") as out:
        snippet = report(result, target_precision=0.8, confidence=0.9, out=out)
    assert f"threshold {threshold_value(found.threshold):.4f} serves {found.hit_rate:.1%}" in snippet
    assert calibrated_thresholds(result) == {"default": found.threshold}


def test_an_impossible_target_gives_no_threshold(tmp_path: Path, real_embedder: Embedder) -> None:
    write_pairs(tmp_path / "pairs.jsonl")
    policy = parse_policy({"categories": [{"name": "default"}]})
    result = calibrate(
        read_pairs(tmp_path / "pairs.jsonl")[:6], policy=policy, embedder=real_embedder,
        target_precision=0.99, confidence=0.99, progress=lambda _: None,
    )  # fmt: skip
    assert result.thresholds["default"] is None
    best = result.best["default"]
    assert best is not None  # what these few pairs can promise instead
    assert 0 < best.precision_lower_bound < 0.99
    assert best.hit_rate > 0
    with (tmp_path / "out.txt").open("w") as out:
        text = report(result, target_precision=0.99, confidence=0.99, out=out)
    assert "target not reachable" in text
    assert f"lower bound {best.precision_lower_bound:.3f}" in text
    assert f"serving {best.hit_rate:.1%} of true duplicates" in text
    assert "--target-precision" in text


def test_the_best_reachable_threshold_maximises_the_lower_bound() -> None:
    import numpy as np

    from policies.calibration import best_reachable, calibrate_threshold, precision_lower_bound

    scores = np.array([0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92])
    labels = np.array([1, 1, 0, 1, 1, 1, 0, 0])
    best = best_reachable(scores, labels, confidence=0.9)
    assert best is not None
    cuts = [precision_lower_bound(int(labels[: i + 1].sum()), int((1 - labels[: i + 1]).sum()), 0.9) for i in range(8)]
    assert best.precision_lower_bound == pytest.approx(max(cuts))
    assert best.threshold == scores[int(np.argmax(cuts))]
    # At that bound as the target, the calibration finds a threshold.
    assert calibrate_threshold(scores, labels, target_precision=best.precision_lower_bound, confidence=0.9)
    assert best_reachable(scores, np.zeros(8), confidence=0.9) is None  # nothing true to serve


def test_a_calibrated_verifier_is_loaded_from_the_config(tmp_path: Path, real_embedder: Embedder) -> None:
    import asyncio
    from dataclasses import replace

    import pytest

    from gateway.cache.semantic_cache import SemanticCache
    from gateway.config import CacheConfig, GatewayConfig, StoreConfig
    from gateway.errors import ConfigError
    from policies.verifier import LogisticVerifier, fit_verifier, pair_features

    same = [("How do I reverse a list in Python?", "python: reverse a list", 0.98, 1),
            ("What was the price of gold in 2024?", "What was the price of gold in 2023?", 0.97, 0),
            ("Convert km to miles", "Convert miles to km", 0.99, 0),
            ("How can I improve my sleep?", "How can I improve the quality of my sleep?", 0.96, 1)] * 5  # fmt: skip
    features = [pair_features(a, b, s) for a, b, s, _ in same]
    import numpy as np

    verifier = fit_verifier(np.stack(features), np.array([label for *_, label in same], dtype=bool), floor=0.8, l2=1.0)
    (tmp_path / "verifier.json").write_text(verifier.to_json())
    config = GatewayConfig(
        cache=CacheConfig(store=StoreConfig(path=str(tmp_path / "cache.db"))), verifier=str(tmp_path / "verifier.json")
    )

    async def open_with(config: GatewayConfig) -> float:
        async with SemanticCache(config, embedder=real_embedder) as cache:
            loaded = cache._verifier
            assert isinstance(loaded, LogisticVerifier)
            return loaded.floor

    assert asyncio.run(open_with(config)) == 0.8
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError):
        asyncio.run(open_with(replace(config, verifier=str(tmp_path / "bad.json"))))


def test_pairs_the_model_must_truncate_are_left_out(tmp_path: Path, real_embedder: Embedder) -> None:
    write_pairs(tmp_path / "pairs.jsonl")
    pairs = read_pairs(tmp_path / "pairs.jsonl")
    long = "Please summarise this report: " + " ".join(["the quarterly figures rose again"] * 120)
    pairs.append(LabelledPair(a=long, b=long + " Thanks.", same=True))
    policy = parse_policy({"categories": [{"name": "default"}]})
    messages: list[str] = []

    result = calibrate(
        pairs, policy=policy, embedder=real_embedder, target_precision=0.8, confidence=0.9, progress=messages.append
    )

    assert "left out 1 pairs with a text longer than the model's window" in messages
    assert result.pairs_per_category["default"] == len(pairs) - 1
