"""Prometheus metrics, one registry per app (no process-global collectors)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric


class _Thresholds:
    """Each category's similarity threshold in force, read when scraped."""

    def __init__(self, read: Callable[[], Mapping[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "semcache_similarity_threshold",
            "Similarity a semantic hit needs now, by category: the configured threshold (or the "
            "verifier's floor), raised by bad feedback, lowered within bounds by load.",
            labels=["category"],
        )
        for category, threshold in sorted(self._read().items()):
            gauge.add_metric([category], threshold)
        yield gauge


class _Verified:
    """Each category's verified-threshold estimates, read when scraped: `read()` gives category →
    (threshold estimate, estimated error rate or None)."""

    def __init__(self, read: Callable[[], Mapping[str, tuple[float, float | None]]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        threshold = GaugeMetricFamily(
            "semcache_threshold_estimate",
            "Verified thresholds: the similarity at which the category's fitted P(correct | similarity) "
            "reaches 1 - error_bound (1 until there are observations).",
            labels=["category"],
        )
        error = GaugeMetricFamily(
            "semcache_estimated_error_rate",
            "Verified thresholds: estimated wrong hits served per request the rule decided, by "
            "category (a served hit counts 1 - its lower bound on P(correct), over the most recent).",
            labels=["category"],
        )
        for category, (estimate, error_rate) in sorted(self._read().items()):
            threshold.add_metric([category], estimate)
            if error_rate is not None:
                error.add_metric([category], error_rate)
        yield threshold
        yield error


class _Loads:
    """Each deployment's load figure (1 = at capacity), read when scraped."""

    def __init__(self, read: Callable[[], Mapping[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "semcache_deployment_load",
            "Load of each deployment: the largest of its ratios to capacity (in flight, tokens per minute, "
            "latency against its target, recent error rate); 1 = at capacity.",
            labels=["deployment"],
        )
        for deployment, load in sorted(self._read().items()):
            gauge.add_metric([deployment], load)
        yield gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("semcache_requests", "Requests by cache outcome.", ["outcome"], registry=self.registry)
        self.fail_open = Counter(
            "semcache_fail_open",
            "Cache faults turned into plain misses, by stage.",
            ["stage"],
            registry=self.registry,
        )
        self.stored = Counter("semcache_stored", "Answers stored in the cache.", registry=self.registry)
        self.evicted = Counter(
            "semcache_evicted", "Entries evicted to keep a category within its quota.", ["category"],
            registry=self.registry,
        )  # fmt: skip
        self.upstream_errors = Counter(
            "semcache_upstream_errors", "Upstream errors by status.", ["status"], registry=self.registry
        )
        self.feedback = Counter(
            "semcache_feedback", "Ratings of served hits, by category and rating.", ["category", "rating"],
            registry=self.registry,
        )  # fmt: skip
        self.explorations = Counter(
            "semcache_explorations", "Requests explored (sent upstream and judged) rather than served, by category.",
            ["category"], registry=self.registry,
        )  # fmt: skip
        self.exploration_budget = Counter(
            "semcache_exploration_budget", "Explorations the budget allowed (spent) or refused.", ["result"],
            registry=self.registry,
        )  # fmt: skip
        self.judgements = Counter(
            "semcache_judgements",
            "Fresh answers judged against a cached one, by category and outcome (correct, wrong, "
            "undecided, dropped: the judge queue was full, failed).",
            ["category", "outcome"],
            registry=self.registry,
        )
        self.route_decisions = Counter(
            "semcache_route_decisions", "Where misses were sent, by deployment and reason (x-semcache-route-reason).",
            ["deployment", "reason"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "semcache_request_seconds",
            "Time to answer, by outcome.",
            ["outcome"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    def watch_thresholds(self, read: Callable[[], Mapping[str, float]]) -> Callable[[], None]:
        """Export `read()` (category → threshold) as a gauge; returns the function that stops it."""
        collector = _Thresholds(read)
        self.registry.register(collector)
        return lambda: self.registry.unregister(collector)

    def watch_verified(self, read: Callable[[], Mapping[str, tuple[float, float | None]]]) -> Callable[[], None]:
        """Export the verified-threshold estimates as gauges; returns the function that stops it."""
        collector = _Verified(read)
        self.registry.register(collector)
        return lambda: self.registry.unregister(collector)

    def watch_loads(self, read: Callable[[], Mapping[str, float]]) -> Callable[[], None]:
        """Export `read()` (deployment → load) as a gauge; returns the function that stops it."""
        collector = _Loads(read)
        self.registry.register(collector)
        return lambda: self.registry.unregister(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)
