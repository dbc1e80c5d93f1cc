"""The activator's narrow interfaces: what it routes to, what it reports demand to, its limits.

The local stack's actuator implements :class:`EndpointSource` today; the Knative controller's
view of a revision's endpoints implements it in a cluster. :class:`DemandSink` is how the first
request buffered at zero reaches the autoscaler at once (an async call, not a poll).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class Replica:
    """One ready engine replica as the router sees it (metrics from its last scrape)."""

    replica_id: str
    base_url: str
    kv_cache_usage_ratio: float | None = None
    num_requests_waiting: float | None = None


class ModelLimits(BaseModel):
    """Per-model limits of the front door: requests held at zero replicas (more get 503 with
    ``Retry-After``), how long one waits (then 504), and the largest body (else 413).

    The policy file's ``models[].activator`` block is this type (one definition, one set of
    ranges); pydantic v2, ``extra="forbid"``, frozen.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    buffer_size: int = Field(
        100,
        strict=True,
        ge=1,  # the first buffered request is what pokes the autoscaler
        le=1_000_000,
        description="Requests held while the model scales from zero; more are refused with 503 "
        "and Retry-After.",
    )
    wait_timeout_s: float = Field(
        300.0,
        strict=True,
        gt=0,
        le=3600,
        description="How long a buffered request waits for a ready replica before a 504.",
    )
    max_body_bytes: int = Field(
        1_048_576,
        strict=True,
        ge=1024,
        description="Largest request body accepted (bytes); larger ones get a 413.",
    )


class EndpointSource(Protocol):
    """Where a model's ready replicas are (never sleeping or draining ones)."""

    def ready_replicas(self, model: str) -> Sequence[Replica]: ...


class DemandSink(Protocol):
    """Told at once when a model has a request buffered at zero ready replicas."""

    async def poke(self, model: str) -> None: ...
