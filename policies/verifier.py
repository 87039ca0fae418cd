"""Second opinion on a semantic candidate before it is served: a similarity threshold alone is a
poor judge ("price of X in 2023" vs "2024" embed at ~0.98). Pure: texts and numbers in, a verdict out.

    verifier = LogisticVerifier.from_json(text)      # fitted and calibrated by `semcache calibrate`
    verifier.accepts(query=q, candidate=c, similarity=0.97)

`pair_features` turns a (query, candidate, similarity) triple into a fixed vector of cheap checks
for the classic false hits (numbers, years, dates, units, negation, direction, names, words only on
one side) plus the similarity itself; `LogisticVerifier` weighs them with a logistic model fitted by
`fit_logistic` (numpy IRLS) and serves a candidate when its probability of being the same question
reaches `min_probability` (chosen by `policies.calibration.calibrate_verifier`). Vetoes refuse
the classic false hits outright, whatever the model learned from its labels.

Cost: ~0.2 ms per candidate for question-sized texts (regular expressions and set operations).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from policies.errors import VerifierError

FORMAT_VERSION = 1
Features = npt.NDArray[np.float64]


@runtime_checkable
class Verifier(Protocol):
    """Judges candidates whose similarity is at least `floor`; the engine serves a candidate only
    if `accepts` says so (below `floor` nothing is served)."""

    @property
    def floor(self) -> float: ...

    def accepts(self, *, query: str, candidate: str, similarity: float) -> bool: ...


# --- text checks -------------------------------------------------------------------------------

# Words, numbers and codes ("M605x", "2.8", "U.S"); an apostrophe or a dot/comma between two
# word characters stays inside the token.
_TOKEN = re.compile(r"[^\W_]+(?:['\u2019.,][^\W_]+)*")
_YEAR = re.compile(r"\b(?:1[89]\d\d|20\d\d)s?\b")
_DATE = re.compile(r"\b\d{1,4}[/-]\d{1,2}(?:[/-]\d{1,4})?\b|\b\d{1,2}\.\d{1,2}\.\d{2,4}\b")


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


_STOPWORDS = _wordset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his i if in into is it its itself just me
    more most my myself now of off on once only other our ours ourselves out over own same she should
    so some such than that the their theirs them themselves then there these they this those through
    to too under until up very was we were will with would you your yours yourself yourselves
    what which who whom whose when where why how get got one ones thing things way ways someone
    something anyone anything people person really much many also like make best good or vs versus"""
)
_NEGATIONS = _wordset("not never no without cannot none nobody nothing neither nor nowhere")
_QUESTION_WORDS = ("what", "how", "why", "when", "where", "who", "which")
_MONTHS_DAYS = _wordset(
    """january february march april may june july august september october november december jan feb mar
    apr jun jul aug sep sept oct nov dec monday tuesday wednesday thursday friday saturday sunday today
    tomorrow yesterday tonight weekend"""
)
_UNITS = {
    **dict.fromkeys(("km", "kms", "kilometer", "kilometers", "kilometre", "kilometres"), "km"),
    **dict.fromkeys(("mile", "miles", "mi"), "mile"),
    **dict.fromkeys(("m", "meter", "meters", "metre", "metres"), "m"),
    **dict.fromkeys(("cm", "centimeter", "centimeters", "mm", "millimeter", "millimeters"), "cm"),
    **dict.fromkeys(("ft", "foot", "feet", "inch", "inches", "yard", "yards"), "ft"),
    **dict.fromkeys(("kg", "kgs", "kilogram", "kilograms", "g", "gram", "grams"), "kg"),
    **dict.fromkeys(("lb", "lbs", "pound", "pounds", "oz", "ounce", "ounces"), "lb"),
    **dict.fromkeys(("c", "celsius", "centigrade"), "celsius"),
    **dict.fromkeys(("f", "fahrenheit"), "fahrenheit"),
    **dict.fromkeys(("l", "liter", "liters", "litre", "litres", "ml", "gallon", "gallons"), "litre"),
    **dict.fromkeys(("usd", "dollar", "dollars", "$"), "usd"),
    **dict.fromkeys(("eur", "euro", "euros", "€"), "eur"),
    **dict.fromkeys(("gbp", "£", "sterling"), "gbp"),
    **dict.fromkeys(("inr", "rupee", "rupees", "rs"), "inr"),
    **dict.fromkeys(("yen", "jpy", "¥"), "jpy"),
    **dict.fromkeys(("bitcoin", "btc"), "btc"),
    **dict.fromkeys(("second", "seconds", "sec", "secs"), "second"),
    **dict.fromkeys(("minute", "minutes", "min", "mins"), "minute"),
    **dict.fromkeys(("hour", "hours", "hr", "hrs"), "hour"),
    **dict.fromkeys(("day", "days"), "day"),
    **dict.fromkeys(("week", "weeks"), "week"),
    **dict.fromkeys(("month", "months"), "month"),
    **dict.fromkeys(("year", "years"), "year"),
    **dict.fromkeys(("kb", "mb", "gb", "tb", "byte", "bytes"), "byte"),
    **dict.fromkeys(("percent", "%"), "percent"),
}
# Short symbols and everyday words ("m", "c", "day", "year") are units only right after a number.
_AFTER_NUMBER_ONLY = frozenset(
    symbol
    for symbol, unit in _UNITS.items()
    if len(symbol) <= 2 or unit in {"second", "minute", "hour", "day", "week", "month", "year"}
)
_MAX_ORDERED = 48
# "A to B" / "A into B" / "A than B": swapping the sides changes the question.
_DIRECTED = frozenset({"to", "into", "than"})
# "A vs B" / "A or B": swapping the sides usually does not; the fit decides what it is worth.
_COMPARED = frozenset({"vs", "versus", "or"})


