"""Online threshold correction from feedback on served hits. Pure: ratings in, a threshold out.

    state = ThresholdState()                 # no rating yet: the configured threshold (the floor)
    state = rate(state, Rating(similarity=0.91, good=False), floor=0.85, ceiling=1.0,
                 target_error_rate=0.05, settings=ControllerSettings())
    state.effective(floor=0.85, ceiling=1.0)   # 0.86: one step (max_step) towards 0.9101

The method. A category keeps its most recent `window` rated semantic hits, each a similarity and
good/bad; a threshold t would still serve the rated hits with similarity ≥ t, and their error rate
(bad / served) is bounded with one-sided Wilson bounds at `confidence`, the bound
`semcache calibrate` uses offline (`policies.calibration`), applied to live ratings.

- θ*, the *safe* threshold: the lowest t in [floor, ceiling] at which no rated hit is bad, or the
  error rate's upper bound is at most the target. Candidates are the floor and the step of the
  similarity grid above each rated similarity; the one above the highest serves no rated hit, so
  θ* always exists. The grid is 0.0001, the precision of the x-semcache-similarity header: closer
  similarities count as one (the two cosines of one pair of prompts differ in their last bits).
- A bad rating tightens when the evidence shows a problem at the threshold θ in force: the lower
  bound of the error rate of the rated hits at or above θ exceeds the target. Then θ moves towards
  θ* by at most `max_step`: θ ← max(θ, min(θ*, θ + max_step)). A first bad rating does (1 bad of
  1: the bound is 0.27 at 95 %); while the evidence holds, each further bad rating takes another
  step, so repeated bad ratings reach θ*.
- A good rating relaxes by at most `relax_step`, towards θ*: θ ← min(θ, max(θ*, θ - relax_step)).
- Otherwise θ holds: a good rating never tightens, a bad one never relaxes.

The floor is the similarity below which nothing is served anyway: the category's
`similarity_threshold`, or a verifier's floor when one decides. The ceiling is the category's
`feedback.max_threshold` (1.0 when unset).

Why this shape:
- Without a bad rating nothing moves: the configured threshold is the operator's prior, trusted
  until ratings say otherwise, and θ never goes below it.
- It acts on evidence both ways and holds in between (a dead band, as a control chart does). Some
  bad ratings are noise for a threshold: the upstream's answer itself was wrong, or the rater
  disagreed. Tightening on every bad hit that is not yet outweighed (the upper bound alone) drives
  a category whose true error rate is just under the target to the ceiling, where hits, and so the
  ratings that could relax it, all but stop; tightening only when the lower bound is above the
  target does not. Moving towards θ* by bounded steps keeps one rating, honest or not, from
  moving a category far (a single caller, or a mistaken click, cannot switch a category's hits
  off for everyone); the bad entry itself is removed at once either way.
- Ratings exist only for hits that were served, at or above the threshold in force then: once
  tightened, the band below is never observed again (the selection bias that vCache answers with
  exploration). Relaxing in small steps is that exploration: each step opens a thin band, its hits
  get rated, and bad ones there tighten again. Evidence gathered high up never opens the whole
  range below it at once. On a simulated stream (tests/policies/test_feedback.py) the threshold
  settles at the true boundary and the error rate of served hits near the target.
- The window follows drift (a new upstream model, new traffic) and bounds memory and the work
  per rating (one sort of at most `window` values).

vCache (Schroeder et al., "vCache: Verified Semantic Prompt Caching", 2025) learns a threshold per
cached prompt: it fits a sigmoid P(correct | similarity) to labels it gets by sometimes calling the
LLM anyway and comparing answers, and serves only when an error-rate bound holds. A gateway sees
far fewer labels (user ratings, per category, for served hits only), so this takes vCache's aim —
a stated error rate instead of a hand-picked threshold — with a per-category empirical bound.

Assumption: ratings are a fair sample of served hits. Callers who report only bad hits bias the
estimate towards tightening, the safe direction; callers who report only good ones can relax a
category no further than its configured threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from policies.calibration import precision_lower_bounds


@dataclass(frozen=True, slots=True, kw_only=True)
class Rating:
    """One rated semantic hit: its similarity, and whether the answer served was right."""

    similarity: float
    good: bool

    def __post_init__(self) -> None:
        if not 0.0 <= self.similarity <= 1.0:
            raise ValueError(f"similarity must be in [0, 1], got {self.similarity!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ControllerSettings:
    # Confidence of the one-sided Wilson bound the error rate is held to ([0.5, 1); 0.5: the plain
    # share of bad ratings).
    confidence: float = 0.95
    # The most one good rating may lower a threshold.
    relax_step: float = 0.005
    # The most one bad rating may raise it.
    max_step: float = 0.01
    # Ratings kept per category, the most recent.
    window: int = 1000

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence!r}")
        if not 0.0 <= self.relax_step <= 1.0:
            raise ValueError(f"relax_step must be in [0, 1], got {self.relax_step!r}")
        if not 0.0 < self.max_step <= 1.0:
            raise ValueError(f"max_step must be in (0, 1], got {self.max_step!r}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window!r}")


def _clamp(value: float, floor: float, ceiling: float) -> float:
    return min(max(floor, ceiling), max(floor, value))


@dataclass(frozen=True, slots=True, kw_only=True)
class ThresholdState:
    """A category's ratings and the threshold they led to. `threshold` None: at the floor, so a
    changed floor (a policy reload) takes effect as it is."""

    threshold: float | None = None
    ratings: tuple[Rating, ...] = ()

    def effective(self, *, floor: float, ceiling: float) -> float:
        """The threshold in force: the learned one within [floor, ceiling] (ceiling below the
        floor counts as the floor)."""
        return _clamp(floor if self.threshold is None else self.threshold, floor, ceiling)

    @property
    def bad(self) -> int:
        return sum(not rating.good for rating in self.ratings)


GRID = 10_000
"""Similarities are told apart to 1 / GRID."""


def _cell(similarity: float) -> int:
    cell = math.floor(similarity * GRID)
    return cell + 1 if _above(cell) <= similarity else cell  # float rounding: `_above` must exceed it


def _above(cell: int) -> float:
    """The lowest threshold that serves nothing in `cell`."""
    return (cell + 1) / GRID


def safe_threshold(
    ratings: Sequence[Rating], *, floor: float, ceiling: float, target_error_rate: float, confidence: float
) -> float:
    """θ*: the lowest threshold in [floor, ceiling] whose rated hits have no bad one, or an error
    rate whose upper confidence bound is at most `target_error_rate`."""
    if not 0.0 < target_error_rate < 1.0:
        raise ValueError(f"target_error_rate must be in (0, 1), got {target_error_rate!r}")
    served = [rating for rating in ratings if rating.similarity >= floor]
    if all(rating.good for rating in served):
        return _clamp(floor, floor, ceiling)
    cells = np.array([_cell(rating.similarity) for rating in served], dtype=np.int64)
    bad = np.array([not rating.good for rating in served], dtype=np.float64)
    order = np.argsort(-cells, kind="stable")
    cells, bad = cells[order], bad[order]
    # Prefix k (the k+1 highest) is what a threshold serves when it ends a run of one cell; the
    # lowest threshold serving exactly it is the one above the next lower cell (the floor for all).
    count = np.arange(1, cells.size + 1, dtype=np.float64)
    bad_so_far = np.cumsum(bad)
    error_upper = 1.0 - precision_lower_bounds(count - bad_so_far, count, confidence)
    ends_cell = np.append(cells[1:] != cells[:-1], True)
    safe = ends_cell & ((bad_so_far == 0) | (error_upper <= target_error_rate))
    if not np.any(safe):
        return _clamp(_above(int(cells[0])), floor, ceiling)
    longest = int(np.flatnonzero(safe)[-1])
    if longest == cells.size - 1:
        return _clamp(floor, floor, ceiling)
    return _clamp(_above(int(cells[longest + 1])), floor, ceiling)


def error_shown_above(
    ratings: Sequence[Rating], *, threshold: float, target_error_rate: float, confidence: float
) -> bool:
    """Whether the rated hits at or above `threshold` show, at `confidence`, an error rate above
    the target (the one-sided Wilson lower bound of bad / served exceeds it)."""
    served = [rating for rating in ratings if rating.similarity >= threshold]
    bad = sum(not rating.good for rating in served)
    if bad == 0:
        return False
    lower = float(precision_lower_bounds(np.array([bad]), np.array([len(served)]), confidence)[0])
    return lower > target_error_rate


def rate(
    state: ThresholdState,
    rating: Rating,
    *,
    floor: float,
    ceiling: float,
    target_error_rate: float,
    settings: ControllerSettings,
) -> ThresholdState:
    """The state after one more rating (see the module's docstring for the rule)."""
    ratings = (*state.ratings, rating)[-settings.window :]
    current = state.effective(floor=floor, ceiling=ceiling)
    bounds = {"target_error_rate": target_error_rate, "confidence": settings.confidence}
    moved = current
    if rating.good:
        safe = safe_threshold(ratings, floor=floor, ceiling=ceiling, **bounds)
        moved = min(current, max(safe, current - settings.relax_step))
    elif error_shown_above(ratings, threshold=current, **bounds):
        safe = safe_threshold(ratings, floor=floor, ceiling=ceiling, **bounds)
        moved = max(current, min(safe, current + settings.max_step))
    threshold = _clamp(moved, floor, ceiling)
    return ThresholdState(threshold=None if threshold <= floor else threshold, ratings=ratings)
