"""Thaw's shared vocabulary: the words several rooms must spell the same way.

Owns three lists, each written once here and imported everywhere else:

- **Replica states**: ``starting`` (process up or waking, not yet serving), ``ready`` (routed
  to), ``sleeping`` (vLLM sleep mode, a warm-pool member; never routed to), ``draining`` (no new
  requests; stopped once idle). The decider, the warm-pool plan, the GPU-memory arbiter, the
  local actuator, the local stack's ``thaw_model_replicas{state}`` and the simulator use these
  words; which of them hold an engine's awake GPU memory is written here too.
- **Load tiers**: where a starting replica's weights come from, fastest first. The coarse tier
  (:data:`LoadTier`: ``wake``, ``local_disk``, ``remote``) is what placement ranks and what the
  local stack and the CloudEvents report; the fine tier (:data:`FineLoadTier`) splits ``wake`` by
  the sleep level it wakes from (``wake_level1``: weights come back from host RAM;
  ``wake_level2``: weights reload from local disk into a live engine), which the simulator
  prices apart. :func:`wake_tier` and :func:`coarse_tier` go from one to the other.
  :data:`UNKNOWN_TIER` is reported where the tier cannot be seen (the Knative controller does
  not see a node's cache).
- **Metric names**: vLLM V1's (what the engines export, the emulator exports the same, the
  scrapers and the Prometheus history read), Thaw's activator's buffered-requests gauge (the
  local stack's front door; the history reads it), and Knative activator's queued-requests
  series (the Knative controller's demand at zero, scraped from each activator pod).

Plain constants and ``Literal`` types; no I/O, nothing of Thaw's imported.
"""

from __future__ import annotations

from typing import Final, Literal

# -- replica states ---------------------------------------------------------------------------

ReplicaState = Literal["starting", "ready", "sleeping", "draining"]
#: Every replica state, in the order a replica usually passes through them.
REPLICA_STATES: tuple[ReplicaState, ...] = ("starting", "ready", "sleeping", "draining")
#: States that count as capacity (ready now, or on its way): the decider's current replicas.
LIVE_STATES: tuple[ReplicaState, ...] = ("starting", "ready")
#: States in which an engine holds its whole awake GPU memory (weights + KV cache): starting
#: (loading or waking), ready, and draining (its process is still up). A sleeper keeps only a
#: residue (the GPU-memory arbiter, :mod:`autoscaler.arbiter`).
AWAKE_MEMORY_STATES: tuple[ReplicaState, ...] = ("starting", "ready", "draining")

# -- load tiers -------------------------------------------------------------------------------

#: vLLM's sleep levels: 1 offloads the weights to host RAM, 2 discards them.
SleepLevel = Literal[1, 2]

LoadTier = Literal["wake", "local_disk", "remote"]
#: Coarse load tiers, fastest first: wake a sleeping engine; start an engine on weights in the
#: node's model cache; start one on weights pulled from the object store.
LOAD_TIERS: tuple[LoadTier, ...] = ("wake", "local_disk", "remote")

FineLoadTier = Literal["wake_level1", "wake_level2", "local_disk", "remote"]
#: Fine load tiers, fastest first: ``wake`` split by the sleep level woken from.
FINE_LOAD_TIERS: tuple[FineLoadTier, ...] = ("wake_level1", "wake_level2", "local_disk", "remote")
#: The tiers a new engine (not a sleeper) can load from; the same words in both vocabularies.
START_TIERS: tuple[Literal["local_disk", "remote"], ...] = ("local_disk", "remote")

#: The tier reported where it cannot be seen (the Knative controller does not see node caches).
UNKNOWN_TIER: Final = "unknown"
ReportedTier = Literal["wake", "local_disk", "remote", "unknown"]


def wake_tier(level: int) -> FineLoadTier:
    """The fine tier of waking a sleeper of sleep ``level`` (1 or 2)."""
    if level not in (1, 2):
        raise ValueError(f"level = {level!r}: must be a vLLM sleep level, 1 or 2")
    return "wake_level1" if level == 1 else "wake_level2"


_COARSE: dict[FineLoadTier, LoadTier] = {
    "wake_level1": "wake",
    "wake_level2": "wake",
    "local_disk": "local_disk",
    "remote": "remote",
}


def coarse_tier(tier: FineLoadTier) -> LoadTier:
    """The coarse tier of a fine one: either wake level is a ``wake``."""
    return _COARSE[tier]


# -- metric names: vLLM V1 (and the emulator, which exports the same) -----------------------------

#: Gauges: requests queued and running in the engine's scheduler.
VLLM_NUM_REQUESTS_WAITING: Final = "vllm:num_requests_waiting"
VLLM_NUM_REQUESTS_RUNNING: Final = "vllm:num_requests_running"
#: Gauge: KV-cache usage, 0..1 (vLLM V1).
VLLM_KV_CACHE_USAGE: Final = "vllm:kv_cache_usage_perc"
#: The same gauge's name before vLLM V1.
VLLM_KV_CACHE_USAGE_LEGACY: Final = "vllm:gpu_cache_usage_perc"
#: Gauge per ``sleep_state`` label value (:data:`VLLM_SLEEP_STATE_VALUES`): 1 for the current one.
VLLM_ENGINE_SLEEP_STATE: Final = "vllm:engine_sleep_state"
#: Counters, as declared (Prometheus exposes each with a ``_total`` suffix: :func:`total`).
VLLM_PROMPT_TOKENS: Final = "vllm:prompt_tokens"
VLLM_GENERATION_TOKENS: Final = "vllm:generation_tokens"
VLLM_REQUEST_SUCCESS: Final = "vllm:request_success"
#: Histograms.
VLLM_TIME_TO_FIRST_TOKEN: Final = "vllm:time_to_first_token_seconds"
VLLM_INTER_TOKEN_LATENCY: Final = "vllm:inter_token_latency_seconds"
VLLM_E2E_REQUEST_LATENCY: Final = "vllm:e2e_request_latency_seconds"

#: Labels: the served model name, the data-parallel engine index, the sleep state, the finish.
VLLM_MODEL_LABEL: Final = "model_name"
VLLM_ENGINE_LABEL: Final = "engine"
VLLM_SLEEP_STATE_LABEL: Final = "sleep_state"
VLLM_FINISHED_REASON_LABEL: Final = "finished_reason"
#: ``sleep_state`` label values by sleep level (0: awake).
VLLM_SLEEP_STATE_VALUES: dict[int, str] = {0: "awake", 1: "weights_offloaded", 2: "discard_all"}


def total(counter: str) -> str:
    """The name Prometheus exposes a counter under: ``vllm:prompt_tokens_total``."""
    return f"{counter}_total"


# -- metric names: Thaw's activator, Knative's activator ------------------------------------------

#: Gauge of Thaw's activator: requests held for a model with no ready replica (label ``model``).
THAW_ACTIVATOR_BUFFERED_REQUESTS: Final = "thaw_activator_buffered_requests"
THAW_ACTIVATOR_MODEL_LABEL: Final = "model"

#: Knative activator's requests queued per revision: the OpenTelemetry UpDownCounter
#: ``kn.revision.request.queued`` as its Prometheus exporter names it, with its attributes
#: ``k8s.namespace.name`` and ``kn.revision.name`` as labels.
KNATIVE_REVISION_REQUEST_QUEUED: Final = "kn_revision_request_queued"
KNATIVE_NAMESPACE_LABEL: Final = "k8s_namespace_name"
KNATIVE_REVISION_LABEL: Final = "kn_revision_name"