@dataclass(frozen=True, slots=True)
class _Text:
    words: tuple[str, ...]  # lower case, in order
    content: tuple[str, ...]  # stemmed content words, in order
    names: frozenset[str]  # lower-cased capitalised words past the first, and acronyms
    numbers: frozenset[str]  # tokens with a digit: amounts, versions, model codes
    years: frozenset[str]
    dates: frozenset[str]
    units: frozenset[str]
    negated: bool
    question_word: str
    directed: frozenset[tuple[str, str]]
    compared: frozenset[tuple[str, str]]


def _stem(word: str) -> str:
    word = word.removesuffix("'s")
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix) and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def _number(token: str) -> str:
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+", token):  # thousands separators
        return token.replace(",", "")
    return token.removesuffix(".0") if re.fullmatch(r"\d+\.0", token) else token


def _ordered_pairs(words: Sequence[str], connectors: frozenset[str]) -> frozenset[tuple[str, str]]:
    """(left, right) around each connector: the nearest content word on each side. "from A to B"
    gives (A, B) whatever stands between."""
    pairs: set[tuple[str, str]] = set()

    def nearest(start: int, step: int) -> str | None:
        index = start
        while 0 <= index < len(words):
            word = words[index]
            if word in connectors or word in ("from", "and"):
                return None
            if word not in _STOPWORDS:
                return _stem(word)
            index += step
        return None

    source = words.index("from") if "from" in words else len(words)
    for index, word in enumerate(words):
        if word in connectors:
            left, right = nearest(index - 1, -1), nearest(index + 1, 1)
            if word == "to" and source < index:
                left = nearest(source + 1, 1) or left
            if left and right and left != right:
                pairs.add((left, right))
    return frozenset(pairs)


def _is_negation(word: str) -> bool:
    return word in _NEGATIONS or word.endswith("n't")


def _units(words: Sequence[str]) -> set[str]:
    return {
        _UNITS[word]
        for position, word in enumerate(words)
        if word in _UNITS and (word not in _AFTER_NUMBER_ONLY or (position > 0 and words[position - 1][:1].isdigit()))
    }


def _analyse(text: str) -> _Text:
    tokens = _TOKEN.findall(text.replace("\u2019", "'"))
    words = tuple(token.lower() for token in tokens)
    names = {
        token.lower()
        for position, token in enumerate(tokens)
        if (token.isupper() and len(token) > 1 and token.isalpha())
        or (position > 0 and token[:1].isupper() and token.lower() not in _STOPWORDS)
    }
    symbols = {unit for symbol, unit in _UNITS.items() if not symbol.isalpha() and symbol in text}
    return _Text(
        words=words,
        content=tuple(_stem(word) for word in words if word not in _STOPWORDS and not _is_negation(word)),
        names=frozenset(names),
        numbers=frozenset(_number(word) for word in words if any(char.isdigit() for char in word)),
        years=frozenset(_YEAR.findall(text)),
        dates=frozenset({word for word in words if word in _MONTHS_DAYS} | set(_DATE.findall(text))),
        units=frozenset(_units(words) | symbols),
        negated=any(_is_negation(word) for word in words),
        question_word=next((word for word in words if word in _QUESTION_WORDS), ""),
        directed=_ordered_pairs(words, _DIRECTED),
        compared=_ordered_pairs(words, _COMPARED),
    )


