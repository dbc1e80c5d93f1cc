"""Wiring for one ``thaw sim`` run: trace models to fleet models, policies to decider configs.

Owns the mapping rules, pure: each trace model runs as the fleet model of the same name, else as
``fleet.models[i % len]`` in sorted-name order; the ``thaw`` policy of a trace model is the policy
file's model of the same name, else its first model (autoscaling with its forecast when enabled,
and warm pool; a warm pool with ``weights_bytes: 0`` gets the fleet model's weights);
``predictive`` is ``thaw`` with a forecaster for every model (the policy's ``forecast`` block, or
the one given, enabled either way); a forecaster's horizon is its ``horizon_s``, else the model's
derived cold-start time on its first pool from the run's tier;
``kpa`` gets Knative's defaults with the same ``max_replicas`` and no warm pool; ``always-on``
gets :func:`~sim.sizing.peak_replicas` per model from its load (prefill included) on its first
pool, or, with ``fill``, the whole fleet shared out by load (:func:`~sim.sizing.fill_always_on`:
how ``thaw sim plan`` sizes it).

It also owns the warm-up: :func:`with_warmup` puts the first ``warmup_s`` of the trace in front
of it, unmeasured, so that every policy meets the measured trace with the fleet it would have
after such traffic, rather than with every model at zero (an artefact of starting a replay, not
of the policy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from autoscaler.policy import ForecastConfig, WarmPoolConfig, kpa_policy
from kernel.vocab import FineLoadTier
from policy_file.schema import ThawConfig
from sim.core import PolicyName, SimConfig, SimResult, simulate
from sim.fleet import Fleet, FleetModel, cold_start_s
from sim.predictive import ForecastPlan
from sim.sizing import fill_always_on, model_load, peak_replicas
from sim.traces import Request


def assign_specs(requests: Sequence[Request], fleet: Fleet) -> dict[str, FleetModel]:
    """Which fleet model each trace model runs as."""
    names = sorted({r.model for r in requests})
    by_name = {m.name: m for m in fleet.models}
    return {n: by_name.get(n, fleet.models[i % len(fleet.models)]) for i, n in enumerate(names)}


def with_warmup(requests: Sequence[Request], warmup_s: float) -> tuple[tuple[Request, ...], int]:
    """The trace's first ``warmup_s`` seconds, then the whole trace shifted by ``warmup_s``.

    Returns the requests and the index of the first measured one.
    """
    if warmup_s <= 0:
        return tuple(requests), 0
    prime = tuple(r for r in requests if r.arrival_s < warmup_s)
    shifted = tuple(replace(r, arrival_s=r.arrival_s + warmup_s) for r in requests)
    return prime + shifted, len(prime)


def by_model(requests: Sequence[Request], names: Sequence[str]) -> dict[str, list[Request]]:
    """``requests`` split per trace model (every name present, maybe empty)."""
    out: dict[str, list[Request]] = {n: [] for n in names}
    for r in requests:
        out[r.model].append(r)
    return out


def sim_config(
    policy: PolicyName,
    requests: Sequence[Request],
    fleet: Fleet,
    thaw: ThawConfig,
    horizon_s: float,
    *,
    warmup_s: float = 0.0,
    first_measured: int = 0,
    tier: FineLoadTier = "local_disk",
    forecast: ForecastConfig | None = None,
    fill: bool = False,
) -> SimConfig:
    """The :class:`SimConfig` of ``policy`` for this trace (``requests`` without the warm-up).

    ``forecast``: the ``predictive`` policy's forecaster settings for every model (None: each
    model's own ``autoscaling.forecast``). ``fill``: always-on takes every GPU of ``fleet``,
    shared out by load, instead of each model's peak replicas.
    """
    specs = assign_specs(requests, fleet)
    chosen = {n: thaw.model(n) or thaw.models[0] for n in specs}
    auto = {n: c.autoscaling for n, c in chosen.items()}
    warm: dict[str, WarmPoolConfig] = {}
    if policy in ("thaw", "predictive"):
        for n, c in chosen.items():
            w = c.warm_pool
            if w.enabled and w.weights_bytes == 0:
                w = w.model_copy(update={"weights_bytes": specs[n].weights_bytes})
            warm[n] = w
    if policy == "kpa":
        auto = {n: kpa_policy(a.max_replicas) for n, a in auto.items()}
    plans: dict[str, ForecastPlan] = {}
    if policy in ("thaw", "predictive"):
        for n, c in chosen.items():
            if policy == "predictive":
                fc = (forecast or c.autoscaling.forecast).model_copy(update={"enabled": True})
            elif c.autoscaling.forecast.enabled:
                fc = c.autoscaling.forecast
            else:
                continue
            spec = specs[n]
            horizon = fc.horizon_s
            if horizon is None:
                horizon = cold_start_s(spec, fleet.pool(spec.pools[0]), tier)
            plans[n] = ForecastPlan(fc, horizon, auto[n].target_concurrency_per_replica)
    always: dict[str, int] = {}
    starts: tuple[str, ...] = ()
    if policy == "always-on":
        per_model = by_model(requests, list(specs))
        perfs = {n: fleet.engine_perf(s, s.pools[0]) for n, s in specs.items()}
        if fill:
            loads = {n: model_load(rs, perfs[n]) for n, rs in per_model.items()}
            starts = fill_always_on(loads, specs, fleet)
        else:
            always = {n: peak_replicas(rs, specs[n], perf=perfs[n]) for n, rs in per_model.items()}
    return SimConfig(
        policy=policy,
        autoscaling=auto,
        specs=specs,
        warm_pools=warm,
        tick_s=thaw.tick_s,
        tier=tier,
        always_on_replicas=always,
        always_on_starts=starts,
        horizon_s=horizon_s + warmup_s if horizon_s > 0 else 0.0,
        first_measured=first_measured,
        measure_from_s=warmup_s,
        forecasts=plans,
    )


def run_policies(
    policies: Sequence[PolicyName],
    requests: Sequence[Request],
    fleet: Fleet,
    thaw: ThawConfig,
    horizon_s: float,
    progress: Callable[[int], None] | None = None,
    *,
    warmup_s: float = 0.0,
    tier: FineLoadTier = "local_disk",
    forecast: ForecastConfig | None = None,
) -> list[SimResult]:
    """Simulate each policy on the same trace (after the same warm-up), in order.

    ``horizon_s`` (0: the last arrival) is measured from the start of the trace proper.
    """
    primed, first = with_warmup(requests, warmup_s)
    out = []
    for p in policies:
        cfg = sim_config(
            p,
            requests,
            fleet,
            thaw,
            horizon_s,
            warmup_s=warmup_s,
            first_measured=first,
            tier=tier,
            forecast=forecast,
        )
        out.append(simulate(primed, fleet, cfg, progress))
    return out
