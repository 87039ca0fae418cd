"""Verified thresholds: serve a cached answer only while the traffic shows it is right often enough.
Pure: observations in, a decision out; deterministic given the caller's random number.

    prior = category_prior(all_observations_of_the_category)
    decision = decide(entry.observations, prior, similarity=0.93, error_bound=0.02, floor=0.85,
                      rng_value=random.random())
    decision.action   # "serve" | "explore" | "refuse"

The signal (vCache, Schroeder et al., arXiv 2502.03771, implemented here from its description): when
a query similar to a cached entry goes to the upstream anyway, the judge tells whether the fresh
answer is equivalent to the entry's cached one, an `Observation(similarity, correct)` of that entry.
P(correct | s) = sigmoid(gamma·(s - t)), and for a query at similarity s:

- alpha(s), a lower bound on P(correct | s) (below), and τ(s) = 1 - δ / (1 - alpha(s)) in [0, 1];
- with probability τ explore (answer fresh, judge, record an observation), otherwise serve. Then
  P(serve) · P(wrong | serve) ≤ (1 - τ)(1 - alpha) ≤ δ, the error bound; alpha ≥ 1 - δ always serves.
- below `floor` (the category's static threshold, a hard floor) and with δ = 0: refuse.

Where this differs from vCache, and why:

- The slope gamma is the category's, the threshold t is the entry's. The slope (how sharply correctness
  falls off with similarity) is a property of the embedding model and the kind of prompts, and an
  entry's handful of observations identify it badly: vCache needs ~6 of its own before it can fit.
  With gamma fixed, each observation's likelihood is monotone in t, so the bound is monotone in the
  evidence exactly (a correct observation never lowers alpha anywhere, a wrong one never raises it),
  which a two-parameter fit per entry is not: there a correct observation far below the others
  flattens the fitted slope and lowers the bound far above them.
- The per-category prior (vCache has none). All of a category's observations are pooled into a
  two-parameter maximum-likelihood fit (`fit_correctness`), with the variance of t̂ by the delta
  method from the inverse Fisher information. It becomes a Gaussian prior N(t̂, spread²) on the
  entry's t, its information scaled down to `prior_weight` observations' worth: a category fit from
  thousands of observations describes the typical entry, not this one, so it must not outweigh
  what this entry shows. An entry with no observations decides from the prior alone; as its own
  evidence grows, the prior's share falls as prior_weight / (prior_weight + n).
- Perfectly separated (or one-class) category data have no finite maximum-likelihood fit: the
  threshold is put at the lowest correct similarity (1.0 when none is correct; the boundary lies in
  the gap below it, so this claims the least), the slope is `separated_slope`, and the spread of t̂
  comes from a fixed table by count, `separated_spread(n)` = 0.2 / √n (never below `min_spread`).
- The entry's posterior of t is computed on a fixed grid (exact for the model, no delta method
  needed at the entry: it has few observations, where the normal approximation is worst).
  alpha_ε(s) = sigmoid(gamma(s - t_{1-ε})), t_{1-ε} the posterior's (1 - ε) quantile: P(correct | s)
  ≥ alpha_ε(s) with posterior probability 1 - ε.
- The grid of confidence levels keeps the guarantee because each level only gives a lower bound
  on the posterior mean of p = P(correct | s): E[p] ≥ P(p ≥ alpha_ε) · alpha_ε = (1 - ε) alpha_ε, for
  every ε at once (one distribution, no separate tests, so no multiple comparison). The bound used
  is alpha(s) = max over the grid of (1 - ε) alpha_ε(s), i.e. τ(s) = min over the grid of
  1 - δ / (1 - (1 - ε) alpha_ε(s)), and P(wrong | serve, evidence) ≤ 1 - alpha(s). Like vCache's,
  the guarantee holds under the model (logistic in s, at the category's slope) and the prior.

Bounded work: an entry keeps its `max_observations` most recent observations (`record`), a category
pool its `max_category_observations` most recent; a decision costs O(max_observations x grid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from policies.verifier import fit_logistic

Array = npt.NDArray[np.float64]
Action = Literal["serve", "explore", "refuse"]

# The entry's threshold t lives on this grid: similarity is in [0, 1], and a boundary just outside it
# (every observation correct, or none) must be representable so the posterior is not clipped.
_GRID_LOW, _GRID_HIGH, _GRID_POINTS = -0.5, 1.5, 1001


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """A later query at `similarity` to an entry, and whether its fresh answer matched the entry's."""

    similarity: float
    correct: bool

    def __post_init__(self) -> None:
        if not 0.0 <= self.similarity <= 1.0:
            raise ValueError(f"similarity must be in [0, 1], got {self.similarity!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedSettings:
    # Observations an entry keeps, the most recent (bounds memory and the cost of a decision).
    max_observations: int = 64
    # Observations a category's prior is fitted from, the most recent.
    max_category_observations: int = 4096
    # What the category prior is worth, in observations of the entry's own.
    prior_weight: float = 16.0
    # Slope for separated data, where the fit has none: P(correct) goes 0.5 → 0.95 over 0.1.
    separated_slope: float = 30.0
    # A fitted slope is clipped to this range: a slope ≤ 0 (correctness not rising with similarity)
    # is noise, and the bound must be non-decreasing in similarity.
    min_slope: float = 5.0
    max_slope: float = 500.0
    # Spread of the prior's threshold: never tighter than this, never wider than 1.
    min_spread: float = 0.005
    # L2 penalty of the category fit (standardized units of `policies.verifier.fit_logistic`).
    ridge: float = 0.1
    # The grid of ε: alpha_ε holds with posterior probability 1 - ε.
    epsilons: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)

    def __post_init__(self) -> None:
        if self.max_observations < 1 or self.max_category_observations < 1:
            raise ValueError("max_observations and max_category_observations must be >= 1")
        if self.prior_weight <= 0:
            raise ValueError(f"prior_weight must be > 0, got {self.prior_weight!r}")
        if not 0 < self.min_slope <= self.separated_slope <= self.max_slope:
            raise ValueError("need 0 < min_slope <= separated_slope <= max_slope")
        if not 0 < self.min_spread <= 1:
            raise ValueError(f"min_spread must be in (0, 1], got {self.min_spread!r}")
        if not self.epsilons or not all(0 < epsilon < 1 for epsilon in self.epsilons):
            raise ValueError("epsilons must be a non-empty tuple of values in (0, 1)")


