"""The category classifier: rules first, then the embedding, `default` when unsure.

The example policies are classified with the real embedding model; the arithmetic is checked
against a plain reference implementation on generated vectors."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from embeddings import Embedder
from policies import DEFAULT, CategoryClassifier, Classification, Classifier, Policy, load_policy, parse_policy

_: Classifier = CategoryClassifier.__new__(CategoryClassifier)

untimed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policy_files"
Matrix = npt.NDArray[np.float32]


def embed(embedder: Embedder, texts: Iterable[str]) -> Matrix:
    return np.stack([item.vector for item in embedder.embed(list(texts))])


def build(policy: Policy, embedder: Embedder) -> CategoryClassifier:
    return CategoryClassifier(policy, {name: embed(embedder, texts) for name, texts in policy.exemplars().items()})


def with_settings(policy: Policy, **changes: Any) -> Policy:
    return dataclasses.replace(policy, classifier=dataclasses.replace(policy.classifier, **changes))


@dataclasses.dataclass(frozen=True, slots=True)
class Examples:
    """Each example policy with its classifier (exemplars embedded once), and the model."""

    embedder: Embedder
    loaded: dict[str, tuple[Policy, CategoryClassifier]]

    def __getitem__(self, name: str) -> tuple[Policy, CategoryClassifier]:
        return self.loaded[name]

    def vector(self, text: str) -> Matrix:
        return embed(self.embedder, [text])[0]


@pytest.fixture(scope="module")
def examples(real_embedder: Embedder) -> Examples:
    loaded = {}
    for name in ("general_assistant", "coding_assistant", "customer_support"):
        policy = load_policy(EXAMPLES / f"{name}.yaml")
        loaded[name] = (policy, build(policy, real_embedder))
    return Examples(real_embedder, loaded)


# --- the example policies with the real model ----------------------------------------------------

CLEAR_CASES = [
    ("general_assistant", "Will it snow in Oslo this weekend?", "realtime", "embedding"),
    ("general_assistant", "What's the weather in Paris?", "realtime", "keyword"),
    ("general_assistant", "How do I sort a dictionary by value in Python?", "code", "embedding"),
    ("general_assistant", "Write a function in C that reverses a linked list", "code", "embedding"),
    ("general_assistant", "Who discovered penicillin?", "factual", "embedding"),
    ("general_assistant", "What is the largest ocean on Earth?", "factual", "embedding"),
    ("general_assistant", "Any tips for staying motivated to exercise?", "chat", "embedding"),
    ("general_assistant", "Write a haiku about the sea", "chat", "embedding"),
    (
        "general_assistant",
        "Please summarize the following email for me: Hi team, the offsite moved",
        "rewrite",
        "pattern",
    ),
    ("coding_assistant", "Is Python 3.9 still maintained?", "releases", "pattern"),
    ("coding_assistant", "What's new in the most recent Rust release?", "releases", "embedding"),
    ("coding_assistant", "When does Node 18 reach end of life?", "releases", "keyword"),
    ("coding_assistant", "My Python script crashes with a KeyError when reading the config", "debugging", "embedding"),
    ("coding_assistant", "Why does my Node server crash with an out of memory error?", "debugging", "embedding"),
    ("coding_assistant", "How do I squash the last three commits in git?", "shell", "embedding"),
    ("coding_assistant", "How do I find which process uses port 3000?", "shell", "embedding"),
    ("coding_assistant", "Write a Python function that merges two sorted lists", "generation", "embedding"),
    ("coding_assistant", "What is the difference between a stack and a queue?", "concepts", "embedding"),
    ("coding_assistant", "Explain what a mutex is", "concepts", "embedding"),
    ("customer_support", "Where is my order 1234567?", "order_status", "keyword"),
    ("customer_support", "This is the worst experience I've ever had with a shop", "complaints", "embedding"),
    ("customer_support", "Are there any sales this weekend?", "promotions", "embedding"),
    ("customer_support", "How can I send back a jacket that doesn't fit?", "returns", "embedding"),
    ("customer_support", "How many days do I have to return shoes?", "returns", "embedding"),
    ("customer_support", "Do you deliver to Australia?", "shipping", "embedding"),
    ("customer_support", "How long does express delivery take?", "shipping", "embedding"),
    ("customer_support", "How do I change my password?", "account", "embedding"),
    ("customer_support", "I forgot my login email", "account", "embedding"),
    ("customer_support", "Do you accept Apple Pay?", "billing", "embedding"),
]


@pytest.mark.parametrize(("policy_name", "text", "category", "via"), CLEAR_CASES)
def test_clear_requests_land_in_their_category(
    examples: Examples,
    policy_name: str,
    text: str,
    category: str,
    via: str,
) -> None:
    policy, classifier = examples[policy_name]

    result = classifier.classify(text, examples.vector(text))

    assert (result.category, result.via) == (category, via)
    if via == "embedding":
        assert result.similarity is not None
        assert result.similarity >= policy.classifier.min_similarity
        assert result.confidence >= policy.classifier.min_confidence
    else:
        assert (result.confidence, result.similarity) == (1.0, None)


@pytest.mark.parametrize(
    ("policy_name", "text", "category", "embedding_says"),
    [
        # A real-time keyword wins over what the text is about: never serve it from the cache.
        ("general_assistant", "What is the capital of France right now?", "realtime", "factual"),
        ("customer_support", "I want to speak to a human right now", "complaints", DEFAULT),
    ],
)
def test_keywords_win_over_the_embedding(
    examples: Examples,
    policy_name: str,
    text: str,
    category: str,
    embedding_says: str,
) -> None:
    _, classifier = examples[policy_name]
    vector = examples.vector(text)

    assert classifier.classify_vector(vector).category == embedding_says
    assert classifier.classify(text, vector) == Classification(category=category, confidence=1.0, via="keyword")


def test_rules_are_tried_in_file_order(examples: Examples) -> None:
    # Both `debugging` (a traceback) and, later in the file, `generation` (a code fence) match.
    text = (
        "```python\ndef first(x): return x[0]\n```\n"
        "Traceback (most recent call last):\nIndexError: list index out of range"
    )
    _, classifier = examples["coding_assistant"]

    assert classifier.classify(text, examples.vector(text)).category == "debugging"
    assert classifier.classify("```python\nprint(1)\n```", None).category == "generation"
    # An order number is `order_status`, listed before `complaints`, whose keyword also occurs.
    _, support = examples["customer_support"]
    complaint = "My order 1234567 never arrived and this is unacceptable"
    assert support.classify(complaint, None) == Classification(category="order_status", confidence=1.0, via="pattern")


@pytest.mark.parametrize(
    ("policy_name", "text"),
    [
        ("general_assistant", "asdkjh qwpoe zmxnv"),
        ("general_assistant", "Hmm."),
        ("general_assistant", "lorem ipsum dolor sit amet"),
        ("coding_assistant", "What is a good recipe for banana bread?"),
        ("coding_assistant", "Who won the world cup in 2010?"),
        ("customer_support", "What is the meaning of life?"),
        ("customer_support", "How do I reverse a list in Python?"),
    ],
)
def test_off_topic_requests_go_to_default(examples: Examples, policy_name: str, text: str) -> None:
    _, classifier = examples[policy_name]

    result = classifier.classify(text, examples.vector(text))

    assert (result.category, result.via) == (DEFAULT, "default")


def test_a_request_halfway_between_two_categories_goes_to_default(examples: Examples) -> None:
    policy, classifier = examples["customer_support"]
    assert policy.classifier.method == "centroid"
    centroids = {}
    for name, texts in policy.exemplars().items():
        mean = embed(examples.embedder, texts).mean(axis=0)
        centroids[name] = mean / np.linalg.norm(mean)

    for first, second in itertools.combinations(["returns", "shipping", "billing", "account"], 2):
        halfway = centroids[first] + centroids[second]
        result = classifier.classify("", halfway)
        assert (result.category, result.via) == (DEFAULT, "default"), (first, second)
        assert result.confidence < 1e-5
        assert result.similarity is not None
        assert result.similarity > policy.classifier.min_similarity


@pytest.mark.parametrize("method", ["centroid", "knn"])
def test_below_the_margin_or_the_floor_a_request_goes_to_default(examples: Examples, method: str) -> None:
    policy, _ = examples["general_assistant"]
    texts = ["Write a haiku about the sea", "Who discovered penicillin?", "How do I fix a merge conflict in git?"]
    vectors = embed(examples.embedder, texts)
    exemplar_vectors = {name: embed(examples.embedder, exemplars) for name, exemplars in policy.exemplars().items()}

    def classify(vector: Matrix, **changes: Any) -> Classification:
        changed = with_settings(policy, method=method, **changes)
        return CategoryClassifier(changed, exemplar_vectors).classify_vector(vector)

    for vector in vectors:
        sure = classify(vector, min_confidence=0.0, min_similarity=0.0)
        assert sure.via == "embedding"
        assert sure.similarity is not None
        assert classify(vector, min_confidence=sure.confidence, min_similarity=0.0) == sure
        assert classify(vector, min_confidence=sure.confidence + 0.001, min_similarity=0.0).category == DEFAULT
        assert classify(vector, min_confidence=0.0, min_similarity=sure.similarity - 0.001) == sure
        assert classify(vector, min_confidence=0.0, min_similarity=sure.similarity + 0.001).category == DEFAULT


def test_without_a_vector_only_the_rules_decide(examples: Examples) -> None:
    _, classifier = examples["general_assistant"]

    assert classifier.classify("weather in Oslo", None).category == "realtime"
    assert classifier.classify("Who discovered penicillin?", None) == Classification(
        category=DEFAULT, confidence=0.0, via="default"
    )


# --- rules, without the model -------------------------------------------------------------------


def rules_only(*categories: dict[str, Any]) -> CategoryClassifier:
    return CategoryClassifier(parse_policy({"categories": list(categories)}), {})


def test_keywords_match_whole_words_in_any_case() -> None:
    classifier = rules_only({"name": "live", "keywords": ["weather", "stock price", "c++", ".NET"]})

    def category(text: str) -> str:
        return classifier.classify(text, None).category

    assert category("WEATHER in Oslo") == "live"
    assert category("what's the weather?") == "live"
    assert category("the Stock \n  Price of ACME") == "live"
    assert category("templates in C++ please") == "live"
    assert category("is .net dead") == "live"
    assert category("weathering steel") == DEFAULT
    assert category("stockprice") == DEFAULT
    assert category("abc++") == DEFAULT


def test_patterns_are_searched_as_written_and_keywords_come_first() -> None:
    classifier = rules_only(
        {"name": "orders", "patterns": [r"\border\s*#?\d{5,}"], "keywords": ["refund"]},
        {"name": "anything", "patterns": ["(?i)order"]},
    )

    assert classifier.classify("where is order #123456", None).via == "pattern"
    assert classifier.classify("Where is ORDER 123456", None).category == "anything"
    assert classifier.classify("refund for order 123456", None).via == "keyword"
    assert classifier.classify("nothing to see", None).category == DEFAULT


def test_a_policy_without_exemplars_classifies_by_rules_alone() -> None:
    classifier = rules_only({"name": "live", "keywords": ["weather"]})

    assert classifier.categories == ()
    assert classifier.classify("hello", np.ones(4, dtype=np.float32)).category == DEFAULT


def test_a_zero_vector_goes_to_default() -> None:
    policy = parse_policy(
        {
            "classifier": {"min_confidence": 0, "min_similarity": 0},
            "categories": [{"name": "a", "exemplars": ["x"]}, {"name": "b", "exemplars": ["y"]}],
        }
    )
    classifier = CategoryClassifier(
        policy, {"a": np.eye(2, dtype=np.float32)[:1], "b": np.eye(2, dtype=np.float32)[1:]}
    )

    assert classifier.classify("", np.zeros(2, dtype=np.float32)) == Classification(
        category=DEFAULT, confidence=0.0, via="default", similarity=0.0
    )
    assert classifier.classify("", np.array([0.0, 2.0], dtype=np.float32)).category == "b"


def test_vectors_must_fit_the_policy() -> None:
    policy = parse_policy({"categories": [{"name": "a", "exemplars": ["x", "y"]}, {"name": "b", "exemplars": ["z"]}]})
    two, one = np.ones((2, 4), dtype=np.float32), np.ones((1, 4), dtype=np.float32)

    with pytest.raises(ValueError, match="no vectors for the exemplars of category 'b'"):
        CategoryClassifier(policy, {"a": two})
    with pytest.raises(ValueError, match=r"category 'a': expected 2 vectors \(one per exemplar\)"):
        CategoryClassifier(policy, {"a": one, "b": one})
    with pytest.raises(ValueError, match="categories the policy does not have: c"):
        CategoryClassifier(policy, {"a": two, "b": one, "c": one})
    with pytest.raises(ValueError, match="different dimensions"):
        CategoryClassifier(policy, {"a": two, "b": np.ones((1, 5), dtype=np.float32)})
    classifier = CategoryClassifier(policy, {"a": two, "b": one})
    with pytest.raises(ValueError, match="vector of dimension 3, the exemplars have 4"):
        classifier.classify("text", np.ones(3, dtype=np.float32))


# --- the arithmetic, against a plain reference ----------------------------------------------------

DIMENSION = 8


def unit(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


def dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def reference_scores(policy: Policy, vectors: dict[str, Matrix], query: Matrix) -> dict[str, float]:
    """Each category's score as the docs define it, in plain Python."""
    q = unit(query.tolist())
    scores = {}
    for name, block in vectors.items():
        rows = [unit(row) for row in block.tolist()]
        if policy.classifier.method == "centroid":
            centroid = unit([sum(column) / len(rows) for column in zip(*rows, strict=True)])
            scores[name] = dot(centroid, q)
        else:
            nearest = sorted((max(0.0, dot(row, q)) for row in rows), reverse=True)[: policy.classifier.k]
            scores[name] = sum(nearest) / len(nearest)
    return scores


