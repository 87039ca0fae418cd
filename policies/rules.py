"""The cache rules in force for one request: the hit threshold, the near-miss band and the TTL.

A pure function of the category and of what is known about this request, so it can be
property-tested and so that nothing shared is ever mutated: the threshold in force (the category's,
raised by feedback), a stricter threshold or shorter TTL the client asked for, and, with load
adaptation, the live load of the tier the category's misses go to (the routing issue adds it here).
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.model import Category


@dataclass(frozen=True, slots=True, kw_only=True)
class Rules:
    """`near_miss_floor` is None when the category has no band (or the threshold in force left no
    room for one): every miss is then a plain miss."""

    hit_threshold: float
    near_miss_floor: float | None
    ttl_s: float

    def is_hit(self, similarity: float) -> bool:
        return similarity >= self.hit_threshold

    def is_near_miss(self, similarity: float) -> bool:
        return self.near_miss_floor is not None and self.near_miss_floor <= similarity < self.hit_threshold


def rules_for(
    category: Category,
    *,
    threshold: float,
    pressure: float = 0.0,
    requested_threshold: float | None = None,
    requested_ttl_s: float | None = None,
) -> Rules:
    """`threshold`: the category's threshold in force (feedback may have raised it above the
    configured one). `pressure` in [0, 1] (`policies.load`): the load on the tier the category's misses
    go to; it moves the threshold linearly towards `bounds.min_threshold` and the TTL towards
    `bounds.max_ttl_s`, by at most the configured span, never past the bounds (a category without
    bounds does not move). A client may only make its own request stricter: a higher threshold, a
    shorter TTL (a longer one is cut to what the category allows now); the caller refuses a looser
    threshold before this."""
    pressure = min(1.0, max(0.0, pressure))
    span = category.similarity_threshold - category.min_threshold
    # Never below the bound, nor below a threshold in force that is lower already (a verifier's floor).
    adapted = max(min(category.min_threshold, threshold), threshold - pressure * span)
    hit_threshold = max(adapted, requested_threshold or 0.0)
    floor = category.near_miss_floor
    if floor is not None and floor >= hit_threshold:
        floor = None
    allowed_ttl_s = category.ttl_s + pressure * (category.max_ttl_s - category.ttl_s)
    ttl_s = allowed_ttl_s if requested_ttl_s is None else min(requested_ttl_s, allowed_ttl_s)
    return Rules(hit_threshold=hit_threshold, near_miss_floor=floor, ttl_s=ttl_s)