DEFAULT_SETTINGS = VerifiedSettings()


def record(observations: Sequence[Observation], observation: Observation, *, cap: int) -> tuple[Observation, ...]:
    """The observations after one more, keeping the `cap` most recent."""
    return (*observations, observation)[-cap:] if cap > 0 else ()


def _arrays(observations: Sequence[Observation]) -> tuple[Array, Array]:
    similarity = np.array([o.similarity for o in observations], dtype=np.float64)
    correct = np.array([o.correct for o in observations], dtype=np.float64)
    return similarity, correct


def _sigmoid(values: Array | float) -> Array:
    # tanh form: no overflow warning for large |x|.
    result: Array = 0.5 * (1.0 + np.tanh(0.5 * np.asarray(values, dtype=np.float64)))
    return result


# --- the category fit --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CorrectnessFit:
    """P(correct | s) = sigmoid(slope · (s - threshold)); `threshold_variance` of t̂ by the delta method,
    or from `separated_spread` when `separated` (no finite maximum-likelihood fit)."""

    slope: float
    threshold: float
    threshold_variance: float
    count: int
    separated: bool

    def probability(self, similarity: float) -> float:
        return float(_sigmoid(self.slope * (similarity - self.threshold)))


def separated_spread(count: int) -> float:
    """The fixed, conservative spread of t̂ for separated data of `count` observations: 0.2 at one
    observation (a fifth of the similarity range), shrinking as 1/√n as a fitted spread would."""
    return 0.2 / math.sqrt(max(count, 1))