@st.composite
def generated(draw: st.DrawFn) -> tuple[Policy, dict[str, Matrix], Matrix]:
    sizes = draw(st.lists(st.integers(1, 8), min_size=1, max_size=5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    settings_ = {
        "method": draw(st.sampled_from(["centroid", "knn"])),
        "k": draw(st.integers(1, 10)),
        "min_confidence": draw(st.sampled_from([0.0, 0.01, 0.05, 0.2])),
        "min_similarity": draw(st.sampled_from([0.0, 0.1, 0.3, 0.6])),
    }
    names = [f"c{i}" for i in range(len(sizes))]
    policy = parse_policy(
        {
            "classifier": settings_,
            "categories": [
                {"name": name, "exemplars": [f"{name} exemplar {j}" for j in range(size)]}
                for name, size in zip(names, sizes, strict=True)
            ],
        }
    )
    # Exemplars near a few directions, as real categories are; not unit length, to test that too.
    centres = rng.normal(size=(len(sizes), DIMENSION))
    vectors = {
        name: (centres[i] + rng.normal(scale=0.8, size=(size, DIMENSION))).astype(np.float32) * rng.uniform(0.5, 2)
        for i, (name, size) in enumerate(zip(names, sizes, strict=True))
    }
    query = (centres[draw(st.integers(0, len(sizes) - 1))] + rng.normal(size=DIMENSION)).astype(np.float32)
    return policy, vectors, query * np.float32(draw(st.sampled_from([0.3, 1.0, 7.0])))


@untimed
@given(generated())
def test_the_classifier_agrees_with_the_reference(case: tuple[Policy, dict[str, Matrix], Matrix]) -> None:
    policy, vectors, query = case
    scores = reference_scores(policy, vectors, query)
    ranked = sorted(scores.values(), reverse=True)
    best = min(1.0, max(0.0, ranked[0]))
    runner_up = min(1.0, max(0.0, ranked[1])) if len(ranked) > 1 else 0.0
    settings_ = policy.classifier
    tolerance = 1e-4
    # Float32 against float64: stay off the boundaries, where either answer is right.
    assume(len(ranked) == 1 or ranked[0] - ranked[1] > tolerance)
    assume(abs(best - settings_.min_similarity) > tolerance)
    assume(abs(best - runner_up - settings_.min_confidence) > tolerance)

    result = CategoryClassifier(policy, vectors).classify("no rule matches this", query)

    assert result.similarity == pytest.approx(best, abs=tolerance)
    assert result.confidence == pytest.approx(best - runner_up, abs=tolerance)
    if best < settings_.min_similarity or best - runner_up < settings_.min_confidence:
        assert (result.category, result.via) == (DEFAULT, "default")
    else:
        assert (result.category, result.via) == (max(scores, key=lambda name: scores[name]), "embedding")
    assert 0.0 <= result.confidence <= 1.0
    assert 0.0 <= result.similarity <= 1.0


@untimed
@given(generated())
def test_with_one_neighbour_an_exemplar_is_classified_as_its_own_category(
    case: tuple[Policy, dict[str, Matrix], Matrix],
) -> None:
    policy, vectors, _ = case
    policy = with_settings(policy, method="knn", k=1, min_confidence=0.0, min_similarity=0.0)
    classifier = CategoryClassifier(policy, vectors)

    for name, block in vectors.items():
        for row in block:
            result = classifier.classify("", row)
            assert (result.category, result.via) == (name, "embedding")
            assert result.similarity == pytest.approx(1.0, abs=1e-5)
