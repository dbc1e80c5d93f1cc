"""The activator's narrow interfaces: what it routes to, what it reports demand to, its limits
(per model: :class:`ModelLimits`; per connection: :class:`ServerLimits`).

The local stack's actuator implements :class:`EndpointSource` today; the Knative controller's
view of a revision's endpoints implements it in a cluster. :class:`DemandSink` is how the first
request buffered at zero reaches the autoscaler at once (an async call, not a poll).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator


@dataclass(frozen=True)
class Replica:
    """One ready engine replica as the router sees it (metrics from its last scrape)."""

    replica_id: str
    base_url: str
    kv_cache_usage_ratio: float | None = None
    num_requests_waiting: float | None = None


MIB = 1024 * 1024


class ModelLimits(BaseModel):
    """Per-model limits of the front door: how many requests (and body bytes) it holds while no
    replica can take them, how long one waits, how much it sends to one replica at once, the
    largest body, and how long an upstream may take before its first byte and between bytes.

    The policy file's ``models[].activator`` block is this type (one definition, one set of
    ranges); pydantic v2, ``extra="forbid"``, frozen. Every value applies to new requests at
    once after a policy reload.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    buffer_size: int = Field(
        10_000,
        strict=True,
        ge=1,  # the first buffered request is what pokes the autoscaler
        le=1_000_000,
        description="Requests held while no replica can take them (the model at zero, or every "
        "replica at max_concurrency_per_replica); more are refused with 503 and Retry-After. "
        "Knative's activator holds 10,000 per revision.",
    )
    buffer_max_bytes: int = Field(
        256 * MIB,
        strict=True,
        ge=MIB,
        le=64 * 1024 * MIB,
        description="The buffer's memory bound: request body bytes held at once; a request that "
        "would pass it is refused with 503 and Retry-After (with buffer_size, whichever comes "
        "first).",
    )
    wait_timeout_s: float = Field(
        300.0,
        strict=True,
        gt=0,
        le=3600,
        description="How long a buffered request waits for a replica before a 504 with "
        "Retry-After.",
    )
    max_body_bytes: int = Field(
        1_048_576,
        strict=True,
        ge=1024,
        description="Largest request body accepted (bytes); larger ones get a 413.",
    )
    max_concurrency_per_replica: int = Field(
        1000,
        strict=True,
        ge=1,
        le=100_000,
        description="Most requests the activator has at one replica at once (Knative's "
        "containerConcurrency as its activator enforces it); more wait in the buffer, in order, "
        "and count as buffered demand. It also bounds the connections to one replica.",
    )
    upstream_connect_timeout_s: float = Field(
        5.0,
        strict=True,
        gt=0,
        le=300,
        description="Opening a connection to a replica; then the request is retried on another "
        "replica and this one is ejected from routing until its /health answers 200.",
    )
    upstream_first_byte_timeout_s: float = Field(
        300.0,
        strict=True,
        gt=0,
        le=3600,
        description="From the request sent to a replica to its first byte (the whole answer, "
        "unless streamed; the first event when streamed). Then the replica is ejected from "
        "routing until its /health answers 200, and the request is retried once on another "
        "replica, else answered 504 with Retry-After. Knative's responseStartTimeoutSeconds.",
    )
    upstream_idle_timeout_s: float = Field(
        60.0,
        strict=True,
        gt=0,
        le=3600,
        description="Longest silence of a replica between two bytes of a streamed answer; then "
        "the stream ends with an error event and the replica is ejected as above. Knative's "
        "idleTimeoutSeconds.",
    )

    @model_validator(mode="after")
    def _one_body_fits_the_buffer(self) -> ModelLimits:
        if self.buffer_max_bytes < self.max_body_bytes:
            raise ValueError(
                f"buffer_max_bytes = {self.buffer_max_bytes}, must be >= max_body_bytes "
                f"({self.max_body_bytes}): a request of the largest accepted size must fit"
            )
        return self


class ServerLimits(BaseModel):
    """The front door's connection-level limits, for every model: client read timeouts, the
    keep-alive, and the ``Retry-After`` it sends. The policy file's top-level ``activator``
    block is this type; every value applies to new connections at once after a reload."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    header_timeout_s: float = Field(
        30.0,
        strict=True,
        gt=0,
        le=3600,
        description="From a connection's opening (or the first byte of its next request) to the "
        "end of the request's headers; then 408 and the connection is closed (slowloris). "
        "nginx's client_header_timeout.",
    )
    body_timeout_s: float = Field(
        60.0,
        strict=True,
        gt=0,
        le=3600,
        description="From the end of a request's headers to the end of its body; then 408 and "
        "the connection is closed.",
    )
    keepalive_timeout_s: float = Field(
        30.0,
        strict=True,
        gt=0,
        le=3600,
        description="How long an idle keep-alive connection stays open between requests.",
    )
    retry_after_s: int = Field(
        5,
        strict=True,
        ge=1,
        le=3600,
        description="The Retry-After (seconds) of every 503 and 504 that asks the client to "
        "come back (a full buffer, a wait or upstream timeout, shutting down).",
    )


class EndpointSource(Protocol):
    """Where a model's ready replicas are (never sleeping or draining ones)."""

    def ready_replicas(self, model: str) -> Sequence[Replica]: ...


class DemandSink(Protocol):
    """Told at once when a model has a request buffered at zero ready replicas."""

    async def poke(self, model: str) -> None: ...
