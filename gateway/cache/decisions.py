"""What the cache decided for one request: `Hit | NearMiss | Miss | Bypass`.

The engine builds each of them, in one place each (`CacheEngine._hit`, `_miss`, `_near_miss`,
`_bypass`); the facade hands them to the library's callers, and `serving` turns them into what the
proxy, the middleware and the LiteLLM hook do. `NearMiss` is a kind of `Miss` (its answer comes from
the upstream and is stored the same way), so code written for `Hit | Miss | Bypass` keeps working;
it also carries the candidates found in the category's near-miss band, for in-context examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from embeddings import Vector
from gateway.cache.scope import CacheKey
from gateway.stores import CacheEntry
from gateway.wire import CompletionRequest
from policies.rules import Rules


class Outcome(StrEnum):
    """The value of the `x-semcache` header, and the `outcome` label of the request metrics."""

    HIT = "hit"
    EXACT = "exact"
    NEAR_MISS = "near-miss"
    MISS = "miss"
    BYPASS = "bypass"
    COALESCED = "coalesced"


@dataclass(frozen=True, slots=True, kw_only=True)
class Hit:
    """A stored answer, under a fresh `id` and `created` (`answer`); its `usage` is the original one."""

    request: CompletionRequest
    entry: CacheEntry
    answer: dict[str, Any]
    similarity: float
    exact: bool
    # None for an exact hit: no similarity threshold was involved.
    rules: Rules | None

    @property
    def entry_id(self) -> str:
        return self.entry.entry_id

    @property
    def category(self) -> str:
        return self.entry.category

    @property
    def outcome(self) -> Outcome:
        return Outcome.EXACT if self.exact else Outcome.HIT


@dataclass(frozen=True, slots=True, kw_only=True)
class Exploration:
    """A candidate the verified rule chose to test rather than serve: the request goes upstream,
    and its fresh answer is judged against `entry`'s, an observation of `entry` at `similarity`."""

    entry: CacheEntry
    similarity: float
    # Whether the caller's tenant may move the category's shared prior (`feedback.moves_thresholds`).
    moves_prior: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Miss:
    """Pass it back to `SemanticCache.remember` with the answer: it carries the key and the prompt's
    vector. `vector` is None when the prompt stays exact-match only (the embedder truncated it) or
    when embedding failed; `category` and `rules` are None when the category could not be told, and
    such an answer is not kept. `reason` says why the cache could not do better (`fail-open:<stage>`,
    `prompt-over-embedder-window`, `explore`), None for an ordinary miss. `exploration` is set
    (and `reason` is "explore") when a candidate that could have been served is being tested."""

    request: CompletionRequest
    key: CacheKey
    category: str | None
    rules: Rules | None
    vector: Vector | None
    best_similarity: float | None
    reason: str | None = None
    exploration: Exploration | None = None

    @property
    def storable(self) -> bool:
        return self.category is not None and self.rules is not None

    @property
    def outcome(self) -> Outcome:
        return Outcome.MISS


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """A stored entry in the request's near-miss band: similar, but not enough to be served."""

    entry: CacheEntry
    similarity: float


@dataclass(frozen=True, slots=True, kw_only=True)
class NearMiss(Miss):
    """A miss whose best candidates lie in `[rules.near_miss_floor, rules.hit_threshold)`, best first."""

    candidates: tuple[Candidate, ...]

    @property
    def outcome(self) -> Outcome:
        return Outcome.NEAR_MISS


@dataclass(frozen=True, slots=True, kw_only=True)
class Bypass:
    """Not for the cache: neither looked up nor stored (`reason`: e.g. `category-not-cacheable`, `n>1`)."""

    request: CompletionRequest
    reason: str
    category: str | None = None

    @property
    def outcome(self) -> Outcome:
        return Outcome.BYPASS


Decision = Hit | NearMiss | Miss | Bypass
