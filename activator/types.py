"""The activator's narrow interfaces: what it routes to, what it reports demand to, its limits.

The local stack's actuator implements :class:`EndpointSource` today; the Knative controller's
view of a revision's endpoints implements it in a cluster. :class:`DemandSink` is how the first
request buffered at zero reaches the autoscaler at once (an async call, not a poll).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Replica:
    """One ready engine replica as the router sees it (metrics from its last scrape)."""

    replica_id: str
    base_url: str
    kv_cache_usage_ratio: float | None = None
    num_requests_waiting: float | None = None


@dataclass(frozen=True)
class ModelLimits:
    """Per-model limits of the front door: requests held at zero replicas (more get 503 with
    ``Retry-After``), how long one waits (then 504), and the largest body (else 413)."""

    buffer_size: int = 100
    wait_timeout_s: float = 300.0
    max_body_bytes: int = 1_048_576

    def __post_init__(self) -> None:
        if self.buffer_size < 1:  # the first buffered request is what pokes the autoscaler
            raise ValueError(f"buffer_size = {self.buffer_size}, must be >= 1")
        if self.wait_timeout_s <= 0:
            raise ValueError(f"wait_timeout_s = {self.wait_timeout_s}, must be > 0")
        if self.max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes = {self.max_body_bytes}, must be > 0")


class EndpointSource(Protocol):
    """Where a model's ready replicas are (never sleeping or draining ones)."""

    def ready_replicas(self, model: str) -> Sequence[Replica]: ...


class DemandSink(Protocol):
    """Told at once when a model has a request buffered at zero ready replicas."""

    async def poke(self, model: str) -> None: ...
