"""The cache's Prometheus metrics, on a registry of its own (one per cache / agent app).

``thaw_cache_bytes`` (bytes held or reserved: complete revisions, partial pulls, pulls in flight),
``thaw_cache_budget_bytes``, ``thaw_cache_hits_total{model}`` (ensures served from disk),
``thaw_cache_misses_total{model}`` (pulls started: concurrent ensures sharing one pull count once),
``thaw_cache_pull_seconds`` (a successful pull, start to commit),
``thaw_cache_fetched_bytes_total`` (bytes transferred from S3, retries included),
``thaw_cache_resumed_bytes_total`` (bytes a pull found already on disk),
``thaw_cache_evictions_total{model}``, ``thaw_cache_pull_failures_total{model,code}``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PULL_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class CacheMetrics:
    """The metric objects; the cache calls their methods as things happen."""

    def __init__(
        self,
        registry: CollectorRegistry,
        used_bytes: Callable[[], float],
        budget_bytes: int | None,
    ) -> None:
        self.registry = registry
        self.bytes = Gauge(
            "thaw_cache_bytes",
            "Bytes the cache holds or has reserved (complete, partial and in-flight revisions)",
            registry=registry,
        )
        self.bytes.set_function(used_bytes)
        self.budget = Gauge(
            "thaw_cache_budget_bytes", "The disk budget (-1: none)", registry=registry
        )
        self.budget.set(-1 if budget_bytes is None else budget_bytes)
        self.hits = Counter(
            "thaw_cache_hits", "Ensures served from the local disk", ["model"], registry=registry
        )
        self.misses = Counter(
            "thaw_cache_misses",
            "Pulls from S3 started by ensures (one per shared download)",
            ["model"],
            registry=registry,
        )
        self.pull_seconds = Histogram(
            "thaw_cache_pull_seconds",
            "Duration of successful pulls, manifest to commit",
            buckets=PULL_SECONDS_BUCKETS,
            registry=registry,
        )
        self.fetched_bytes = Counter(
            "thaw_cache_fetched_bytes", "Bytes transferred from S3", registry=registry
        )
        self.resumed_bytes = Counter(
            "thaw_cache_resumed_bytes",
            "Bytes pulls found already on disk (resumed)",
            registry=registry,
        )
        self.evictions = Counter(
            "thaw_cache_evictions",
            "Revisions evicted to stay under budget",
            ["model"],
            registry=registry,
        )
        self.pull_failures = Counter(
            "thaw_cache_pull_failures", "Pulls that failed", ["model", "code"], registry=registry
        )
