"""The decider's values: what it observes (:class:`ModelObservation` of
:class:`ReplicaObservation`), what it decides (:class:`Decision`) and what it remembers between
decisions (:class:`DeciderState`). Plain frozen dataclasses, built through their constructors.
Replica states are the shared vocabulary's (:data:`kernel.vocab.ReplicaState`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kernel.vocab import ReplicaState


@dataclass(frozen=True)
class ReplicaObservation:
    """One replica as the adapter saw it. Metric fields are None when not (yet) scraped."""

    replica_id: str
    state: ReplicaState
    num_requests_waiting: float | None
    num_requests_running: float | None
    kv_cache_usage_ratio: float | None
    scrape_age_s: float | None
    #: Requests the front door (activator) has outstanding at this replica now: fresh without a
    #: scrape, so a floor under the scraped running + waiting (the excess counts as waiting). A
    #: busy engine answers ``/metrics`` late; without this floor a burst would look like an idle
    #: replica until the next good scrape. None: not known (the simulator's exact metrics).
    in_flight_requests: float | None = None


@dataclass(frozen=True)
class ModelObservation:
    """Everything the decider sees of one model at one instant."""

    model: str
    replicas: tuple[ReplicaObservation, ...]
    buffered_requests: int
    forecast_replicas: float | None = None


@dataclass(frozen=True)
class Decision:
    """What the decider wants for one model, and why.

    ``current_replicas`` is ready + starting (sleeping and draining replicas are not capacity).
    ``reason`` says in words which stages set the count. ``signals`` holds, for logs and metrics,
    each enabled signal's desired count over the stable window (``waiting``, ``concurrency``,
    ``kv_cache``), the window results (``stable``, ``panic``), ``buffered`` and, when given,
    ``forecast``.
    """

    model: str
    desired_replicas: int
    current_replicas: int
    reason: str
    panic: bool
    stale_metrics: bool
    cold_start: bool
    signals: Mapping[str, float] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        """True when the decision asks for a different replica count."""
        return self.desired_replicas != self.current_replicas


#: One sample of the observed totals: (time_s, waiting, concurrency, kv_usage_sum).
Sample = tuple[float, float, float, float]


@dataclass(frozen=True)
class DeciderState:
    """The decider's memory for one model; immutable, replaced by each decision.

    The stable window (Knative's metric buckets) is kept as parallel columns, oldest first:
    ``sample_times_s`` and the observed totals ``waiting_samples``, ``concurrency_samples``,
    ``kv_usage_samples`` (columns, so that sums and trims run in C). ``panic_since_s``: when panic
    last held (Knative's panicTime), None when calm. ``max_panic_replicas``: the most replicas
    asked for during this panic. ``delay_times_s`` / ``delay_desired``: the counts wanted within
    the scale-down delay. ``started_s``: the first decision's time.
    """

    sample_times_s: tuple[float, ...] = ()
    waiting_samples: tuple[float, ...] = ()
    concurrency_samples: tuple[float, ...] = ()
    kv_usage_samples: tuple[float, ...] = ()
    panic_since_s: float | None = None
    max_panic_replicas: int = 0
    delay_times_s: tuple[float, ...] = ()
    delay_desired: tuple[int, ...] = ()
    started_s: float | None = None

    @classmethod
    def initial(cls) -> DeciderState:
        """The state before the first decision."""
        return cls()

    @property
    def panicking(self) -> bool:
        return self.panic_since_s is not None

    @property
    def samples(self) -> tuple[Sample, ...]:
        """The stable window as rows: (time_s, waiting, concurrency, kv_usage_sum)."""
        return tuple(
            zip(
                self.sample_times_s,
                self.waiting_samples,
                self.concurrency_samples,
                self.kv_usage_samples,
                strict=True,
            )
        )
