"""`semcache calibrate` on a small hand-written labelled set, with the real model."""

from __future__ import annotations

import json
from pathlib import Path

from embeddings import Embedder
from gateway.calibrate import calibrate, read_pairs, report
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
    assert "similarity_threshold" in snippet


def test_an_impossible_target_gives_no_threshold(tmp_path: Path, real_embedder: Embedder) -> None:
    write_pairs(tmp_path / "pairs.jsonl")
    policy = parse_policy({"categories": [{"name": "default"}]})
    result = calibrate(
        read_pairs(tmp_path / "pairs.jsonl")[:6], policy=policy, embedder=real_embedder,
        target_precision=0.99, confidence=0.99, progress=lambda _: None,
    )  # fmt: skip
    assert result.thresholds["default"] is None