def _swapped(one: frozenset[tuple[str, str]], other: frozenset[tuple[str, str]]) -> bool:
    """Some pair appears reversed on the other side (and not also in its own order)."""
    return any((right, left) in other and (left, right) not in other for left, right in one)


def _inversions(one: Sequence[str], other: Sequence[str]) -> float:
    """Share of discordant pairs among the words both texts use once each (the first
    `_MAX_ORDERED` of them, so a long prompt costs no more): 0.0 in the same order, 1.0 fully
    reversed ("cats afraid of tigers" / "tigers afraid of cats")."""
    counts, other_counts = Counter(one), Counter(other)
    position = {word: index for index, word in enumerate(other)}
    shared = [word for word in one if counts[word] == 1 and other_counts[word] == 1][:_MAX_ORDERED]
    if len(shared) < 2:
        return 0.0
    rank = [position[word] for word in shared]
    pairs = len(rank) * (len(rank) - 1) // 2
    discordant = sum(1 for i, left in enumerate(rank) for right in rank[i + 1 :] if left > right)
    return discordant / pairs


def _jaccard(one: frozenset[Any], other: frozenset[Any]) -> float:
    union = one | other
    return len(one & other) / len(union) if union else 1.0


def _logit(similarity: float) -> float:
    clipped = min(max(similarity, 1e-4), 1.0 - 1e-4)
    return math.log(clipped / (1.0 - clipped))


FEATURE_NAMES: tuple[str, ...] = (
    "similarity",
    "similarity_squared",
    "similarity_logit",
    "similarity_above_0.9",
    "similarity_above_0.95",
    "number_mismatch",
    "year_mismatch",
    "date_mismatch",
    "unit_mismatch",
    "negation_mismatch",
    "direction_swapped",
    "comparison_swapped",
    "order_inversions",
    "name_mismatch_count",
    "question_word_mismatch",
    "content_jaccard",
    "unmatched_content_max",
    "unmatched_content_min",
    "unmatched_long_words",
    "word_bigram_jaccard",
    "length_ratio",
    "same_content",
)
"""What `pair_features` returns, in order; stored with the weights so that a verifier fitted on
another feature set is refused instead of silently misread."""

FLAG_NAMES: tuple[str, ...] = (
    "number_mismatch",
    "year_mismatch",
    "date_mismatch",
    "unit_mismatch",
    "negation_mismatch",
    "direction_swapped",
    "comparison_swapped",
    "question_word_mismatch",
)
"""The 0/1 features: the ones a verifier may use as vetoes."""

DEFAULT_VETOES: tuple[str, ...] = (
    "number_mismatch",
    "year_mismatch",
    "date_mismatch",
    "unit_mismatch",
    "negation_mismatch",
    "direction_swapped",
)
"""The classic false hits: a different number, year, date or unit, a negation on one side only,
a conversion or direction reversed."""


def pair_features(query: str, candidate: str, similarity: float) -> Features:
    """Cheap checks on a (query, candidate) pair, symmetric in the two texts, as `FEATURE_NAMES`.

    Mismatch flags are 1.0 when one text has a number / year / date / unit / negation / name that
    the other lacks (or the same words in swapped roles), 0.0 otherwise; counts are capped at 3 so
    that no single pair dominates a fit. `similarity_above_x` is max(0, similarity - x): with the
    logit, it lets a linear model bend where the classic false hits live."""
    one, other = _analyse(query), _analyse(candidate)
    content = (frozenset(one.content), frozenset(other.content))
    unmatched = (len(content[0] - content[1]), len(content[1] - content[0]))
    long_unmatched = sum(1 for word in content[0] ^ content[1] if len(word) >= 7)
    names = len((one.names - set(other.words)) | (other.names - set(one.words)))
    question_mismatch = bool(one.question_word and other.question_word and one.question_word != other.question_word)
    bigrams = (frozenset(pairwise(one.words)), frozenset(pairwise(other.words)))
    lengths = (len(one.words), len(other.words))
    return np.array(
        [
            similarity,
            similarity * similarity,
            _logit(similarity),
            max(0.0, similarity - 0.9),
            max(0.0, similarity - 0.95),
            float(one.numbers != other.numbers),
            float(one.years != other.years),
            float(one.dates != other.dates),
            float(one.units != other.units),
            float(one.negated != other.negated),
            float(_swapped(one.directed, other.directed) or _swapped(other.directed, one.directed)),
            float(_swapped(one.compared, other.compared) or _swapped(other.compared, one.compared)),
            _inversions(one.content, other.content),
            float(min(names, 3)),
            float(question_mismatch),
            _jaccard(*content),
            float(min(max(unmatched), 3)),
            float(min(*unmatched, 3)),
            float(min(long_unmatched, 3)),
            _jaccard(*bigrams),
            min(lengths) / max(lengths) if max(lengths) else 1.0,
            float(content[0] == content[1]),
        ],
        dtype=np.float64,
    )


