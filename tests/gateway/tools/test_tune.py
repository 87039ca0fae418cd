"""`semcache tune`: fine-tuning the real packaged model on a small hand-written labelled set."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from embeddings import PACKAGED_MODEL, Embedder, SentenceTransformerEmbedder
from gateway.cache.semantic_cache import CacheHit, CacheMiss, SemanticCache
from gateway.cli import main
from gateway.config import GatewayConfig
from gateway.tools.calibrate import LabelledPair
from gateway.tools.tune import TUNE_RECORD, TuneSettings, tune_embedder
from policies import PolicyError
from tests.bodies import answer, chat
from tests.conftest import GatewayFactory

# Pairs a general model scores as near-duplicates although a cache must not reuse one's answer for
# the other, beside true paraphrases; tuning must pull the first apart and keep the second close.
SWAPPED = [
    ("How do I convert kilometers to miles?", "How do I convert miles to kilometers?"),
    ("Translate this from English to French.", "Translate this from French to English."),
    ("How much is one dollar in euros?", "How much is one euro in dollars?"),
    ("Why do cats chase dogs?", "Why do dogs chase cats?"),
]
PARAPHRASES = [
    ("How can I learn to swim as an adult?", "What is the best way for an adult to learn swimming?"),
    ("What causes the seasons on Earth?", "Why does Earth have seasons?"),
    ("How do I boil an egg?", "What is the way to boil an egg?"),
    ("Who wrote Pride and Prejudice?", "Who is the author of Pride and Prejudice?"),
]


def labelled() -> list[LabelledPair]:
    return [LabelledPair(a=a, b=b, same=False) for a, b in SWAPPED] + [
        LabelledPair(a=a, b=b, same=True) for a, b in PARAPHRASES
    ]


def mean_similarity(embedder: Embedder, pairs: list[tuple[str, str]]) -> float:
    vectors = embedder.embed([text for pair in pairs for text in pair])
    return float(np.mean([vectors[i].vector @ vectors[i + 1].vector for i in range(0, len(vectors), 2)]))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tuned")
    messages: list[str] = []
    result = tune_embedder(
        labelled(),
        base_model=PACKAGED_MODEL,
        out=out,
        settings=TuneSettings(epochs=6, batch_size=8, learning_rate=1e-4, warmup_share=0.0, device="cpu"),
        progress=messages.append,
    )
    assert result.steps == 6
    assert result.duplicates == len(PARAPHRASES)
    assert messages  # progress was shown
    return out


def test_tuning_separates_what_the_labels_separate(tuned: Path, real_embedder: Embedder) -> None:
    model = SentenceTransformerEmbedder(str(tuned))
    before_swapped, after_swapped = mean_similarity(real_embedder, SWAPPED), mean_similarity(model, SWAPPED)
    before_same, after_same = mean_similarity(real_embedder, PARAPHRASES), mean_similarity(model, PARAPHRASES)

    assert after_swapped < before_swapped - 0.02
    assert after_same - after_swapped > before_same - before_swapped
    assert model.dimension == real_embedder.dimension


def test_the_tuned_folder_says_how_it_was_made(tuned: Path) -> None:
    record = json.loads((tuned / TUNE_RECORD).read_text())

    assert record["base_model"] == PACKAGED_MODEL
    assert record["pairs"] == len(SWAPPED) + len(PARAPHRASES)
    assert record["loss"] == "OnlineContrastiveLoss"
    assert record["settings"]["epochs"] == 6


def test_one_sided_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="both duplicate and non-duplicate"):
        tune_embedder([LabelledPair(a="a", b="b", same=True)], base_model=PACKAGED_MODEL, out=Path("unused"))


@pytest.mark.parametrize(
    ("field", "value"), [("epochs", 0), ("batch_size", 1), ("learning_rate", 0.0), ("margin", 3.0), ("threads", 0)]
)
def test_bad_settings_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        TuneSettings(**{field: value})  # type: ignore[arg-type]


def test_the_cli_tunes_and_says_how_to_use_the_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"a": p.a, "b": p.b, "label": int(p.same)}) for p in labelled()))

    code = main(["tune", "--pairs", str(pairs), "--out", str(tmp_path / "model"), "--batch-size", "4"])

    err = capsys.readouterr().err
    assert code == 0, err
    assert "step 2/2" in err
    assert f"model: {(tmp_path / 'model').resolve()}" in err
    assert (tmp_path / "model" / TUNE_RECORD).is_file()


def test_the_cli_refuses_one_sided_pairs_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"a": "x", "b": "y", "label": 1}))

    assert main(["tune", "--pairs", str(pairs), "--out", str(tmp_path / "model")]) == 2
    assert "both duplicate and non-duplicate" in capsys.readouterr().err


def test_a_gateway_on_the_tuned_model_does_not_search_the_old_models_vectors(
    tuned: Path, real_embedder: Embedder, start_gateway: GatewayFactory
) -> None:
    question = "How do I convert kilometers to miles?"
    with start_gateway(embedder_=real_embedder) as gateway:
        gateway.client().chat.completions.create(model="sim-large", messages=[{"role": "user", "content": question}])
        gateway.wait_until_stored(1)

    with start_gateway(embedder_=SentenceTransformerEmbedder(str(tuned))) as gateway:
        response = gateway.client().chat.completions.with_raw_response.create(
            model="sim-large", messages=[{"role": "user", "content": question}]
        )
        assert response.headers["x-semcache"] == "miss"  # even the exact repeat: the cache was dropped


def test_a_policy_can_point_at_the_tuned_model(tuned: Path, tmp_path: Path, gateway_config: GatewayConfig) -> None:
    policy = tmp_path / "policy.yaml"
    relative = os.path.relpath(tuned, tmp_path)  # a local folder is relative to the policy file
    policy.write_text(f"embedding_model: {relative}\ncategories:\n  - name: default\n    similarity_threshold: 0.5\n")
    config = replace(gateway_config, policy=str(policy))
    question, other = SWAPPED[0]
    tuned_model = SentenceTransformerEmbedder(str(tuned))
    [one, two] = tuned_model.embed([question, other])

    async def scenario() -> None:
        async with SemanticCache(config) as cache:  # no embedder handed in: the policy's is loaded
            miss = await cache.lookup(chat(question))
            assert isinstance(miss, CacheMiss)
            await cache.remember(miss, answer("Multiply by 0.621."))
            found = await cache.lookup(chat(other))
            similarity = found.similarity if isinstance(found, CacheHit) else found.best_similarity
            assert similarity == pytest.approx(float(one.vector @ two.vector), abs=1e-3)

            policy.write_text("categories:\n  - name: default\n")  # back to the config's model: refused
            with pytest.raises(PolicyError, match="embedding_model"):
                await cache.reload_policy()
            assert cache.engine.policy.category("default").similarity_threshold == 0.5

    asyncio.run(scenario())
