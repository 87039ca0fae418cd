"""The verifier: cheap pair checks, the logistic model and its stored form, and the engine serving
a true paraphrase while refusing the classic false hit that a threshold alone would serve."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embeddings import Embedder, EmbeddingBatcher
from gateway.cache.catalog import Catalog
from gateway.cache.decisions import Hit, Miss
from gateway.cache.engine import ActivePolicy, CacheEngine, LookupSettings
from gateway.metrics import Metrics
from gateway.stores import SqliteStore
from gateway.wire import CompletionRequest, parse_chat_request
from gateway.wire.cache_control import CacheControl
from policies import CategoryClassifier, parse_policy
from policies.verifier import (
    DEFAULT_VETOES,
    FEATURE_NAMES,
    FLAG_NAMES,
    LogisticVerifier,
    Verifier,
    VerifierError,
    fit_logistic,
    pair_features,
)
from tests.doubles import FakeClock

untimed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def features(query: str, candidate: str, similarity: float = 0.97) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, pair_features(query, candidate, similarity).tolist(), strict=True))


def flags(query: str, candidate: str) -> set[str]:
    found = features(query, candidate)
    return {name for name in (*FLAG_NAMES, "order_inversions", "name_mismatch_count") if found[name] > 0}


# --- the checks ----------------------------------------------------------------------------------


def test_a_different_year_is_a_number_and_year_mismatch() -> None:
    found = flags("What was the price of gold in 2023?", "What was the price of gold in 2024?")
    assert {"number_mismatch", "year_mismatch"} <= found
    assert "negation_mismatch" not in found


def test_the_same_year_in_other_words_is_no_mismatch() -> None:
    assert flags("What was the price of gold in 2024?", "In 2024, what was the gold price?") <= {
        "order_inversions",
        "name_mismatch_count",
    }


def test_a_reversed_conversion_is_swapped() -> None:
    assert "direction_swapped" in flags("How do I convert km to miles?", "How do I convert miles to km?")
    assert "direction_swapped" in flags("Flights from Paris to Rome", "Flights from Rome to Paris")
    assert "direction_swapped" not in flags("How do I convert km to miles?", "Convert km to miles")


def test_swapped_roles_show_as_order_inversions() -> None:
    assert features("Are cats afraid of tigers?", "Are tigers afraid of cats?")["order_inversions"] == 1.0
    assert features("Are cats afraid of tigers?", "Are cats scared of tigers?")["order_inversions"] == 0.0


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("Is coffee bad for you?", "Is coffee not bad for you?"),
        ("Why can I log in?", "Why can't I log in?"),
        ("Tea with sugar", "Tea without sugar"),
        ("Has anyone ever won twice?", "Has no one ever won twice?"),
        ("Do they ever sleep?", "Do they never sleep?"),
    ],
)
def test_negation_on_one_side_only_is_a_mismatch(query: str, candidate: str) -> None:
    assert "negation_mismatch" in flags(query, candidate)


def test_dates_units_and_names() -> None:
    assert "date_mismatch" in flags("Is the museum open on Monday?", "Is the museum open on Friday?")
    assert "unit_mismatch" in flags("How long is 5 km?", "How long is 5 miles?")
    assert "unit_mismatch" not in flags("What is C programming?", "What is C++ programming?")
    assert features("Who founded Google?", "Who founded Microsoft?")["name_mismatch_count"] >= 1


def test_a_true_paraphrase_raises_no_flag() -> None:
    found = features("How do I reverse a list in Python?", "How can I reverse a Python list?")
    assert not {name for name in FLAG_NAMES if found[name]} - {"question_word_mismatch"}
    assert found["content_jaccard"] == 1.0
    assert found["same_content"] == 1.0


def test_similarity_features() -> None:
    found = features("a", "b", 0.9)
    assert found["similarity"] == 0.9
    assert found["similarity_squared"] == pytest.approx(0.81)
    assert found["similarity_logit"] == pytest.approx(math.log(9))
    assert found["similarity_above_0.9"] == 0.0
    assert np.isfinite(pair_features("", "", 1.0)).all()
    assert np.isfinite(pair_features("x", "y", 0.0)).all()


fragments = [*"ab1 9,.'-/XYZ", " not ", " to ", " from ", " km ", " miles ", " 2023 ", " vs ", " Monday ", " can't "]
texts = st.lists(st.sampled_from(fragments) | st.text(max_size=3), max_size=25).map("".join)


@untimed
@given(texts, texts, st.floats(0.0, 1.0))
def test_features_are_symmetric_finite_and_bounded(one: str, other: str, similarity: float) -> None:
    forward = pair_features(one, other, similarity)
    assert forward.shape == (len(FEATURE_NAMES),)
    assert np.array_equal(forward, pair_features(other, one, similarity))
    assert np.isfinite(forward).all()
    found = dict(zip(FEATURE_NAMES, forward.tolist(), strict=True))
    for name in FLAG_NAMES:
        assert found[name] in (0.0, 1.0)
    for name in ("content_jaccard", "word_bigram_jaccard", "length_ratio", "order_inversions", "same_content"):
        assert 0.0 <= found[name] <= 1.0
    for name in ("name_mismatch_count", "unmatched_content_max", "unmatched_content_min", "unmatched_long_words"):
        assert 0.0 <= found[name] <= 3.0


# --- the model -----------------------------------------------------------------------------------

# Hand-written (query, candidate, similarity, same question?): the false hits sit at higher
# similarity than the true paraphrases, as they do with real embeddings.
LABELLED = [
    ("How do I reverse a list in Python?", "How can I reverse a Python list?", 0.93, 1),
    ("What is the capital of Australia?", "Which city is the capital of Australia?", 0.95, 1),
    ("How many days are in a leap year?", "How many days does a leap year have?", 0.96, 1),
    ("How do I undo my last git commit?", "How can I undo the last git commit?", 0.94, 1),
    ("What are symptoms of vitamin D deficiency?", "What symptoms does vitamin D deficiency cause?", 0.92, 1),
    ("Best way to learn French quickly?", "What is the fastest way to learn French?", 0.9, 1),
    ("How do I boil an egg?", "How should I boil an egg?", 0.95, 1),
    ("Why is the sky blue?", "What makes the sky blue?", 0.91, 1),
    ("What was the price of gold in 2023?", "What was the price of gold in 2024?", 0.97, 0),
    ("How do I convert km to miles?", "How do I convert miles to km?", 0.98, 0),
    ("Is coffee bad for you?", "Is coffee not bad for you?", 0.96, 0),
    ("Who won the world cup in 2018?", "Who won the world cup in 2014?", 0.97, 0),
    ("How tall is a 6 foot man in cm?", "How tall is a 5 foot man in cm?", 0.97, 0),
    ("Can I drink tea with milk?", "Can I drink tea without milk?", 0.95, 0),
    ("Flights from Paris to Rome", "Flights from Rome to Paris", 0.98, 0),
    ("Why can I log in?", "Why can't I log in?", 0.96, 0),
]


def fitted(*, min_probability: float = 0.5, floor: float = 0.8, vetoes: tuple[str, ...] = ()) -> LogisticVerifier:
    matrix = np.stack([pair_features(query, candidate, similarity) for query, candidate, similarity, _ in LABELLED])
    weights, bias = fit_logistic(matrix, [label for *_, label in LABELLED], l2=0.1)
    return LogisticVerifier(weights=weights, bias=bias, min_probability=min_probability, floor=floor, vetoes=vetoes)


def test_a_verifier_fitted_on_labelled_pairs_separates_them() -> None:
    verifier = fitted()
    probability = {
        label: [verifier.probability(query=q, candidate=c, similarity=s) for q, c, s, y in LABELLED if y == label]
        for label in (0, 1)
    }
    assert min(probability[1]) > 0.5 > max(probability[0])
    assert [verifier.accepts(query=q, candidate=c, similarity=s) for q, c, s, _ in LABELLED] == [
        bool(label) for *_, label in LABELLED
    ]


def test_fit_logistic_learns_the_signs_and_ignores_constant_columns() -> None:
    rng = np.random.default_rng(0)
    useful, noise = rng.normal(size=2000), rng.normal(size=2000)
    labels = (2.0 * useful - 0.5 + rng.logistic(size=2000) > 0).astype(int)
    matrix = np.column_stack([useful * 10.0, -noise, np.full(2000, 7.0)])
    (weight, noise_weight, constant_weight), bias = fit_logistic(matrix, labels, l2=0.0)
    assert weight == pytest.approx(0.2, rel=0.15)  # 2.0 per unit of `useful`, which is scaled by 10
    assert abs(noise_weight) < 0.2
    assert constant_weight == 0.0
    assert bias == pytest.approx(-0.5, abs=0.2)


@pytest.mark.parametrize(
    ("matrix", "labels"),
    [
        ([[1.0], [2.0]], [0, 2]),
        ([[1.0], [math.nan]], [0, 1]),
        ([1.0, 2.0], [0, 1]),
        (np.zeros((0, 3)), []),
    ],
)
def test_fit_logistic_refuses_bad_input(matrix: object, labels: object) -> None:
    with pytest.raises(ValueError, match=r"."):
        fit_logistic(matrix, labels, l2=1.0)  # type: ignore[arg-type]


def test_below_the_floor_or_vetoed_nothing_is_accepted_whatever_the_model_says() -> None:
    eager = LogisticVerifier(
        weights=(0.0,) * len(FEATURE_NAMES), bias=40.0, min_probability=0.5, floor=0.9, vetoes=DEFAULT_VETOES
    )
    assert eager.accepts(query="How do I boil an egg?", candidate="How should I boil an egg?", similarity=0.9)
    assert not eager.accepts(query="How do I boil an egg?", candidate="How should I boil an egg?", similarity=0.89)
    gold = ("What was the price of gold in 2023?", "What was the price of gold in 2024?")
    assert not eager.accepts(query=gold[0], candidate=gold[1], similarity=0.99)
    assert dataclasses.replace(eager, vetoes=()).accepts(query=gold[0], candidate=gold[1], similarity=0.99)


def test_scores_agree_with_accepts() -> None:
    verifier = fitted(min_probability=0.3, floor=0.93, vetoes=("negation_mismatch",))
    matrix = np.stack([pair_features(q, c, s) for q, c, s, _ in LABELLED])
    scores = verifier.scores(matrix)
    for (query, candidate, similarity, _), score in zip(LABELLED, scores, strict=True):
        assert verifier.accepts(query=query, candidate=candidate, similarity=similarity) == (score >= 0.3)
    assert np.isneginf(scores[[s < 0.93 for _, _, s, _ in LABELLED]]).all()


def test_it_is_a_verifier() -> None:
    verifier: Verifier = fitted()
    assert isinstance(verifier, Verifier)


# --- the stored form -----------------------------------------------------------------------------


def test_json_round_trip() -> None:
    verifier = dataclasses.replace(fitted(vetoes=DEFAULT_VETOES), description="hand-made pairs")
    stored = json.loads(verifier.to_json())
    assert stored["format_version"] == 1
    assert list(stored["weights"]) == list(FEATURE_NAMES)
    assert LogisticVerifier.from_json(verifier.to_json()) == verifier


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda data: data.update(format_version=2), "format_version"),
        (lambda data: data["weights"].pop("similarity"), "feature"),
        (lambda data: data["weights"].update(new_feature=1.0), "feature"),
        (lambda data: data.update(vetoes=["similarity"]), "vetoes"),
        (lambda data: data.update(min_probability=1.5), "min_probability"),
        (lambda data: data.update(floor="high"), "number"),
        (lambda data: data.update(extra=1), "keys"),
        (lambda data: data.update(bias=math.inf), "finite"),
    ],
)
def test_a_damaged_or_foreign_file_is_refused(change: object, reason: str) -> None:
    data = json.loads(fitted().to_json())
    change(data)  # type: ignore[operator]
    with pytest.raises(VerifierError, match=reason):
        LogisticVerifier.from_json(json.dumps(data))


def test_not_json_is_refused() -> None:
    with pytest.raises(VerifierError, match="not JSON"):
        LogisticVerifier.from_json("{")
    with pytest.raises(VerifierError, match="object"):
        LogisticVerifier.from_json("[]")


# --- in the engine -------------------------------------------------------------------------------

STORED = "What was the price of gold in 2024?"
WRONG_YEAR = "What was the price of gold in 2023?"  # cosine ≈ 0.967 with all-MiniLM-L6-v2
PARAPHRASE = "How much did gold cost in 2024?"  # cosine ≈ 0.959: below the wrong year
UNRELATED = "How do I bake sourdough bread?"


def asked(prompt: str) -> CompletionRequest:
    return parse_chat_request({"model": "m", "messages": [{"role": "user", "content": prompt}]})


def decide(
    tmp_path: Path, embedder: Embedder, *, threshold: float, verifier: Verifier | None
) -> dict[str, float | None]:
    """Store STORED, then look the others up: the similarity of each hit, None for a miss."""
    policy = parse_policy({"categories": [{"name": "default", "similarity_threshold": threshold}]})

    async def scenario() -> dict[str, float | None]:
        async with (
            SqliteStore(tmp_path / "cache.db") as store,
            EmbeddingBatcher(embedder) as batcher,
            Catalog(
                store=store, dimension=embedder.dimension, policy=policy, metrics=Metrics(), clock=FakeClock()
            ) as catalog,
        ):
            engine = CacheEngine(
                catalog=catalog,
                batcher=batcher,
                policy=ActivePolicy(policy=policy, classifier=CategoryClassifier(policy, {})),
                settings=LookupSettings(),
                metrics=Metrics(),
                clock=FakeClock(),
                verifier=verifier,
            )
            miss = await engine.lookup(asked(STORED), tenant="tenant-a", control=CacheControl())
            assert isinstance(miss, Miss)
            assert await engine.remember(miss, response={"id": "a"})
            found: dict[str, float | None] = {}
            for prompt in (WRONG_YEAR, PARAPHRASE, UNRELATED):
                decision = await engine.lookup(asked(prompt), tenant="tenant-a", control=CacheControl())
                found[prompt] = decision.similarity if isinstance(decision, Hit) else None
            return found

    return asyncio.run(scenario())


def test_the_engine_with_a_verifier_refuses_the_wrong_year_and_serves_the_paraphrase(
    tmp_path: Path, real_embedder: Embedder
) -> None:
    # A threshold low enough for the paraphrase serves the wrong year too: it is even closer.
    raw = decide(tmp_path / "raw", real_embedder, threshold=0.95, verifier=None)
    wrong_year, paraphrase = raw[WRONG_YEAR], raw[PARAPHRASE]
    assert wrong_year is not None
    assert paraphrase is not None
    assert wrong_year > paraphrase
    assert raw[UNRELATED] is None
    # Model: P = sigmoid(logit(similarity) - 2), i.e. similarity ≥ 0.881 from the floor 0.8 up,
    # with the default vetoes on top.
    weights = tuple(1.0 if name == "similarity_logit" else 0.0 for name in FEATURE_NAMES)
    verifier = LogisticVerifier(weights=weights, bias=-2.0, min_probability=0.5, floor=0.8, vetoes=DEFAULT_VETOES)
    checked = decide(tmp_path / "verified", real_embedder, threshold=0.95, verifier=verifier)
    assert checked[WRONG_YEAR] is None
    assert checked[PARAPHRASE] == pytest.approx(paraphrase)
    assert checked[UNRELATED] is None
