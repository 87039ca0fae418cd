"""Where a miss goes: a pure choice among deployments from their tiers, health and load.

The category's preferred tier first; within a tier the least-loaded healthy deployment; when the
preferred tier is past the high watermark and the category allows it, the other tier if it has
room; past capacity everywhere, nobody (`shed`): the caller serves from the cache under the
load-adapted threshold or answers 429 with Retry-After, and never queues without bound. A client
that names a deployment gets exactly that one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Tier = Literal["small", "large"]
Reason = Literal["preferred", "offload-overload", "other-tier", "fallback-unhealthy", "shed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    name: str
    tier: Tier
    load: float
    # False while it cools down after a 429/5xx/timeout.
    healthy: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Choice:
    """`name` is None when the load must be shed."""

    name: str | None
    reason: Reason


def other(tier: Tier) -> Tier:
    return "large" if tier == "small" else "small"


def choose(
    candidates: Sequence[Candidate],
    *,
    preferred: Tier,
    offload: bool = True,
    high_watermark: float = 0.8,
    exclude: frozenset[str] = frozenset(),
) -> Choice:
    """`exclude`: deployments already tried for this request (a retry goes elsewhere)."""
    usable = [candidate for candidate in candidates if candidate.name not in exclude]
    # At capacity (load >= 1) or cooling down: not a choice, whatever its tier.
    ready = [candidate for candidate in usable if candidate.healthy and candidate.load < 1.0]
    home = _least_loaded(ready, preferred)
    if home is not None and home.load < high_watermark:
        return Choice(name=home.name, reason="preferred")
    away = _least_loaded(ready, other(preferred))
    if offload and home is not None and away is not None and away.load < home.load:
        return Choice(name=away.name, reason="offload-overload")
    if home is not None:
        return Choice(name=home.name, reason="preferred")  # past the watermark, but nothing better
    if away is not None and not any(candidate.tier == preferred for candidate in candidates):
        return Choice(name=away.name, reason="other-tier")  # the policy's tier is not deployed at all
    if away is not None and offload:
        return Choice(name=away.name, reason="fallback-unhealthy")
    return Choice(name=None, reason="shed")


def _least_loaded(candidates: Sequence[Candidate], tier: Tier) -> Candidate | None:
    in_tier = [candidate for candidate in candidates if candidate.tier == tier]
    return min(in_tier, key=lambda candidate: (candidate.load, candidate.name), default=None)
