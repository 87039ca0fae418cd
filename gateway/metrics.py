"""Prometheus metrics, one registry per app (no process-global collectors)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


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
        self.latency = Histogram(
            "semcache_request_seconds",
            "Time to answer, by outcome.",
            ["outcome"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
