"""Sizing from load: what a model's traffic asks of always-on replicas, and fleets of a given
size with a fleet file's pool mix. Pure: no I/O, no clock.

A replica's time goes to prefill and to decode steps (:class:`~engine.perf_model.EngineCore`):
a step prefills what it admits (``prompt / prefill_tokens_per_s``, one prompt after another: no
batching makes it cheaper) and decodes one token for each running sequence
(``decode_step_s(batch)``, shared by the batch). So the replica-seconds a request needs are its
prefill plus its output tokens at the best batch the engine can run: ``max_num_seqs``, or fewer
when the KV cache holds fewer sequences of the trace's sizes (long prompts). :func:`model_load`
is the busiest window's replica-seconds per second (replicas busy at 100 %), prefill included;
:func:`peak_replicas` divides it by a utilization target.

:func:`fill_always_on` sizes always-on for a fleet of given GPUs: every model one replica (the
busiest first while GPUs last), then each further GPU to the model with the most load per
replica that still has a pool with a free GPU. :func:`scaled_fleet` is the fleet file with a
given number of GPUs in the pools being sized, apportioned to the file's mix by a divisor method
(one GPU more never takes one from any pool).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from engine.perf_model import EnginePerf
from sim.fleet import Fleet, FleetModel
from sim.predictive import PoolChooser
from sim.traces import Request

#: Always-on replicas carry the busiest minute at this share of their capacity.
UTILIZATION = 0.7
WINDOW_S = 60.0


def best_batch(requests: Sequence[Request], perf: EnginePerf) -> int:
    """The largest batch the engine runs on these requests: ``max_num_seqs``, or the sequences
    of the mean reserved size (prompt + output) its KV cache holds, if fewer (at least 1)."""
    if not requests:
        return perf.max_num_seqs
    mean = sum(r.prompt_tokens + r.output_tokens for r in requests) / len(requests)
    fits = int(perf.kv_capacity_tokens // max(mean, 1.0))
    return max(1, min(perf.max_num_seqs, fits))


def model_load(requests: Sequence[Request], perf: EnginePerf, window_s: float = WINDOW_S) -> float:
    """Replicas busy at 100 % in the busiest ``window_s`` of ``requests``: prefill seconds plus
    output tokens x the per-sequence share of a decode step at :func:`best_batch`, per second."""
    if not requests:
        return 0.0
    batch = best_batch(requests, perf)
    per_token = perf.decode_step_s(batch) / batch
    buckets: dict[int, float] = {}
    for r in requests:
        k = int(r.arrival_s // window_s)
        work = perf.prefill_s(r.prompt_tokens) + r.output_tokens * per_token
        buckets[k] = buckets.get(k, 0.0) + work
    return max(buckets.values()) / window_s


def peak_replicas(
    requests: Sequence[Request],
    spec: FleetModel,
    window_s: float = WINDOW_S,
    utilization: float = UTILIZATION,
    perf: EnginePerf | None = None,
) -> int:
    """Replicas that carry the busiest ``window_s`` of ``requests`` at ``utilization``
    (:func:`model_load`; ``perf``: the engine on the pool it runs on, default the model's own)."""
    load = model_load(requests, perf or spec.perf, window_s)
    return max(1, math.ceil(load / utilization - 1e-9))


def fill_always_on(
    loads: Mapping[str, float], specs: Mapping[str, FleetModel], fleet: Fleet
) -> tuple[str, ...]:
    """Always-on on ``fleet``: the trace models' replica starts, in order (one name a replica).

    Every model gets a replica, the busiest first, while one of its pools has a free GPU; then
    each free GPU goes to the model with the most load per replica (``loads``: replicas busy at
    100 %) that can still place one, ties to the name first in order. The simulator starts them
    in this order with the same pool choice, so they land where they were counted.
    """
    chooser = PoolChooser(fleet)
    free = {p.name: p.count for p in fleet.pools}
    order: list[str] = []
    counts: dict[str, int] = {}
    by_load = sorted(loads, key=lambda n: (-loads[n], n))

    def place(name: str) -> bool:
        pool = chooser.pick(specs[name], free)
        if pool is None:
            return False
        free[pool] -= 1
        order.append(name)
        counts[name] = counts.get(name, 0) + 1
        return True

    for name in by_load:
        place(name)
    growing = [n for n in by_load if n in counts]
    while growing and any(free.values()):
        best = max(growing, key=lambda n: (loads[n] / counts[n], -by_load.index(n)))
        if not place(best):
            growing.remove(best)
    return tuple(order)


def scaled_fleet(fleet: Fleet, gpus: int, pools: Sequence[str] | None = None) -> Fleet:
    """``fleet`` with ``gpus`` GPUs in ``pools`` (default: all), apportioned to their counts in
    the file (D'Hondt: each GPU in turn to the pool with the highest file count / (given + 1),
    ties to the first pool); the other pools keep their counts. Pools with count 0 in the file
    stay at 0 unless every sized pool is 0 (then they share equally)."""
    names = [p.name for p in fleet.pools] if pools is None else list(pools)
    weights = {p.name: float(p.count) for p in fleet.pools if p.name in names}
    if not any(weights.values()):
        weights = dict.fromkeys(weights, 1.0)
    given = dict.fromkeys(weights, 0)
    order = [p.name for p in fleet.pools if p.name in weights]
    for _ in range(max(gpus, 0)):
        best = max(order, key=lambda n: (weights[n] / (given[n] + 1), -order.index(n)))
        given[best] += 1
    return fleet.model_copy(
        update={
            "pools": tuple(
                p.model_copy(update={"count": given[p.name]}) if p.name in given else p
                for p in fleet.pools
            )
        }
    )


def sized_gpus(fleet: Fleet, pools: Sequence[str] | None = None) -> int:
    """GPUs in ``pools`` (default: all) of ``fleet``."""
    return sum(p.count for p in fleet.pools if pools is None or p.name in pools)
