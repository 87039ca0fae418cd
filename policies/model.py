"""The policy: categories of requests, each with its own cache rules, loaded from one YAML file.

    policy = load_policy("examples/policy_files/general_assistant.yaml")
    policy.category("code").similarity_threshold

Every problem in a file is reported at once, each as `<yaml path>: <reason>`, by `PolicyError`.

A category that states nothing gets the conservative values (`Category`'s defaults):
similarity_threshold 0.95 (only near-verbatim rephrasings hit), ttl_s 3600 (one hour),
max_entries 1000, cacheable true, no near-miss band, no load adaptation (bounds equal to the
values themselves), the gateway's feedback target error rate with a threshold feedback may raise
up to 1.0, tier "large" (quality first when nothing is known about the request), offload to the
other tier under load allowed.
The `default` category catches every request that no rule matches and that the classifier cannot
place with enough confidence. A file that does not declare one gets `Category(name="default")`,
appended last, with exactly those values, except that its tier is "small" when `models` declares
only small models.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml

from policies.errors import PolicyError
from policies.schema import build, check, check_each, in_range, positive, run_rules

DEFAULT = "default"
"""The name of the catch-all category."""

Tier = Literal["small", "large"]
ClassifierMethod = Literal["centroid", "knn"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _valid_name(value: Any) -> str | None:
    # Names end up in metric labels, index keys and the x-semcache-category header.
    if _NAME.fullmatch(value):
        return None
    return f"must be 1-64 letters, digits, '_', '-' or '.' (starting with a letter or digit), got {value!r}"


def _non_blank(value: Any) -> str | None:
    return None if value.strip() else "must not be empty"


def _non_empty(value: Any) -> str | None:
    return None if value else "must not be empty"


def _at_least_one(value: Any) -> str | None:
    return None if value >= 1 else f"must be >= 1, got {value!r}"


def _regex(value: Any) -> str | None:
    try:
        compiled = re.compile(value)
    except re.error as exc:
        return f"not a valid regular expression: {exc}"
    if compiled.search("") is not None:
        return f"matches the empty string, so it would match every prompt: {value!r}"
    return None


def _unit(low_open: bool = True) -> dict[str, Any]:
    return check(in_range(0, 1, low_open=low_open))


def _error_bound(value: Any) -> str | None:
    """A verified threshold's error bound δ: in [0, 0.5] (0: a semantic hit is never served)."""
    return None if 0 <= value <= 0.5 else f"must be in [0, 0.5], got {value!r}"


def error_rate(value: Any) -> str | None:
    """A target error rate: in (0, 1) (0 would forbid every semantic hit; 1 allows any)."""
    return None if 0 < value < 1 else f"must be in (0, 1), got {value!r}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Bounds:
    """How far load adaptation may move a category's rules; unset: not at all in that direction."""

    # Under load, the hit threshold may be lowered down to this (more hits, fewer upstream calls).
    min_threshold: float | None = field(default=None, metadata=_unit())
    # ... and entries kept up to this long.
    max_ttl_s: float | None = field(default=None, metadata=check(positive))


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackRules:
    """How ratings of served hits (POST /v1/feedback) may move the category's hit threshold: bad
    ratings tighten it, good ones relax it slowly, never below `similarity_threshold`
    (policies/feedback.py)."""

    # Share of rated semantic hits allowed to be bad. Unset: the gateway's feedback.target_error_rate.
    target_error_rate: float | None = field(default=None, metadata=check(error_rate))
    # Highest threshold bad ratings may raise it to. Unset: 1.0; equal to similarity_threshold:
    # feedback never moves this category's threshold (bad hits are still removed).
    max_threshold: float | None = field(default=None, metadata=_unit())


