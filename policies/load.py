"""One load figure per deployment from plain numbers the gateway measures, and the pressure that load
puts on a category's cache rules.

Load is in [0, 1+]: 1 means the deployment is at capacity by its tightest measure (concurrent
requests, tokens per minute, latency against its target, or the share of recent calls it refused or
failed). Pressure is in [0, 1]: 0 below the watermark, rising linearly to 1 at full load, with
hysteresis so that a load hovering at the watermark does not make the rules flap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from policies.schema import check, in_range


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSample:
    in_flight: int
    # Most concurrent requests the deployment takes.
    capacity: int
    # Tokens (prompt + completion) in the last minute, and the deployment's budget per minute (None: unbounded).
    tokens_last_minute: int = 0
    tokens_per_minute: int | None = None
    # Moving average of latency (time to first token for streams) and the latency the deployment is
    # expected to keep at capacity (None: latency is not a load signal for it).
    ewma_latency_s: float | None = None
    target_latency_s: float | None = None
    # Share of recent calls answered 429/5xx or timed out, in [0, 1].
    error_rate: float = 0.0


# A deployment that refuses or fails this share of its calls is taken to be at capacity.
ERROR_RATE_AT_CAPACITY = 0.2


def load_of(sample: LoadSample) -> float:
    """The deployment's load: the largest of its ratios to capacity (0 when idle)."""
    ratios = [sample.in_flight / max(sample.capacity, 1), sample.error_rate / ERROR_RATE_AT_CAPACITY]
    if sample.tokens_per_minute:
        ratios.append(sample.tokens_last_minute / sample.tokens_per_minute)
    if sample.ewma_latency_s is not None and sample.target_latency_s:
        ratios.append(sample.ewma_latency_s / sample.target_latency_s)
    load = max(ratios)
    return load if math.isfinite(load) and load > 0 else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PressureSettings:
    # Below this load nothing moves; at `full_at` the rules reach their bounds.
    watermark: float = field(default=0.7, metadata=check(in_range(0, 10, low_open=True)))
    full_at: float = field(default=1.0, metadata=check(in_range(0, 10, low_open=True)))
    # Pressure engages at the watermark and lets go only once load is this far below it; once
    # engaged, it falls only by more than this at a time.
    hysteresis: float = field(default=0.05, metadata=check(in_range(0, 1, low_open=False)))

    def __post_init__(self) -> None:
        if self.full_at <= self.watermark:
            raise ValueError(f"full_at ({self.full_at:g}) must be above the watermark ({self.watermark:g})")


@dataclass(frozen=True, slots=True, kw_only=True)
class Pressure:
    """The pressure in force and whether it is engaged: a value, replaced (never mutated) per update."""

    value: float = 0.0
    engaged: bool = False


def update_pressure(current: Pressure, load: float, settings: PressureSettings) -> Pressure:
    """The pressure after a new load reading."""
    if not math.isfinite(load):
        load = settings.full_at
    if current.engaged and load <= settings.watermark - settings.hysteresis:
        return Pressure()
    if not current.engaged and load < settings.watermark:
        return Pressure()
    target = min(1.0, max(0.0, (load - settings.watermark) / (settings.full_at - settings.watermark)))
    if target < current.value and current.value - target <= settings.hysteresis:
        return Pressure(value=current.value, engaged=True)  # a small dip: hold
    return Pressure(value=target, engaged=True)