# --- the model ---------------------------------------------------------------------------------


def _sigmoid(values: Features) -> Features:
    result: Features = 1.0 / (1.0 + np.exp(-np.clip(values, -40.0, 40.0)))
    return result


def fit_logistic(
    features: npt.ArrayLike, labels: npt.ArrayLike, *, l2: float = 1.0, max_iterations: int = 50
) -> tuple[tuple[float, ...], float]:
    """L2-regularized logistic regression by Newton's method (IRLS); returns (weights, bias) for the
    raw features.

    Columns are standardized for the fit, so `l2` (the penalty on the squared weights, not on the
    bias, in units of one example's log-loss) means the same whatever a feature's scale; constant
    columns get weight 0. Deterministic: no random start, no sampling."""
    matrix = np.asarray(features, dtype=np.float64)
    target = np.asarray(labels, dtype=np.float64)
    if matrix.ndim != 2 or target.shape != (matrix.shape[0],):
        raise ValueError(f"features must be (n, d) and labels (n,), got {matrix.shape} and {target.shape}")
    if matrix.shape[0] == 0 or not np.all(np.isfinite(matrix)):
        raise ValueError("features must be a non-empty, finite matrix")
    if not np.all((target == 0) | (target == 1)):
        raise ValueError("labels must be 0 or 1")
    if l2 < 0:
        raise ValueError("l2 must be >= 0")
    mean = matrix.mean(axis=0)
    scale = matrix.std(axis=0)
    varying = scale > 1e-12
    standard = np.zeros_like(matrix)
    standard[:, varying] = (matrix[:, varying] - mean[varying]) / scale[varying]
    design = np.hstack([standard, np.ones((matrix.shape[0], 1))])
    penalty = np.full(design.shape[1], float(l2))
    penalty[-1] = 0.0
    penalty[:-1][~varying] = max(float(l2), 1.0)  # pins constant columns at 0
    coef = np.zeros(design.shape[1])
    for _ in range(max_iterations):
        probability = _sigmoid(design @ coef)
        gradient = design.T @ (probability - target) + penalty * coef
        curvature = np.maximum(probability * (1.0 - probability), 1e-9)
        hessian = (design * curvature[:, None]).T @ design + np.diag(penalty) + 1e-9 * np.eye(design.shape[1])
        step = np.linalg.solve(hessian, gradient)
        coef -= step
        if float(np.max(np.abs(step))) < 1e-8:
            break
    weights = np.zeros(matrix.shape[1])
    weights[varying] = coef[:-1][varying] / scale[varying]
    bias = float(coef[-1] - np.sum(weights * mean))
    return tuple(float(weight) for weight in weights), bias


