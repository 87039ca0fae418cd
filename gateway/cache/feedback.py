"""Feedback on served hits: the body of POST /v1/feedback, the hits a caller may rate, and each
category's online threshold (the rule is `policies.feedback`'s; the state lives here and in the
store, so it survives a restart).

A rating names a hit by the response `id` the gateway answered with, or by the entry it served
(`x-semcache-entry`). Only hits served to the caller's own tenant can be rated, each once: a
tenant can neither remove another tenant's entries nor learn that they exist (both are a 404).
The threshold moves only for hits the gateway remembers serving (it knows their similarity
itself; a caller cannot claim one); an older hit rated by entry is still removed when bad.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from gateway.config import FeedbackConfig
from gateway.errors import InvalidRequest
from gateway.stores import FORMAT_VERSION
from policies import Category
from policies.feedback import ControllerSettings, Rating, ThresholdState, rate

RatingValue = Literal["good", "bad"]
_RATINGS: tuple[RatingValue, ...] = ("good", "bad")
_FIELDS = ("id", "entry", "rating")
_MAX_ID_CHARS = 256


@dataclass(slots=True, kw_only=True)
class ServedHit:
    """A hit as it was served: what the rating of it refers to."""

    response_id: str
    entry_id: str
    tenant: str
    category: str
    similarity: float
    exact: bool
    rated: bool = False


class ServedHits:
    """The most recent `capacity` hits, by response id and by (tenant, entry): the latest hit of
    an entry for each tenant. In memory only: after a restart, hits are rated by entry."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._by_id: OrderedDict[str, ServedHit] = OrderedDict()
        self._latest: dict[tuple[str, str], ServedHit] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, hit: ServedHit) -> None:
        self._by_id[hit.response_id] = hit
        self._latest[(hit.tenant, hit.entry_id)] = hit
        while len(self._by_id) > self._capacity:
            _, old = self._by_id.popitem(last=False)
            if self._latest.get((old.tenant, old.entry_id)) is old:
                del self._latest[(old.tenant, old.entry_id)]

    def by_id(self, response_id: str, *, tenant: str) -> ServedHit | None:
        """The hit answered with that id, if it was served to `tenant`."""
        hit = self._by_id.get(response_id)
        return hit if hit is not None and hit.tenant == tenant else None

    def latest(self, entry_id: str, *, tenant: str) -> ServedHit | None:
        return self._latest.get((tenant, entry_id))


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackRequest:
    """A rating, checked once here for the HTTP body and the library call alike."""

    rating: RatingValue
    response_id: str | None
    entry_id: str | None

    def __post_init__(self) -> None:
        if self.rating not in _RATINGS:
            raise InvalidRequest(f"'rating' must be 'good' or 'bad', got {self.rating!r}", param="rating")
        if self.response_id is None and self.entry_id is None:
            raise InvalidRequest(
                "name the hit: 'id' (the id of the response served from the cache) or 'entry' (its "
                "x-semcache-entry header)",
                param="id",
            )


def _identifier(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_ID_CHARS:
        raise InvalidRequest(f"'{name}' must be a non-empty string of at most {_MAX_ID_CHARS} characters",
                             param=name)  # fmt: skip
    return value.strip()


def parse_feedback(data: Any) -> FeedbackRequest:
    """`{"id": "<response id>" and/or "entry": "<x-semcache-entry>", "rating": "good" | "bad"}`."""
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    for name in data:
        if name not in _FIELDS:
            raise InvalidRequest(
                f"unknown field {name!r}: a rating has 'id' (the response id) and/or 'entry' (the "
                "x-semcache-entry header), and 'rating'",
                param=str(name),
                code="unknown_parameter",
            )
    return FeedbackRequest(
        rating=cast(RatingValue, data.get("rating")),  # whatever it is: FeedbackRequest checks it
        response_id=_identifier(data, "id"),
        entry_id=_identifier(data, "entry"),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackResult:
    """What a rating did. `counted`: it moved (or confirmed) the category's threshold; exact hits
    and hits the gateway no longer remembers are not counted. `threshold`: the category's hit
    threshold in force now (None when the category left the policy)."""

    entry_id: str
    rating: RatingValue
    category: str
    similarity: float | None
    counted: bool
    entry_removed: bool
    threshold: float | None

    def body(self) -> dict[str, Any]:
        return {
            "object": "semcache.feedback",
            "entry": self.entry_id,
            "rating": self.rating,
            "category": self.category,
            "similarity": self.similarity,
            "counted": self.counted,
            "entry_removed": self.entry_removed,
            "threshold": self.threshold,
        }


def state_document(state: ThresholdState) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "threshold": state.threshold,
        "ratings": [[rating.similarity, int(rating.good)] for rating in state.ratings],
    }


def state_from_document(document: Mapping[str, Any]) -> ThresholdState:
    """Raises ValueError for a document this version cannot read."""
    if document.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"unknown feedback format_version {document.get('format_version')!r}")
    threshold = document.get("threshold")
    ratings = tuple(Rating(similarity=float(s), good=bool(good)) for s, good in document.get("ratings", []))
    return ThresholdState(threshold=None if threshold is None else float(threshold), ratings=ratings)


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackBounds:
    """Where a category's online threshold may move: from `floor` (the configured threshold, or
    the verifier's floor when one decides) up to `ceiling`, to hold `target_error_rate`."""

    floor: float
    ceiling: float
    target_error_rate: float


class Thresholds:
    """Each category's feedback state; a category without one is at its floor."""

    def __init__(self, settings: ControllerSettings, *, target_error_rate: float) -> None:
        self.settings = settings
        self.target_error_rate = target_error_rate
        self._states: dict[str, ThresholdState] = {}
        # `rate` runs on worker threads (it sorts up to a window of ratings): one at a time, so
        # that no rating is lost; readers see one immutable state or the next.
        self._rating = threading.Lock()

    @classmethod
    def from_config(cls, feedback: FeedbackConfig) -> Thresholds:
        settings = ControllerSettings(
            confidence=feedback.confidence,
            relax_step=feedback.relax_step,
            max_step=feedback.max_step,
            window=feedback.window,
        )
        return cls(settings, target_error_rate=feedback.target_error_rate)

    def bounds(self, category: Category, floor: float) -> FeedbackBounds:
        ceiling = category.feedback.max_threshold
        target = category.feedback.target_error_rate
        return FeedbackBounds(
            floor=floor,
            ceiling=max(floor, 1.0 if ceiling is None else ceiling),
            target_error_rate=self.target_error_rate if target is None else target,
        )

    def state(self, name: str) -> ThresholdState:
        return self._states.get(name, ThresholdState())

    def effective(self, category: Category, floor: float) -> float:
        bounds = self.bounds(category, floor)
        return self.state(category.name).effective(floor=bounds.floor, ceiling=bounds.ceiling)

    def rate(self, category: Category, floor: float, rating: Rating) -> ThresholdState:
        bounds = self.bounds(category, floor)
        with self._rating:
            state = rate(
                self.state(category.name),
                rating,
                floor=bounds.floor,
                ceiling=bounds.ceiling,
                target_error_rate=bounds.target_error_rate,
                settings=self.settings,
            )
            self._states[category.name] = state
        return state

    def load(self, name: str, state: ThresholdState) -> None:
        window = self.settings.window
        self._states[name] = ThresholdState(threshold=state.threshold, ratings=state.ratings[-window:])

    def drop(self, name: str) -> None:
        self._states.pop(name, None)
