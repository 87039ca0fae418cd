"""Live load of one deployment, measured where the gateway calls it: requests in flight, a moving
average of latency (time to first token for streams), the share of recent calls refused or failed,
the tokens of the last minute, and a cooldown after a 429/5xx/timeout. `sample()` hands the plain
numbers to `policies.load.load_of`.

The latency average is a true EWMA (each sample weighs `alpha`, the past decays geometrically), and
it stops counting as a load signal once no call has refreshed it for `window_s`: a deployment that
was slow while overloaded and then got no traffic is not taken to be slow for ever.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from policies.load import LoadSample, load_of

Outcome = Literal["ok", "rate-limited", "failed", "timeout"]
# A caller's own mistake (400, 401, 404...) says nothing about the deployment's health.
_FAULTS: frozenset[Outcome] = frozenset({"rate-limited", "failed", "timeout"})


def outcome_of(status: int | None) -> Outcome:
    """An HTTP status from the upstream (None: a complete answer) → what it says about the deployment."""
    if status is None or status < 429 or status in (430, 431):
        return "ok"
    if status == 429:
        return "rate-limited"
    if status == 504:
        return "timeout"
    return "failed" if status >= 500 else "ok"


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSettings:
    capacity: int
    tokens_per_minute: int | None = None
    target_latency_s: float | None = None
    cooldown_s: float = 5.0
    alpha: float = 0.2
    window_s: float = 30.0


class LoadTracker:
    """One deployment's live load. Every call is `begin()` then exactly one `end(...)`."""

    def __init__(self, settings: LoadSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self.in_flight = 0
        self.ewma_latency_s: float | None = None
        self.ewma_ttft_s: float | None = None
        self._latency_at = float("-inf")
        self._outcomes: deque[tuple[float, bool]] = deque()  # (when, fault)
        self._tokens: deque[tuple[float, int]] = deque()  # (when, tokens)
        self._tokens_total = 0
        self.cooldown_until = float("-inf")

    def begin(self) -> None:
        self.in_flight += 1

    def end(self, *, status: int | None, latency_s: float, first_byte: bool = False, tokens: int = 0) -> None:
        """A call is over: `status` None for a complete answer, else the upstream's error status;
        `latency_s` to the whole answer or (`first_byte`) to the first chunk of a stream."""
        now = self._clock()
        self.in_flight = max(0, self.in_flight - 1)
        outcome = outcome_of(status)
        self._outcomes.append((now, outcome in _FAULTS))
        if outcome in _FAULTS:
            self.cooldown_until = now + self.settings.cooldown_s
        else:
            self.observe_latency(latency_s, first_byte=first_byte)
        if tokens > 0:
            self._tokens.append((now, tokens))
            self._tokens_total += tokens
        self._prune(now)

    def observe_latency(self, latency_s: float, *, first_byte: bool = False) -> None:
        alpha = self.settings.alpha
        self.ewma_latency_s = _ewma(self.ewma_latency_s, latency_s, alpha)
        if first_byte:
            self.ewma_ttft_s = _ewma(self.ewma_ttft_s, latency_s, alpha)
        self._latency_at = self._clock()

    def _prune(self, now: float) -> None:
        while self._outcomes and self._outcomes[0][0] < now - self.settings.window_s:
            self._outcomes.popleft()
        while self._tokens and self._tokens[0][0] < now - 60.0:
            self._tokens_total -= self._tokens.popleft()[1]

    def healthy(self) -> bool:
        """False while it cools down after a 429/5xx/timeout."""
        return self._clock() >= self.cooldown_until

    def error_rate(self) -> float:
        self._prune(self._clock())
        if not self._outcomes:
            return 0.0
        return sum(fault for _, fault in self._outcomes) / len(self._outcomes)

    def tokens_last_minute(self) -> int:
        self._prune(self._clock())
        return self._tokens_total

    def sample(self) -> LoadSample:
        fresh = self._clock() - self._latency_at <= self.settings.window_s
        return LoadSample(
            in_flight=self.in_flight,
            capacity=self.settings.capacity,
            tokens_last_minute=self.tokens_last_minute(),
            tokens_per_minute=self.settings.tokens_per_minute,
            ewma_latency_s=self.ewma_latency_s if fresh else None,
            target_latency_s=self.settings.target_latency_s,
            error_rate=self.error_rate(),
        )

    def load(self) -> float:
        return load_of(self.sample())


def _ewma(current: float | None, sample: float, alpha: float) -> float:
    return sample if current is None else alpha * sample + (1 - alpha) * current