def fit_correctness(
    observations: Sequence[Observation], *, settings: VerifiedSettings = DEFAULT_SETTINGS
) -> CorrectnessFit:
    """The two-parameter logistic fit of P(correct | s), with the delta-method variance of t̂."""
    if not observations:
        raise ValueError("need at least one observation")
    similarity, correct = _arrays(observations)
    count = similarity.size
    right, wrong = similarity[correct == 1], similarity[correct == 0]
    if right.size == 0 or wrong.size == 0 or wrong.max() < right.min():
        threshold = float(right.min()) if right.size else 1.0
        spread = separated_spread(count)
        return CorrectnessFit(slope=settings.separated_slope, threshold=threshold,
                              threshold_variance=spread * spread, count=count, separated=True)  # fmt: skip
    (weight,), bias = fit_logistic(similarity[:, None], correct, l2=settings.ridge)
    slope = min(max(weight, settings.min_slope), settings.max_slope)
    centre = float(similarity.mean())
    # A usable slope: the fitted 50 % point, whatever the clipping of a very steep one. None (flat,
    # falling, a single similarity): t keeps the fitted probability at the mean similarity, under
    # the flattest slope allowed.
    usable = weight >= settings.min_slope
    threshold = -bias / weight if usable else centre - (bias + weight * centre) / slope
    # Fisher information of (bias, slope) at the estimate, plus the fit's penalty (fit_logistic's
    # l2 is on the standardized weight: l2 · scale² on the raw one).
    design = np.column_stack([np.ones(count), similarity])
    probability = _sigmoid(design @ np.array([bias, weight]))
    curvature = np.maximum(probability * (1.0 - probability), 1e-12)
    information = (design * curvature[:, None]).T @ design
    information += np.diag([1e-9, settings.ridge * float(similarity.var()) + 1e-9])
    # t = -bias / slope: its gradient in (bias, slope), at the slope in force.
    gradient = np.array([-1.0 / slope, bias / (slope * slope)])
    variance = float(gradient @ np.linalg.solve(information, gradient))
    if not (math.isfinite(threshold) and math.isfinite(variance)):
        threshold, variance = centre, 1.0
    return CorrectnessFit(slope=slope, threshold=min(max(threshold, _GRID_LOW), _GRID_HIGH),
                          threshold_variance=min(variance, 1.0), count=count, separated=False)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class CategoryPrior:
    """What a category's observations say about a typical entry: the slope its entries share, and a
    Gaussian prior N(threshold, spread²) on an entry's threshold. `count` 0: no evidence (explore)."""

    slope: float
    threshold: float
    spread: float
    count: int


def category_prior(
    observations: Sequence[Observation], *, settings: VerifiedSettings = DEFAULT_SETTINGS
) -> CategoryPrior:
    """The prior from all of a category's observations (the `max_category_observations` most recent)."""
    pool = list(observations)[-settings.max_category_observations :]
    if not pool:
        return CategoryPrior(slope=settings.separated_slope, threshold=1.0, spread=1.0, count=0)
    fit = fit_correctness(pool, settings=settings)
    # Var(t̂) shrinks as 1/n: scaled back up to what `prior_weight` observations would show.
    inflation = max(1.0, fit.count / settings.prior_weight)
    spread = math.sqrt(fit.threshold_variance * inflation)
    return CategoryPrior(slope=fit.slope, threshold=fit.threshold,
                         spread=min(max(spread, settings.min_spread), 1.0), count=fit.count)  # fmt: skip