@dataclass(frozen=True, slots=True, kw_only=True)
class Category:
    """One kind of request and its cache rules. Defaults are the conservative values."""

    name: str = field(metadata=check(_valid_name))
    # Prompts typical of the category: the classifier's examples (embedded once, at load).
    exemplars: tuple[str, ...] = field(default=(), metadata=check_each(_non_blank))
    # Plain words or phrases, matched case-insensitively as whole words; a match wins over the
    # embedding classifier. Categories are tried in file order: put the specific ones first.
    keywords: tuple[str, ...] = field(default=(), metadata=check_each(_non_blank))
    # Python regular expressions, searched anywhere in the prompt, as written (`(?i)` for case).
    patterns: tuple[str, ...] = field(default=(), metadata=check_each(_regex))
    # Cosine similarity in (0, 1] a stored prompt needs to be served for this one.
    similarity_threshold: float = field(default=0.95, metadata=_unit())
    # Seconds a stored answer may be served after it was stored.
    ttl_s: float = field(default=3600.0, metadata=check(positive))
    # Quota: most entries kept for this category (per gateway); beyond it the least valuable go.
    max_entries: int = field(default=1000, metadata=check(_at_least_one))
    # False: never served from the cache and never stored (real-time data, personal data).
    cacheable: bool = True
    # Lowest similarity of the near-miss band [floor, threshold): a near miss sends the stored
    # answers as few-shot examples to the small model. Unset: no band, a miss is a miss.
    near_miss_floor: float | None = field(default=None, metadata=_unit())
    bounds: Bounds = field(default_factory=Bounds)
    feedback: FeedbackRules = field(default_factory=FeedbackRules)
    # Model tier preferred on a miss.
    tier: Tier = "large"
    # Verified thresholds (the gateway's `verified` section): the most a served semantic hit may be
    # wrong, δ in [0, 0.5]; 0 never serves one. Unset: the policy's `error_bound`.
    error_bound: float | None = field(default=None, metadata=check(_error_bound))
    # Whether its misses may go to the other tier when the preferred one is past the high watermark.
    offload: bool = True

    def __post_init__(self) -> None:
        run_rules(self)

    @staticmethod
    def schema_rules(values: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        threshold = values.get("similarity_threshold")
        floor = values.get("near_miss_floor")
        bounds: Bounds | None = values.get("bounds")
        if threshold is not None and floor is not None and floor >= threshold:
            yield "near_miss_floor", f"must be < similarity_threshold ({threshold:g}), got {floor:g}"
            floor = None  # said once is enough
        if bounds is not None and bounds.min_threshold is not None:
            if threshold is not None and bounds.min_threshold > threshold:
                yield (
                    "bounds.min_threshold",
                    f"must be <= similarity_threshold ({threshold:g}), got {bounds.min_threshold:g}",
                )
            elif floor is not None and bounds.min_threshold <= floor:
                yield "bounds.min_threshold", f"must be > near_miss_floor ({floor:g}), got {bounds.min_threshold:g}"
        feedback: FeedbackRules | None = values.get("feedback")
        ceiling = None if feedback is None else feedback.max_threshold
        if threshold is not None and ceiling is not None and ceiling < threshold:
            yield "feedback.max_threshold", f"must be >= similarity_threshold ({threshold:g}), got {ceiling:g}"
        ttl_s = values.get("ttl_s")
        if bounds is not None and bounds.max_ttl_s is not None and ttl_s is not None and bounds.max_ttl_s < ttl_s:
            yield "bounds.max_ttl_s", f"must be >= ttl_s ({ttl_s:g}), got {bounds.max_ttl_s:g}"
        signals = [values.get(name) for name in ("exemplars", "keywords", "patterns")]
        if values.get("name") not in (None, DEFAULT) and signals == [(), (), ()]:
            yield "", "needs exemplars, keywords or patterns, or no request can ever be put in it"

    @property
    def min_threshold(self) -> float:
        """The lowest threshold load adaptation may use (the threshold itself when unbounded)."""
        bound = self.bounds.min_threshold
        return self.similarity_threshold if bound is None else bound

    @property
    def max_ttl_s(self) -> float:
        """The longest TTL load adaptation may use (the TTL itself when unbounded)."""
        bound = self.bounds.max_ttl_s
        return self.ttl_s if bound is None else bound


@dataclass(frozen=True, slots=True, kw_only=True)
class ClassifierSettings:
    """How a request is put in a category when no keyword or pattern matches."""

    # centroid: similarity to the normalized mean of each category's exemplars.
    # knn: mean similarity to each category's `k` nearest exemplars. More accurate on real traffic
    # (bench/RESULTS-classifier.md), a few tens of microseconds a request either way.
    method: ClassifierMethod = "knn"
    k: int = field(default=5, metadata=check(in_range(1, 1000)))
    # Margin: the best category's score minus the runner-up's; below it the request is `default`.
    min_confidence: float = field(default=0.02, metadata=_unit(low_open=False))
    # Floor: the best category's score itself; below it the request is off-topic for every
    # category and goes to `default`. Scores are cosine similarities (to a centroid, or averaged
    # over the k nearest exemplars), so a centroid's are lower than a nearest exemplar's.
    min_similarity: float = field(default=0.15, metadata=_unit(low_open=False))


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """A model the router may send misses to, with its tier and how many calls it takes at once."""

    name: str = field(metadata=check(_non_blank))
    tier: Tier
    max_concurrency: int = field(metadata=check(_at_least_one))


def _duplicates(names: Sequence[object], where: str) -> Iterator[tuple[str, str]]:
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str):
            continue
        if name in first:
            yield f"{where}[{i}].name", f"duplicate of {where}[{first[name]}].name ({name!r})"
        else:
            first[name] = i


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """Categories (in file order, `default` always among them), classifier settings and models."""

    categories: tuple[Category, ...] = field(metadata=check(_non_empty))
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    models: tuple[ModelSpec, ...] = ()
    # The embedding model the thresholds were calibrated for (e.g. one `semcache tune` made); it
    # replaces the config's `embedding.model`. A local folder is relative to the policy file.
    embedding_model: str | None = None
    # The error bound δ of verified thresholds for categories that set none.
    error_bound: float = field(default=0.02, metadata=check(_error_bound))
    _by_name: Mapping[str, Category] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        run_rules(self)
        categories = tuple(self.categories)
        if all(category.name != DEFAULT for category in categories):
            categories = (*categories, _implicit_default(self.models))
        object.__setattr__(self, "categories", categories)
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "_by_name", MappingProxyType({category.name: category for category in categories}))

    @staticmethod
    def schema_rules(values: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        categories: Sequence[Category] | None = values.get("categories")
        models: Sequence[ModelSpec] | None = values.get("models")
        if categories is not None:
            yield from _duplicates([category.name for category in categories], "categories")
        if models is not None:
            yield from _duplicates([model.name for model in models], "models")
        if categories and models:
            tiers = {model.tier for model in models}
            for i, category in enumerate(categories):
                if category.tier not in tiers:
                    declared = ", ".join(sorted(tiers))
                    yield (
                        f"categories[{i}].tier",
                        f"no model of tier {category.tier!r} in models (declared: {declared})",
                    )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    @property
    def default(self) -> Category:
        return self._by_name[DEFAULT]

    def category(self, name: str) -> Category:
        """The category of that name; KeyError for an unknown one."""
        return self._by_name[name]

    def error_bound_of(self, category: Category) -> float:
        """The category's verified-threshold error bound δ, or the policy's."""
        return self.error_bound if category.error_bound is None else category.error_bound

    def exemplars(self) -> dict[str, tuple[str, ...]]:
        """Each category's exemplar prompts, for the caller to embed once and hand to the classifier."""
        return {category.name: category.exemplars for category in self.categories if category.exemplars}


def _implicit_default(models: Sequence[ModelSpec]) -> Category:
    # The conservative values; the large tier unless only small models are declared.
    tiers = {model.tier for model in models}
    return Category(name=DEFAULT, tier="small" if tiers == {"small"} else "large")


def parse_policy(data: Any, *, source: str = "<policy>") -> Policy:
    """Validate parsed YAML; raise `PolicyError` listing every problem."""
    policy, problems = build(Policy, data)
    # A duplicate name is reported even when one of the two entries has other problems (the
    # schema's rules only see lists that converted cleanly); dict.fromkeys drops the repeats.
    if isinstance(data, dict):
        for where in ("categories", "models"):
            items = data.get(where)
            if isinstance(items, list):
                names = [item.get("name") if isinstance(item, dict) else None for item in items]
                problems.extend(f"{at}: {why}" for at, why in _duplicates(names, where))
        problems = list(dict.fromkeys(problems))
    if problems or policy is None:
        raise PolicyError(source, problems)
    return policy


def load_policy(path: str | Path) -> Policy:
    """Read and validate one policy file; raise `PolicyError` for anything wrong with it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(str(path), [f"not valid YAML: {exc}"]) from exc
    policy = parse_policy(data, source=str(path))
    model = policy.embedding_model
    if model is None or model.startswith("packaged:"):
        return policy
    folder = Path(path).parent / model  # an absolute `model` stays itself
    if folder.is_dir():
        return replace(policy, embedding_model=str(folder.resolve()))
    if Path(model).is_absolute() or model.startswith(("./", "../")):  # a path, not a hub name
        raise PolicyError(str(path), [f"embedding_model: no model folder at {folder}"])
    return policy
