"""Policies: typed, validated from YAML, every problem reported at once with its YAML path."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import (
    DEFAULT,
    Bounds,
    Category,
    FeedbackRules,
    Invalid,
    Policy,
    PolicyError,
    load_policy,
    parse_policy,
)

# Hypothesis' deadline and slow-generation check time the machine: speed lives in bench/, not here.
untimed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policy_files"
VALID_PATTERNS = [r"\bprice\b", r"(?i)weather", r"(?m)^\s*def\s", r"\d{5,}", r"```"]


def problems_of(data: Any) -> list[str]:
    with pytest.raises(PolicyError) as raised:
        parse_policy(data, source="policy.yaml")
    assert raised.value.source == "policy.yaml"
    assert str(raised.value).startswith("policy.yaml: ")
    return raised.value.problems


def paths_of(problems: list[str]) -> set[str]:
    return {problem.split(": ", 1)[0] for problem in problems}


# --- generated valid policies -------------------------------------------------------------------

texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40).filter(
    lambda text: text.strip() != ""
)
unit = st.floats(min_value=0.05, max_value=1.0)
names = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True).filter(lambda name: name != DEFAULT)


@st.composite
def categories(draw: st.DrawFn, name: str) -> dict[str, Any]:
    """A valid category as YAML would give it, each optional key present or not."""
    category: dict[str, Any] = {"name": name}
    signals = draw(
        st.sets(st.sampled_from(["exemplars", "keywords", "patterns"]), min_size=0 if name == DEFAULT else 1)
    )
    if "exemplars" in signals:
        category["exemplars"] = draw(st.lists(texts, min_size=1, max_size=5))
    if "keywords" in signals:
        category["keywords"] = draw(st.lists(texts, min_size=1, max_size=3))
    if "patterns" in signals:
        category["patterns"] = draw(st.lists(st.sampled_from(VALID_PATTERNS), min_size=1, max_size=3))
    threshold = draw(unit)
    category["similarity_threshold"] = threshold
    ttl_s = draw(st.floats(min_value=1, max_value=1e7) | st.integers(min_value=1, max_value=10**7))
    category["ttl_s"] = ttl_s
    if draw(st.booleans()):
        category["max_entries"] = draw(st.integers(min_value=1, max_value=10**9))
    if draw(st.booleans()):
        category["cacheable"] = draw(st.booleans())
    floor = None
    if threshold > 0.1 and draw(st.booleans()):
        floor = draw(st.floats(min_value=0.01, max_value=threshold, exclude_max=True))
        category["near_miss_floor"] = floor
    bounds: dict[str, Any] = {}
    if draw(st.booleans()):
        low = 0.0 if floor is None else floor
        bounds["min_threshold"] = draw(st.floats(min_value=low, max_value=threshold, exclude_min=True))
    if draw(st.booleans()):
        bounds["max_ttl_s"] = draw(st.floats(min_value=float(ttl_s), max_value=1e8))
    if bounds or draw(st.booleans()):
        category["bounds"] = bounds
    if draw(st.booleans()):
        category["tier"] = draw(st.sampled_from(["small", "large"]))
    return category


@st.composite
def policies(draw: st.DrawFn, min_categories: int = 1) -> dict[str, Any]:
    chosen = draw(st.lists(names, min_size=min_categories, max_size=6, unique=True))
    if draw(st.booleans()):
        chosen.insert(draw(st.integers(0, len(chosen))), DEFAULT)
    policy: dict[str, Any] = {"categories": [draw(categories(name)) for name in chosen]}
    if draw(st.booleans()):
        classifier: dict[str, Any] = {"method": draw(st.sampled_from(["centroid", "knn"]))}
        if draw(st.booleans()):
            classifier["k"] = draw(st.integers(1, 50))
        if draw(st.booleans()):
            classifier["min_confidence"] = draw(st.floats(0, 1))
        if draw(st.booleans()):
            classifier["min_similarity"] = draw(st.floats(0, 1))
        policy["classifier"] = classifier
    if draw(st.booleans()):
        policy["models"] = [
            {"name": "small-model", "tier": "small", "max_concurrency": draw(st.integers(1, 1000))},
            {"name": "large-model", "tier": "large", "max_concurrency": draw(st.integers(1, 1000))},
        ]
    return policy


@untimed
@given(policies())
def test_every_valid_policy_loads_as_written(data: dict[str, Any]) -> None:
    policy = parse_policy(data)

    declared = [category["name"] for category in data["categories"]]
    assert list(policy.names[: len(declared)]) == declared
    assert policy.names.count(DEFAULT) == 1
    if DEFAULT not in declared:
        assert policy.names[-1] == DEFAULT
    for raw, category in zip(data["categories"], policy.categories, strict=False):
        assert category.name == raw["name"]
        assert category.similarity_threshold == raw["similarity_threshold"]
        assert category.ttl_s == raw["ttl_s"]
        assert category.exemplars == tuple(raw.get("exemplars", ()))
        assert category.patterns == tuple(raw.get("patterns", ()))
        assert category.cacheable is raw.get("cacheable", True)
        assert category.min_threshold <= category.similarity_threshold
        assert category.max_ttl_s >= category.ttl_s
        if category.near_miss_floor is not None:
            assert category.near_miss_floor < category.min_threshold
    assert policy.exemplars() == {c["name"]: tuple(c["exemplars"]) for c in data["categories"] if c.get("exemplars")}
    assert parse_policy(copy.deepcopy(data)) == policy


# --- generated invalid policies: each mutation breaks one thing at a known path -------------------

Mutation = Callable[[dict[str, Any]], str]
"""Breaks one category (given as YAML data) and returns the path of the problem, relative to it."""


def threshold_out_of_range(value: float) -> Mutation:
    def mutate(category: dict[str, Any]) -> str:
        category["similarity_threshold"] = value
        return "similarity_threshold"

    return mutate


def bad_ttl(value: float) -> Mutation:
    def mutate(category: dict[str, Any]) -> str:
        category["ttl_s"] = value
        return "ttl_s"

    return mutate


def floor_not_below_threshold(category: dict[str, Any]) -> str:
    category["near_miss_floor"] = category["similarity_threshold"]
    return "near_miss_floor"


def min_threshold_above_threshold(category: dict[str, Any]) -> str:
    category.update(similarity_threshold=0.8, bounds={**category.get("bounds", {}), "min_threshold": 0.9})
    category.pop("near_miss_floor", None)
    return "bounds.min_threshold"


def min_threshold_not_above_floor(category: dict[str, Any]) -> str:
    category.update(
        similarity_threshold=0.9, near_miss_floor=0.8, bounds={**category.get("bounds", {}), "min_threshold": 0.75}
    )
    return "bounds.min_threshold"


def max_ttl_below_ttl(category: dict[str, Any]) -> str:
    category.update(ttl_s=600, bounds={**category.get("bounds", {}), "max_ttl_s": 300})
    return "bounds.max_ttl_s"


def bad_regex(category: dict[str, Any]) -> str:
    category["patterns"] = [*category.get("patterns", []), "(unclosed"]
    return f"patterns[{len(category['patterns']) - 1}]"


def unknown_key(key: str) -> Mutation:
    def mutate(category: dict[str, Any]) -> str:
        category[key] = 1
        return key

    return mutate


def wrong_type(key: str, value: Any, at: str | None = None) -> Mutation:
    def mutate(category: dict[str, Any]) -> str:
        category[key] = value
        return at or key

    return mutate


MUTATIONS: list[Mutation] = [
    threshold_out_of_range(0),
    threshold_out_of_range(-0.2),
    threshold_out_of_range(1.4),
    bad_ttl(0),
    bad_ttl(-60),
    floor_not_below_threshold,
    min_threshold_above_threshold,
    min_threshold_not_above_floor,
    max_ttl_below_ttl,
    bad_regex,
    unknown_key("similarity_treshold"),
    unknown_key("ttl"),
    unknown_key("colour"),
    wrong_type("ttl_s", "one hour"),
    wrong_type("max_entries", 1.5),
    wrong_type("cacheable", "yes"),
    wrong_type("tier", "medium"),
    wrong_type("exemplars", "not a list"),
    wrong_type("keywords", ["fine", 7], at="keywords[1]"),
    wrong_type("bounds", [0.9], at="bounds"),
]


@untimed
@given(policies(min_categories=2), st.data())
def test_every_problem_is_reported_at_once_with_its_path(data: dict[str, Any], draw: st.DataObject) -> None:
    broken = copy.deepcopy(data)
    indices = draw.draw(st.lists(st.integers(0, len(broken["categories"]) - 1), min_size=1, unique=True))
    expected: set[str] = set()
    for index in indices:
        mutate = draw.draw(st.sampled_from(MUTATIONS))
        expected.add(f"categories[{index}].{mutate(broken['categories'][index])}")
    if draw.draw(st.booleans()):
        # A duplicate name is reported at the later category, whatever else is wrong with either.
        later = draw.draw(st.integers(1, len(broken["categories"]) - 1))
        if broken["categories"][later]["name"] != DEFAULT:
            broken["categories"][later]["name"] = broken["categories"][0]["name"]
            expected.add(f"categories[{later}].name")
    if draw.draw(st.booleans()):
        broken["categorys"] = []
        expected.add("categorys")

    problems = problems_of(broken)

    assert paths_of(problems) == expected
    assert len(problems) == len(set(problems))


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (threshold_out_of_range(1.4), "categories[1].similarity_threshold: must be in (0, 1], got 1.4"),
        (threshold_out_of_range(0), "categories[1].similarity_threshold: must be in (0, 1], got 0.0"),
        (bad_ttl(-60), "categories[1].ttl_s: must be > 0, got -60.0"),
        (floor_not_below_threshold, "categories[1].near_miss_floor: must be < similarity_threshold (0.9), got 0.9"),
        (
            min_threshold_above_threshold,
            "categories[1].bounds.min_threshold: must be <= similarity_threshold (0.8), got 0.9",
        ),
        (
            min_threshold_not_above_floor,
            "categories[1].bounds.min_threshold: must be > near_miss_floor (0.8), got 0.75",
        ),
        (max_ttl_below_ttl, "categories[1].bounds.max_ttl_s: must be >= ttl_s (600), got 300"),
        (
            unknown_key("similarity_treshold"),
            "categories[1].similarity_treshold: unknown key (did you mean 'similarity_threshold'?)",
        ),
        (unknown_key("ttl"), "categories[1].ttl: unknown key (did you mean 'ttl_s'?)"),
        (unknown_key("colour"), "categories[1].colour: unknown key"),
        (wrong_type("ttl_s", "one hour"), "categories[1].ttl_s: must be a number, got 'one hour'"),
        (wrong_type("max_entries", 1.5), "categories[1].max_entries: must be an integer, got 1.5"),
        (wrong_type("cacheable", "yes"), "categories[1].cacheable: must be true/false, got 'yes'"),
        (wrong_type("tier", "medium"), "categories[1].tier: must be one of 'small', 'large', got 'medium'"),
        (wrong_type("exemplars", "not a list"), "categories[1].exemplars: must be a list, got str"),
        (wrong_type("keywords", ["fine", 7], at="keywords[1]"), "categories[1].keywords[1]: must be a string, got 7"),
        (wrong_type("keywords", ["fine", "  "]), "categories[1].keywords[1]: must not be empty"),
        (
            wrong_type("name", "two words"),
            "categories[1].name: must be 1-64 letters, digits, '_', '-' or '.' "
            "(starting with a letter or digit), got 'two words'",
        ),
    ],
)
def test_each_kind_of_problem_says_why(mutate: Mutation, problem: str) -> None:
    data = {
        "categories": [
            {"name": "code", "exemplars": ["How do I reverse a list in Python?"]},
            {"name": "chat", "exemplars": ["Tell me a joke"], "similarity_threshold": 0.9, "ttl_s": 3600},
        ]
    }
    mutate(data["categories"][1])

    assert problems_of(data) == [problem]


def test_a_bad_regex_names_its_index_and_the_reason() -> None:
    problems = problems_of(
        {"categories": [{"name": "prices", "patterns": [r"\bprice\b", "(unclosed", "a*"]}]},
    )

    assert problems == [
        "categories[0].patterns[1]: not a valid regular expression: missing ), unterminated subpattern at position 0",
        "categories[0].patterns[2]: matches the empty string, so it would match every prompt: 'a*'",
    ]


def test_a_duplicate_name_is_reported_even_when_both_categories_have_other_problems() -> None:
    problems = problems_of(
        {
            "categories": [
                {"name": "code", "exemplars": ["x"], "ttl_s": -1},
                {"name": "chat", "exemplars": ["y"]},
                {"name": "code", "exemplars": ["z"], "similarity_threshold": 2},
            ]
        }
    )

    assert problems == [
        "categories[0].ttl_s: must be > 0, got -1.0",
        "categories[2].similarity_threshold: must be in (0, 1], got 2.0",
        "categories[2].name: duplicate of categories[0].name ('code')",
    ]


def test_policy_level_problems() -> None:
    problems = problems_of(
        {
            "classifier": {"method": "svm", "k": 0, "min_confidence": 1.5, "margin": 0.1},
            "models": [
                {"name": "small", "tier": "small", "max_concurrency": 0},
                {"name": "small", "tier": "small", "max_concurrency": 4},
                {"tier": "huge", "max_concurrency": 4},
            ],
            "categories": [{"name": "code", "exemplars": ["x"]}, "chat"],
            "categorise": True,
        }
    )

    assert problems == [
        "categorise: unknown key (did you mean 'categories'?)",
        "categories[1]: must be a mapping, got str",
        "classifier.margin: unknown key",
        "classifier.method: must be one of 'centroid', 'knn', got 'svm'",
        "classifier.k: must be in [1, 1000], got 0",
        "classifier.min_confidence: must be in [0, 1], got 1.5",
        "models[0].max_concurrency: must be >= 1, got 0",
        "models[2].name: required",
        "models[2].tier: must be one of 'small', 'large', got 'huge'",
        "models[1].name: duplicate of models[0].name ('small')",
    ]


def test_a_category_needs_something_to_be_recognized_by_except_default() -> None:
    assert problems_of({"categories": [{"name": "code"}]}) == [
        "categories[0]: needs exemplars, keywords or patterns, or no request can ever be put in it"
    ]
    assert parse_policy({"categories": [{"name": DEFAULT}]}).names == (DEFAULT,)


def test_a_preferred_tier_must_have_a_model_when_models_are_declared() -> None:
    problems = problems_of(
        {
            "models": [{"name": "big", "tier": "large", "max_concurrency": 4}],
            "categories": [{"name": "chat", "exemplars": ["hi"], "tier": "small"}],
        }
    )

    assert problems == ["categories[0].tier: no model of tier 'small' in models (declared: large)"]


def test_model_names_are_unique() -> None:
    problems = problems_of(
        {
            "models": [
                {"name": "m", "tier": "large", "max_concurrency": 4},
                {"name": "m", "tier": "small", "max_concurrency": 4},
            ],
            "categories": [{"name": "chat", "exemplars": ["hi"]}],
        }
    )

    assert problems == ["models[1].name: duplicate of models[0].name ('m')"]


def test_the_categories_are_required_and_not_empty() -> None:
    assert problems_of(None) == ["categories: required"]
    assert problems_of({"categories": []}) == ["categories: must not be empty"]
    assert problems_of(["code"]) == ["(top level): must be a mapping, got list"]


# --- the default category ------------------------------------------------------------------------


def test_a_policy_without_default_gets_the_conservative_one_last() -> None:
    policy = parse_policy({"categories": [{"name": "code", "exemplars": ["x"], "similarity_threshold": 0.8}]})

    assert policy.names == ("code", DEFAULT)
    assert policy.default == Category(name=DEFAULT)
    assert policy.default.similarity_threshold == 0.95
    assert policy.default.ttl_s == 3600
    assert policy.default.max_entries == 1000
    assert policy.default.cacheable is True
    assert policy.default.near_miss_floor is None
    assert (policy.default.min_threshold, policy.default.max_ttl_s) == (0.95, 3600)
    assert policy.default.tier == "large"


def test_the_implicit_default_prefers_the_only_declared_tier() -> None:
    policy = parse_policy(
        {
            "models": [{"name": "tiny", "tier": "small", "max_concurrency": 4}],
            "categories": [{"name": "chat", "exemplars": ["hi"], "tier": "small"}],
        }
    )

    assert policy.default.tier == "small"


def test_a_declared_default_is_kept_where_it_is() -> None:
    policy = parse_policy(
        {
            "categories": [
                {"name": DEFAULT, "similarity_threshold": 0.99, "ttl_s": 60},
                {"name": "code", "exemplars": ["x"]},
            ]
        }
    )

    assert policy.names == (DEFAULT, "code")
    assert policy.default.similarity_threshold == 0.99
    assert policy.category("code").exemplars == ("x",)
    with pytest.raises(KeyError):
        policy.category("chat")


def test_bounds_default_to_no_adaptation() -> None:
    category = Category(name="code", exemplars=("x",), similarity_threshold=0.9, ttl_s=60)
    bounded = dataclasses.replace(category, bounds=Bounds(min_threshold=0.85, max_ttl_s=120))

    assert (category.min_threshold, category.max_ttl_s) == (0.9, 60)
    assert (bounded.min_threshold, bounded.max_ttl_s) == (0.85, 120)


def test_feedback_rules_per_category() -> None:
    policy = parse_policy(
        {
            "categories": [
                {"name": "code", "keywords": ["python"], "similarity_threshold": 0.9,
                 "feedback": {"target_error_rate": 0.01, "max_threshold": 0.97}},
            ]
        }
    )  # fmt: skip

    assert policy.category("code").feedback == FeedbackRules(target_error_rate=0.01, max_threshold=0.97)
    assert policy.default.feedback == FeedbackRules()  # the gateway's target, up to 1.0


def test_feedback_rules_are_checked() -> None:
    problems = problems_of(
        {
            "categories": [
                {"name": "code", "keywords": ["python"], "similarity_threshold": 0.9,
                 "feedback": {"max_threshold": 0.8}},
                {"name": "chat", "keywords": ["joke"], "feedback": {"target_error_rate": 1, "max_treshold": 1}},
                {"name": "math", "keywords": ["sum"], "feedback": {"target_error_rate": 0}},
            ]
        }
    )  # fmt: skip

    assert problems == [
        "categories[0].feedback.max_threshold: must be >= similarity_threshold (0.9), got 0.8",
        "categories[1].feedback.max_treshold: unknown key (did you mean 'max_threshold'?)",
        "categories[1].feedback.target_error_rate: must be in (0, 1), got 1.0",
        "categories[2].feedback.target_error_rate: must be in (0, 1), got 0.0",
    ]


def test_a_policy_is_frozen_and_checked_when_built_in_code() -> None:
    policy = Policy(categories=(Category(name="code", keywords=("python",)),))

    assert policy.names == ("code", DEFAULT)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.categories = ()  # type: ignore[misc]
    with pytest.raises(Invalid) as raised:
        Category(name="code", keywords=("python",), similarity_threshold=0.8, near_miss_floor=0.9)
    assert raised.value.problems == [("near_miss_floor", "must be < similarity_threshold (0.8), got 0.9")]
    with pytest.raises(Invalid):
        Policy(categories=(Category(name="a", keywords=("x",)), Category(name="a", keywords=("y",))))


# --- files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["general_assistant", "coding_assistant", "customer_support"])
def test_the_example_policies_load(name: str) -> None:
    policy = load_policy(EXAMPLES / f"{name}.yaml")

    assert DEFAULT in policy.names
    assert len(policy.categories) >= 5
    for category in policy.categories:
        if category.name != DEFAULT:
            assert 5 <= len(category.exemplars) <= 15, category.name
    assert {model.tier for model in policy.models} == {"small", "large"}


def test_the_example_policies_keep_real_time_and_personal_requests_out_of_the_cache() -> None:
    general = load_policy(EXAMPLES / "general_assistant.yaml")
    coding = load_policy(EXAMPLES / "coding_assistant.yaml")
    support = load_policy(EXAMPLES / "customer_support.yaml")

    assert general.category("realtime").cacheable is False
    assert general.category("rewrite").cacheable is False
    assert general.category("code").similarity_threshold > general.category("chat").similarity_threshold
    assert general.category("code").ttl_s > general.category("chat").ttl_s
    assert coding.category("releases").ttl_s <= 3600
    assert coding.default == Category(name=DEFAULT)
    assert support.category("order_status").cacheable is False
    assert support.category("promotions").ttl_s <= 3600


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("categories: [{name: code\n", encoding="utf-8")

    with pytest.raises(PolicyError) as raised:
        load_policy(path)

    assert raised.value.source == str(path)
    assert raised.value.problems[0].startswith("not valid YAML")


def test_a_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as raised:
        load_policy(tmp_path / "absent.yaml")

    assert raised.value.problems == ["cannot read the file: No such file or directory"]


def test_a_file_with_problems_names_the_file_and_paths(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "categories:\n  - name: code\n    exemplars: [x]\n  - name: chat\n    exemplars: [y]\n"
        "  - name: prices\n    keywords: [price]\n    similarity_threshold: 1.4\n",
        encoding="utf-8",
    )

    with pytest.raises(PolicyError) as raised:
        load_policy(path)

    assert str(raised.value) == f"{path}: categories[2].similarity_threshold: must be in (0, 1], got 1.4"


def test_a_local_embedding_model_is_relative_to_the_policy_file(tmp_path: Path) -> None:
    (tmp_path / "models" / "tuned").mkdir(parents=True)
    local = tmp_path / "local.yaml"
    local.write_text("embedding_model: models/tuned\ncategories:\n  - name: default\n")
    hub = tmp_path / "hub.yaml"
    hub.write_text("embedding_model: sentence-transformers/all-mpnet-base-v2\ncategories:\n  - name: default\n")

    assert load_policy(local).embedding_model == str((tmp_path / "models" / "tuned").resolve())
    assert load_policy(hub).embedding_model == "sentence-transformers/all-mpnet-base-v2"
    assert load_policy(EXAMPLES / "general_assistant.yaml").embedding_model is None
    missing = tmp_path / "missing.yaml"
    missing.write_text("embedding_model: ./models/gone\ncategories:\n  - name: default\n")
    with pytest.raises(PolicyError, match="embedding_model: no model folder"):
        load_policy(missing)