def fit_verifier(
    features: npt.ArrayLike, labels: npt.ArrayLike, *, floor: float, l2: float, vetoes: tuple[str, ...] = ()
) -> LogisticVerifier:
    """`fit_logistic` on the pairs the verifier will judge (similarity, column 0, ≥ `floor`), with
    `min_probability` 0.5 until calibrated (`policies.calibration.calibrate_verifier`)."""
    matrix = np.asarray(features, dtype=np.float64)
    truth = np.asarray(labels)
    judged = matrix[:, 0] >= floor
    weights, bias = fit_logistic(matrix[judged], truth[judged], l2=l2)
    return LogisticVerifier(weights=weights, bias=bias, min_probability=0.5, floor=floor, vetoes=vetoes)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogisticVerifier:
    """Serves a candidate when similarity ≥ `floor`, none of the `vetoes` flags is set, and
    P(same question | features) ≥ `min_probability`.

    `weights` are in `feature_names` order (which must be this code's `FEATURE_NAMES`). `vetoes`
    names mismatch flags that refuse a candidate whatever the model says: labelled data such as QQP
    calls "advice for a 17 year old" and "for a 15 year old" the same question, a cache must not."""

    weights: tuple[float, ...]
    bias: float
    min_probability: float
    floor: float
    vetoes: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = FEATURE_NAMES
    format_version: int = FORMAT_VERSION
    description: str = ""

    def __post_init__(self) -> None:
        problems = []
        if self.format_version != FORMAT_VERSION:
            problems.append(f"format_version {self.format_version!r} is not {FORMAT_VERSION}")
        if tuple(self.feature_names) != FEATURE_NAMES:
            problems.append("feature_names differ from this version's features: refit the verifier")
        if len(self.weights) != len(self.feature_names):
            problems.append(f"{len(self.weights)} weights for {len(self.feature_names)} features")
        if not all(math.isfinite(value) for value in (*self.weights, self.bias)):
            problems.append("weights and bias must be finite")
        if not 0.0 <= self.min_probability <= 1.0:
            problems.append(f"min_probability {self.min_probability!r} is not in [0, 1]")
        if not 0.0 <= self.floor <= 1.0:
            problems.append(f"floor {self.floor!r} is not a similarity in [0, 1]")
        unknown = [name for name in self.vetoes if name not in FLAG_NAMES]
        if unknown:
            problems.append(f"vetoes {unknown} are not among the mismatch flags {list(FLAG_NAMES)}")
        if problems:
            raise VerifierError("; ".join(problems))

    def probability(self, *, query: str, candidate: str, similarity: float) -> float:
        """The model's probability that the two texts ask the same thing (vetoes aside)."""
        score = float(np.dot(np.asarray(self.weights), pair_features(query, candidate, similarity))) + self.bias
        return 1.0 / (1.0 + math.exp(-min(max(score, -40.0), 40.0)))

    def scores(self, features: npt.ArrayLike) -> Features:
        """Vectorized verdict over rows of `pair_features`: the probability, or -inf where the
        candidate can never be served (below `floor`, or vetoed). `accepts` is exactly
        `scores(...) >= min_probability`; calibrate `min_probability` on these."""
        matrix = np.atleast_2d(np.asarray(features, dtype=np.float64))
        result = _sigmoid(matrix @ np.asarray(self.weights) + self.bias)
        blocked = matrix[:, 0] < self.floor
        for name in self.vetoes:
            blocked |= matrix[:, FEATURE_NAMES.index(name)] >= 0.5
        result[blocked] = -np.inf
        return result

    def accepts(self, *, query: str, candidate: str, similarity: float) -> bool:
        if similarity < self.floor:
            return False
        return bool(self.scores(pair_features(query, candidate, similarity))[0] >= self.min_probability)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format_version": self.format_version,
                "kind": "logistic",
                "description": self.description,
                "floor": self.floor,
                "min_probability": self.min_probability,
                "vetoes": list(self.vetoes),
                "bias": self.bias,
                "weights": dict(zip(self.feature_names, self.weights, strict=True)),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> LogisticVerifier:
        """Parse `to_json`'s output; any other shape or version is a `VerifierError`."""
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise VerifierError(f"not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise VerifierError("a stored verifier is a JSON object")
        if data.get("format_version") != FORMAT_VERSION:
            raise VerifierError(f"format_version {data.get('format_version')!r} is not {FORMAT_VERSION}")
        expected = {"format_version", "kind", "description", "floor", "min_probability", "vetoes", "bias", "weights"}
        if set(data) != expected or data["kind"] != "logistic":
            raise VerifierError(f"expected the keys {sorted(expected)} with kind 'logistic', got {sorted(data)}")
        weights, vetoes = data["weights"], data["vetoes"]
        numbers = [data["floor"], data["min_probability"], data["bias"]]
        if not isinstance(weights, dict) or not all(
            isinstance(value, int | float) and not isinstance(value, bool) for value in [*weights.values(), *numbers]
        ):
            raise VerifierError("floor, min_probability, bias and every weight must be numbers")
        if not isinstance(vetoes, list) or not all(isinstance(name, str) for name in vetoes):
            raise VerifierError("vetoes must be a list of feature names")
        return cls(
            weights=tuple(float(value) for value in weights.values()),
            bias=float(data["bias"]),
            min_probability=float(data["min_probability"]),
            floor=float(data["floor"]),
            vetoes=tuple(vetoes),
            feature_names=tuple(str(name) for name in weights),
            format_version=FORMAT_VERSION,
            description=str(data["description"]),
        )
