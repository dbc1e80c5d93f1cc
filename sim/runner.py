"""Wiring for one ``thaw sim`` run: trace models to fleet models, policies to decider configs.

Owns the mapping rules, pure: each trace model runs as the fleet model of the same name, else as
``fleet.models[i % len]`` in sorted-name order; the ``thaw`` policy of a trace model is the policy
file's model of the same name, else its first model; ``kpa`` gets Knative's defaults with the same
``max_replicas``; ``always-on`` gets :func:`~sim.core.peak_replicas` per model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from autoscaler.policy import ThawConfig
from sim.core import PolicyName, SimConfig, SimResult, kpa_policy, peak_replicas, simulate
from sim.fleet import Fleet, FleetModel
from sim.traces import Request


def assign_specs(requests: Sequence[Request], fleet: Fleet) -> dict[str, FleetModel]:
    """Which fleet model each trace model runs as."""
    names = sorted({r.model for r in requests})
    by_name = {m.name: m for m in fleet.models}
    return {n: by_name.get(n, fleet.models[i % len(fleet.models)]) for i, n in enumerate(names)}


def sim_config(
    policy: PolicyName,
    requests: Sequence[Request],
    fleet: Fleet,
    thaw: ThawConfig,
    horizon_s: float,
) -> SimConfig:
    """The :class:`SimConfig` of ``policy`` for this trace."""
    specs = assign_specs(requests, fleet)
    auto = {n: (thaw.model(n) or thaw.models[0]).autoscaling for n in specs}
    if policy == "kpa":
        auto = {n: kpa_policy(a.max_replicas) for n, a in auto.items()}
    always: dict[str, int] = {}
    if policy == "always-on":
        per_model: dict[str, list[Request]] = {n: [] for n in specs}
        for r in requests:
            per_model[r.model].append(r)
        always = {n: peak_replicas(rs, specs[n]) for n, rs in per_model.items()}
    return SimConfig(
        policy=policy,
        autoscaling=auto,
        specs=specs,
        tick_s=thaw.tick_s,
        always_on_replicas=always,
        horizon_s=horizon_s,
    )


def run_policies(
    policies: Sequence[PolicyName],
    requests: Sequence[Request],
    fleet: Fleet,
    thaw: ThawConfig,
    horizon_s: float,
    progress: Callable[[int], None] | None = None,
) -> list[SimResult]:
    """Simulate each policy on the same trace, in order."""
    return [
        simulate(requests, fleet, sim_config(p, requests, fleet, thaw, horizon_s), progress)
        for p in policies
    ]
