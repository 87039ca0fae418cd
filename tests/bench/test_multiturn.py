"""bench/multiturn.py through the real lookup path: on a few hand-written conversations (always),
and on the shared follow-up data when it is here (each follow-up in its own context and the five
contexts whose follow-ups are nearest to it, where a leak would be likeliest)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import bench.multiturn as bench
from embeddings import Embedder

HAND_WRITTEN = [
    bench.Conversation(main_query="How do I reverse a list in Python?", main_response="Use reversed(xs).",
                       follow_up="Can you give an example?", follow_up_response="reversed([1, 2]) gives 2, 1."),
    bench.Conversation(main_query="What causes the seasons?", main_response="The tilt of Earth's axis.",
                       follow_up="Can you give an example?", follow_up_response="June is summer in the north."),
    bench.Conversation(main_query="Explain a hash map.", main_response="Keys hashed into buckets.",
                       follow_up="Can you give me an example?", follow_up_response="A Python dict."),
    bench.Conversation(main_query="Who was Ada Lovelace?", main_response="A mathematician.",
                       follow_up="Tell me more", follow_up_response="She wrote the first program."),
    bench.Conversation(main_query="What is the Krebs cycle?", main_response="A metabolic pathway.",
                       follow_up="Tell me more", follow_up_response="It runs in the mitochondria."),
]  # fmt: skip


def test_follow_ups_never_cross_conversations_and_the_naive_key_would(real_embedder: Embedder) -> None:
    (result,) = asyncio.run(bench.run(HAND_WRITTEN, real_embedder, [0.9]))

    assert result.lookups == len(HAND_WRITTEN) ** 2
    assert result.cross_hits == 0
    assert (result.own_hits, result.own_exact) == (len(HAND_WRITTEN), len(HAND_WRITTEN))
    # Keyed on the last message only, "Can you give an example?" (twice), "... me an example?" and
    # "Tell me more" are served the first conversation's answer.
    assert result.naive_stream_hits == 3
    assert result.naive_stream_wrong == 3
    assert result.naive_loo_hits == len(HAND_WRITTEN)
    report = bench.report([result], rows=len(HAND_WRITTEN), args=bench.parse_args(["--thresholds", "0.9"]), seconds=1)
    assert "| 0.9 | 25 | **0** | 5 of 5 (5) |" in report


@pytest.mark.skipif(not bench.DATA.exists(), reason=f"{bench.DATA} (third-party, not in the repository) is absent")
def test_on_the_shared_follow_ups(real_embedder: Embedder) -> None:
    conversations, rows = bench.read_conversations(bench.DATA)

    (result,) = asyncio.run(bench.run(conversations, real_embedder, [0.9], others=5))

    assert rows >= len(conversations) > 100
    assert result.lookups == 6 * len(conversations)
    assert result.cross_hits == 0
    assert result.own_hits == result.own_exact == len(conversations)
    assert result.naive_stream_hits > 0  # the check has teeth: without the earlier turns, some would


def test_without_the_data_it_says_so_and_exits_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--data", str(tmp_path / "absent.jsonl"), "--output", str(tmp_path / "out.md")]) == 0
    assert "nothing to measure" in capsys.readouterr().out
    assert not (tmp_path / "out.md").exists()
