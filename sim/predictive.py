"""The simulator's side of prediction and placement: forecasters fed from simulated arrivals, and
the pool a new replica takes when a model fits several. Pure: no I/O, no clock.

- :class:`ForecastPlan` (frozen, in :class:`~sim.core.SimConfig`) says how one model forecasts:
  the policy's :class:`~autoscaler.policy.ForecastConfig`, the horizon (the model's derived
  cold-start time) and the concurrency target its replicas run at. :meth:`ForecastPlan.start`
  gives the run's :class:`SimForecaster`, which the core feeds each arrival and asks for
  ``forecast_replicas`` at each decision (the time in the system per request, for Little's law,
  it learns from the requests in the system at each decision).
- :class:`PoolChooser` picks the pool of a new replica: the model's only pool with a free GPU
  when it lists one (as before), else :func:`autoscaler.placement.place` over the pools it lists
  (fit: weights + KV for one full-length sequence within the pool's memory share; capacity: free
  GPUs; then the lowest cost per unit served, a replica's rate on a pool being its decode tokens
  per second at a full batch with the pool's engine speed, :meth:`~sim.fleet.Fleet.engine_perf`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from autoscaler.decider.stages import ceil_count
from autoscaler.forecast import ReplicaForecast, ReplicaForecaster
from autoscaler.placement import PlacementModel, PlacementPool, place
from autoscaler.policy import ForecastConfig
from sim.fleet import Fleet, FleetModel


@dataclass(frozen=True)
class ForecastPlan:
    """How one simulated model forecasts its demand."""

    config: ForecastConfig
    horizon_s: float
    target_concurrency: float | None

    def start(self) -> SimForecaster:
        """A fresh forecaster for one run."""
        return SimForecaster(self)


class SimForecaster:
    """One model's forecaster during one run (mutable, private to the run)."""

    def __init__(self, plan: ForecastPlan) -> None:
        self.plan = plan
        self.forecaster = ReplicaForecaster(plan.config)
        self.last: ReplicaForecast | None = None

    def observe(self, t_s: float) -> None:
        """One arrival at ``t_s``."""
        self.forecaster.observe(t_s)

    def next_change_tick(self, now_s: float, tick_s: float, k: int) -> int:
        """The first tick after ``k`` (now ``now_s``) whose forecast is for another interval or
        another target interval than now's (the forecaster's cache key; same float
        expressions), when asking again could give another answer."""
        interval = self.plan.config.interval_s
        horizon = self.plan.horizon_s
        key = (math.floor(now_s / interval), math.floor((now_s + horizon) / interval))
        t = k + 1
        while (
            math.floor(t * tick_s / interval),
            math.floor((t * tick_s + horizon) / interval),
        ) == key:
            t += 1
        return t

    def wanted(self) -> int:
        """The replicas the last forecast asks the decider for (its floor: ``ceil``, as
        :func:`autoscaler.decider.stages.ceil_count`; 0 without a trusted forecast)."""
        floor = self.last.replicas if self.last is not None else None
        return 0 if floor is None else ceil_count(floor)

    def replicas(self, now_s: float, in_system: float) -> float | None:
        """``forecast_replicas`` for the decision at ``now_s``; None when not trusted."""
        self.forecaster.observe_concurrency(now_s, in_system)
        self.last = self.forecaster.replicas(
            now_s, self.plan.horizon_s, self.plan.target_concurrency
        )
        return self.last.replicas


def min_kv_bytes(spec: FleetModel) -> int:
    """KV cache for one sequence of the model's full context (vLLM refuses to start with less)."""
    return spec.kv_bytes_per_token * spec.perf.max_model_len_tokens


class PoolChooser:
    """Where a new replica of a model goes, given the free GPUs of each pool."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._models: dict[str, tuple[PlacementModel, dict[str, float]]] = {}

    def pick(self, spec: FleetModel, free_gpus: Mapping[str, int]) -> str | None:
        """The pool for one more replica of ``spec``; None when none of its pools has room."""
        if len(spec.pools) == 1:
            only = spec.pools[0]
            return only if free_gpus[only] >= 1 else None
        known = self._models.get(spec.name)
        if known is None:
            rates = {}
            for name in spec.pools:
                perf = self.fleet.engine_perf(spec, name)
                rates[name] = perf.max_num_seqs / perf.decode_step_s(perf.max_num_seqs)
            known = (PlacementModel(spec.name, spec.weights_bytes, min_kv_bytes(spec)), rates)
            self._models[spec.name] = known
        model, rates = known
        pools = []
        used: dict[str, int] = {}
        for name in spec.pools:
            p = self.fleet.pool(name)
            share = p.speed.memory_utilization_ratio
            pools.append(
                PlacementPool(
                    name,
                    p.gpu_memory_bytes,
                    p.cost_per_hour_usd,
                    p.count,
                    usable_memory_ratio=share if share is not None else 1.0,
                )
            )
            used[name] = p.count - free_gpus[name]
        chosen = place(model, pools, used, serve_rate=rates)
        return chosen.pool if chosen is not None else None


__all__ = ["ForecastPlan", "PoolChooser", "SimForecaster", "min_kv_bytes"]