# --- the entry's posterior and the bound -------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ThresholdPosterior:
    """The posterior of an entry's threshold t on a grid, given its observations and the prior."""

    slope: float
    # Cell edges (grid points ± half a step) and the cumulative posterior mass at each edge.
    edges: Array = field(repr=False, compare=False)
    cdf: Array = field(repr=False, compare=False)

    def quantile(self, q: float) -> float:
        """The q-quantile of t (linear within a grid cell)."""
        return float(np.interp(q, self.cdf, self.edges))

    def interval(self, confidence: float) -> tuple[float, float]:
        """The central interval of t holding `confidence` of the posterior."""
        tail = (1.0 - confidence) / 2.0
        return self.quantile(tail), self.quantile(1.0 - tail)

    def bound_at(self, similarity: float, epsilon: float) -> float:
        """alpha_ε: P(correct | similarity) ≥ this with posterior probability 1 - ε."""
        return float(_sigmoid(self.slope * (similarity - self.quantile(1.0 - epsilon))))

    def lower_bound(self, similarity: float, epsilons: Sequence[float]) -> float:
        """alpha = max over ε of (1 - ε) alpha_ε: a lower bound on the posterior mean of P(correct)."""
        return max((1.0 - epsilon) * self.bound_at(similarity, epsilon) for epsilon in epsilons)


def posterior(
    observations: Sequence[Observation], prior: CategoryPrior, *, settings: VerifiedSettings = DEFAULT_SETTINGS
) -> ThresholdPosterior:
    """The entry's posterior of t (its `max_observations` most recent observations)."""
    grid = np.linspace(_GRID_LOW, _GRID_HIGH, _GRID_POINTS)
    log_density = -0.5 * ((grid - prior.threshold) / prior.spread) ** 2
    own = list(observations)[-settings.max_observations :]
    if own:
        similarity, correct = _arrays(own)
        logits = prior.slope * (similarity[:, None] - grid[None, :])
        # log sigmoid(x) for a correct observation, log sigmoid(-x) for a wrong one, without overflow.
        sign = np.where(correct == 1, 1.0, -1.0)[:, None]
        log_density = log_density - np.logaddexp(0.0, -sign * logits).sum(axis=0)
    mass = np.exp(log_density - log_density.max())
    cdf = np.concatenate([[0.0], np.cumsum(mass)])
    cdf /= cdf[-1]
    step = (_GRID_HIGH - _GRID_LOW) / (_GRID_POINTS - 1)
    edges = np.concatenate([grid - step / 2, [grid[-1] + step / 2]])
    return ThresholdPosterior(slope=prior.slope, edges=edges, cdf=cdf)


def explore_probability(bound: float, error_bound: float) -> float:
    """τ = 1 - δ / (1 - alpha), clipped to [0, 1]: 0 once alpha ≥ 1 - δ, 1 when δ = 0."""
    if error_bound <= 0.0:
        return 1.0
    if bound >= 1.0 - error_bound:
        return 0.0
    return min(max(1.0 - error_bound / (1.0 - bound), 0.0), 1.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """`bound` is alpha (0 when refused or without evidence), `explore_probability` is τ (0 when refused:
    a refused candidate is a plain miss, nothing is explored)."""

    action: Action
    bound: float
    explore_probability: float


def decide(
    observations: Sequence[Observation],
    prior: CategoryPrior,
    similarity: float,
    *,
    error_bound: float,
    floor: float,
    rng_value: float,
    settings: VerifiedSettings = DEFAULT_SETTINGS,
) -> Decision:
    """Serve, explore or refuse the candidate entry for a query at `similarity` (see the module's
    docstring). `rng_value`, uniform in [0, 1), is drawn by the caller: explore when it is below τ.
    An empty `prior` with observations of the entry's own: the entry is its category's evidence."""
    if not 0.0 <= error_bound < 1.0:
        raise ValueError(f"error_bound must be in [0, 1), got {error_bound!r}")
    if not 0.0 <= rng_value < 1.0:
        raise ValueError(f"rng_value must be in [0, 1), got {rng_value!r}")
    if similarity < floor or error_bound == 0.0:
        return Decision(action="refuse", bound=0.0, explore_probability=0.0)
    if prior.count == 0:
        if not observations:
            return Decision(action="explore", bound=0.0, explore_probability=1.0)
        prior = category_prior(observations, settings=settings)
    bound = posterior(observations, prior, settings=settings).lower_bound(similarity, settings.epsilons)
    tau = explore_probability(bound, error_bound)
    return Decision(action="explore" if rng_value < tau else "serve", bound=bound, explore_probability=tau)
