"""The decider: how many replicas a model should have now. Pure — no I/O, no clock, no globals.

``decide(obs, policy, state, now_s) -> (decision, state)``: the observation of one model (its
replicas' engine metrics and the requests buffered at the activator), its
:class:`~autoscaler.policy.AutoscalingPolicy`, the decider's previous immutable state and the time
(seconds on any monotonic clock) in; a :class:`Decision` with a reason a person can read and the
next state out. The local stack, the simulator and the Knative controller all call this one
function; only the adapters that fill :class:`ModelObservation` differ.

A decision is a pipeline of small pure stages (:mod:`autoscaler.decider.stages`, each with its own
table test), composed in :mod:`autoscaler.decider.pipeline`; the values live in
:mod:`autoscaler.decider.types`. Knative KPA semantics (``pkg/autoscaler/scaling/autoscaler.go``),
with vLLM signals instead of request concurrency alone. In order:

1. Signals. One pass over the replicas: the observed totals ``waiting`` (engines' waiting
   requests + in-flight requests the front door has and the scrape does not show yet + requests
   buffered at the activator), ``concurrency`` (waiting + running) and the KV-cache usage sum of
   ready replicas (= ready x average; counted only while something runs or waits: an idle
   engine's KV blocks are cache). A ready replica with missing or stale metrics switches to the
   stale path below.
2. Windows. The totals are recorded in the stable window and averaged over it and over the panic
   window (Knative averages the metric, then divides by the target).
3. Desired. Each enabled target turns an average into replicas, ``ceil(total / target)``; each
   window asks for the largest over the targets.
4. Rate limits. Both counts are kept within ``[floor(ready / max_scale_down_rate),
   ceil(ready x max_scale_up_rate)]`` with ``ready`` at least 1 (Knative clamps before its panic
   logic, and so do we).
5. Panic. Panic starts when the panic window asks for ``panic_threshold_pct`` of the ready count,
   is extended while that holds, and ends one stable window after it last held. While panicking
   the count never goes down (not below the panic maximum, nor below the current count).
6. Floors, in order: activation scale (any count above zero is at least ``activation_scale``),
   the scale-down delay (the largest count over the delay window), the forecast,
   ``initial_replicas`` (during the first stable window) and the cold start: at zero replicas
   with requests buffered, ``max(1, activation_scale, min_replicas)`` at once
   (:func:`cold_start_decision` on its own; its words lead the reason).
7. Bounds: ``min_replicas`` and ``max_replicas`` always win.

The decider asks for 0 as soon as its stable window has seen no demand; the scale-to-zero grace
is counted after it, once, by the actuation every runtime shares (:mod:`autoscaler.scale_to_zero`,
where Knative keeps it: ``kpa/scaler.go`` ``handleScaleToZero``).

Stale or missing metrics on any ready replica: the window is not fed with half a picture; the
decider holds the current count (never down, never to zero), scales up only for the demand it can
still see (buffered requests, fresh replicas, in-flight counts; within the scale-up rate), keeps
the panic maximum while panicking, then runs the same floors (forecast, initial, cold start) and
bounds. Starting replicas count as current capacity, so a cold start in flight is not repeated.

Every stage that moves the count adds a note to the decision's ``reason``
(``scale up 1 -> 3: stable 60 s wants 3 (concurrency 25/10 -> 3); panic (...)``); ``signals``
carries the numbers behind it.
"""

from autoscaler.decider.pipeline import cold_start_decision, decide
from autoscaler.decider.types import DeciderState, Decision, ModelObservation, ReplicaObservation
from kernel.vocab import ReplicaState

__all__ = [
    "DeciderState",
    "Decision",
    "ModelObservation",
    "ReplicaObservation",
    "ReplicaState",
    "cold_start_decision",
    "decide",
]
