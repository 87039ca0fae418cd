"""Which category a request belongs to: keyword and pattern rules first, then its embedding.

Pure and cheap: the caller embeds the policy's exemplars once at load (`Policy.exemplars()`) and
hands the vectors in; `classify` then costs a few regex searches and one matrix-vector product.

    vectors = {name: embed(texts) for name, texts in policy.exemplars().items()}
    classifier = CategoryClassifier(policy, vectors)
    classifier.classify(prompt, prompt_vector)   # → Classification(category=..., via=...)

1. Rules: categories in file order; the first whose keyword (whole word, any case) or pattern
   occurs in the text wins, with confidence 1.
2. Embedding: each category with exemplars gets a score, the cosine similarity to its centroid
   (`centroid`) or the mean similarity to its `k` nearest exemplars (`knn`), in [0, 1].
3. The best category wins unless its score beats the runner-up's by less than `min_confidence`,
   or is itself below `min_similarity` (off-topic for every category): then `default`.
   Without a vector (the embedder failed or was skipped) only the rules can place a request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from embeddings.protocol import Vector
from policies.model import DEFAULT, Policy

_F32 = npt.NDArray[np.float32]
Via = Literal["keyword", "pattern", "embedding", "default"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Classification:
    category: str
    # Rules: 1. Embedding (and a fallback to default): the best score minus the runner-up's.
    confidence: float
    via: Via
    # The best category's score (cosine similarity to its centroid, or mean similarity to its k
    # nearest exemplars), even when it fell short and the answer is `default`; None without one.
    similarity: float | None = None


class Classifier(Protocol):
    """What the gateway needs: a category for a prompt and its vector (None: rules only)."""

    def classify(self, text: str, vector: Vector | None) -> Classification: ...


@dataclass(frozen=True, slots=True)
class _Rule:
    category: str
    keywords: re.Pattern[str] | None
    patterns: tuple[re.Pattern[str], ...]


def _keyword_regex(keywords: tuple[str, ...]) -> re.Pattern[str] | None:
    if not keywords:
        return None
    # Whole words by lookaround rather than \b, so that "c++" or ".net" match as well; any run of
    # whitespace matches a space inside a phrase.
    alternatives = sorted({r"\s+".join(map(re.escape, keyword.split())) for keyword in keywords}, key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


def _unit_rows(matrix: _F32) -> _F32:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.asarray(matrix / np.maximum(norms, np.float32(1e-12)), dtype=np.float32)


class CategoryClassifier:
    """Classifies one request at a time; immutable after construction, so safe to share."""

    def __init__(self, policy: Policy, exemplar_vectors: Mapping[str, Vector]) -> None:
        self._settings = policy.classifier
        self._rules = tuple(
            _Rule(
                category=category.name,
                keywords=_keyword_regex(category.keywords),
                patterns=tuple(re.compile(pattern) for pattern in category.patterns),
            )
            for category in policy.categories
            if category.keywords or category.patterns
        )
        unknown = sorted(set(exemplar_vectors) - set(policy.names))
        if unknown:
            raise ValueError(f"vectors for categories the policy does not have: {', '.join(unknown)}")
        names: list[str] = []
        blocks: list[_F32] = []
        for category in policy.categories:
            if not category.exemplars:
                continue
            if category.name not in exemplar_vectors:
                raise ValueError(f"no vectors for the exemplars of category {category.name!r}")
            block = np.asarray(exemplar_vectors[category.name], dtype=np.float32)
            if block.ndim != 2 or block.shape[0] != len(category.exemplars):
                raise ValueError(
                    f"category {category.name!r}: expected {len(category.exemplars)} vectors "
                    f"(one per exemplar), got an array of shape {block.shape}"
                )
            names.append(category.name)
            blocks.append(_unit_rows(block))
        dimensions = {block.shape[1] for block in blocks}
        if len(dimensions) > 1:
            raise ValueError(f"exemplar vectors of different dimensions: {sorted(dimensions)}")
        self._names = tuple(names)
        self._dimension = dimensions.pop() if dimensions else 0
        sizes = [block.shape[0] for block in blocks]
        self._width = max(sizes, default=0)
        self._centroids = _unit_rows(np.stack([block.mean(axis=0) for block in blocks])) if blocks else None
        # For knn: category c's exemplars in rows [c * width, c * width + n_c), the rest zeros, so
        # one product reshaped to (categories, width) holds every category's similarities. A zero
        # row scores 0, which only ever stands in for a similarity clipped to 0: sums are unchanged.
        self._padded = np.zeros((len(blocks) * self._width, self._dimension), dtype=np.float32)
        for row, block in enumerate(blocks):
            self._padded[row * self._width : row * self._width + block.shape[0]] = block
        self._top = min(self._settings.k, self._width)
        self._divisors = np.minimum(np.asarray(sizes, dtype=np.float32), np.float32(self._settings.k))
        self._score = {"centroid": self._centroid_scores, "knn": self._knn_scores}[self._settings.method]

    @property
    def categories(self) -> tuple[str, ...]:
        """The categories the embedding step can choose (those with exemplars), in file order."""
        return self._names

    def classify_by_rules(self, text: str) -> Classification | None:
        """The first category whose keyword or pattern occurs in the text, or None."""
        for rule in self._rules:
            if rule.keywords is not None and rule.keywords.search(text):
                return Classification(category=rule.category, confidence=1.0, via="keyword")
            if any(pattern.search(text) for pattern in rule.patterns):
                return Classification(category=rule.category, confidence=1.0, via="pattern")
        return None

    def classify(self, text: str, vector: Vector | None) -> Classification:
        """Rules first, then the vector (unit length, as the embedder gives it; None: rules only)."""
        matched = self.classify_by_rules(text)
        if matched is not None:
            return matched
        if vector is None or not self._names:
            return Classification(category=DEFAULT, confidence=0.0, via="default")
        return self.classify_vector(vector)

    def classify_vector(self, vector: Vector) -> Classification:
        """The embedding step alone."""
        if not self._names:
            return Classification(category=DEFAULT, confidence=0.0, via="default")
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != self._dimension:
            raise ValueError(f"vector of dimension {query.shape[0]}, the exemplars have {self._dimension}")
        # Scores are linear in the vector (clipping at 0 and top-k picking are unchanged by a
        # positive scale), so the vector is not normalized: the two scores used are divided instead.
        norm = float(np.sqrt(query @ query))
        if not norm > 0:  # a zero (or NaN) vector is like nothing: no category can be chosen
            return Classification(category=DEFAULT, confidence=0.0, via="default", similarity=0.0)
        scores = self._score(query)
        if scores.shape[0] > 1:
            runner_up, winner = (int(i) for i in np.argpartition(scores, -2)[-2:])
            runner_up_score = min(1.0, max(0.0, float(scores[runner_up]) / norm))
        else:
            winner, runner_up_score = 0, 0.0
        similarity = min(1.0, max(0.0, float(scores[winner]) / norm))
        margin = similarity - runner_up_score
        settings = self._settings
        if similarity < settings.min_similarity or margin < settings.min_confidence:
            return Classification(category=DEFAULT, confidence=margin, via="default", similarity=similarity)
        return Classification(category=self._names[winner], confidence=margin, via="embedding", similarity=similarity)

    def _centroid_scores(self, query: _F32) -> _F32:
        assert self._centroids is not None
        scores: _F32 = self._centroids @ query
        return scores

    def _knn_scores(self, query: _F32) -> _F32:
        grid: _F32 = np.maximum(self._padded @ query, np.float32(0.0)).reshape(len(self._names), self._width)
        if self._top < self._width:
            grid = np.partition(grid, self._width - self._top, axis=1)[:, self._width - self._top :]
        scores: _F32 = grid.sum(axis=1) / self._divisors
        return scores
