"""The capacity planner: for each policy, the smallest fleet that reaches an SLO target on a trace,
then GPU-hours and cost side by side at that equal SLO. Pure: the simulations come in through an
``evaluate`` function (``thaw sim plan`` runs them in a process pool), so the search is the same,
probe for probe, whatever runs them.

A fleet size is a GPU count in the pools being sized (default: all), shared out to the fleet
file's mix (:func:`~sim.sizing.scaled_fleet`; one GPU more never takes one from a pool). A size
*reaches* the target when the policy's ``slo_attainment_ratio`` on it is at least the target
(every measured arrival counts; one stopped early because its misses already exceed what the
target allows does not reach it).

The search, per policy, in rounds (each round's probes, over every policy still searching, are
one batch for ``evaluate``):

1. Bracket: the fleet file's size first; then, while it reaches the target, half of it (down to
   1 GPU), else twice it (up to ``max_gpus``): until a size that reaches it and one that does
   not.
2. Bisect between them down to adjacent sizes: the found size reaches the target and one GPU
   fewer does not (both simulated). A policy that does not reach it at ``max_gpus`` is reported
   as not reached, with a run at the largest size to the end: how close it came, and its
   cold-start requests (scale to zero on a long tail of models cannot reach every target).

The attainment need not be monotone in the GPU count (placement, a start refused at the wrong
moment), so the found size is the boundary this search finds, not a proof that no smaller size
passes; the plan's ``search`` lists every probe.

Always-on is sized by the same search: on a fleet of N GPUs it takes all N, one replica per model
first, the rest to the models with the most load per replica (:func:`~sim.sizing.
fill_always_on`), never one replica per model by fiat.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from autoscaler.policy import ForecastConfig
from kernel.vocab import FineLoadTier
from policy_file.schema import ThawConfig
from sim.core import PolicyName, SimResult, simulate
from sim.fleet import Fleet
from sim.report import SloOverride, slos, summarize
from sim.runner import assign_specs, sim_config, with_warmup
from sim.sizing import scaled_fleet
from sim.traces import Request


@dataclass(frozen=True, order=True)
class Probe:
    """One simulation the search asks for: a policy on a fleet of ``gpus`` GPUs."""

    policy: PolicyName
    gpus: int
    stop_early: bool = True
    """Stop once the misses exceed what the target allows (off: run to the end, to say how
    far from the target a policy stays)."""


@dataclass(frozen=True)
class Outcome:
    """What one probe found."""

    probe: Probe
    attainment_ratio: float
    """``slo_attainment_ratio`` (a lower bound when stopped early)."""
    stopped_early: bool
    summary: Mapping[str, Any] = field(default_factory=dict)
    """The report entry of the run, with ``fleet_gpus_by_pool`` (empty when stopped early)."""
    result: SimResult | None = None
    """The run itself (None when stopped early)."""

    def reaches(self, target: float) -> bool:
        return not self.stopped_early and self.attainment_ratio >= target


@dataclass(frozen=True)
class Found:
    """The search's answer for one policy."""

    policy: PolicyName
    gpus: int | None
    """The smallest size found that reaches the target; None: not reached at ``max_gpus``."""
    outcome: Outcome | None
    """The run at that size; when not reached, the run at the largest size tried, to the end
    (what it reached there and why)."""
    probes: tuple[Outcome, ...]
    """Every probe of this policy, in the order run."""


@dataclass(frozen=True)
class PlanJob:
    """Everything a probe needs besides its policy and size (sent once to each worker)."""

    requests: tuple[Request, ...]
    """The trace proper (without the warm-up)."""
    fleet: Fleet
    thaw: ThawConfig
    target: float
    pools: tuple[str, ...] | None = None
    """The pools being sized (None: all), holding their mix; the others keep their counts."""
    horizon_s: float = 0.0
    warmup_s: float = 0.0
    tier: FineLoadTier = "local_disk"
    override: SloOverride | None = None
    forecast: ForecastConfig | None = None

    def fleet_of(self, gpus: int) -> Fleet:
        return scaled_fleet(self.fleet, gpus, self.pools)


def run_probe(job: PlanJob, probe: Probe) -> Outcome:
    """Simulate one probe; stop as soon as its misses exceed what the target allows."""
    fleet = job.fleet_of(probe.gpus)
    primed, first = with_warmup(job.requests, job.warmup_s)
    cfg = sim_config(
        probe.policy,
        job.requests,
        fleet,
        job.thaw,
        job.horizon_s,
        warmup_s=job.warmup_s,
        first_measured=first,
        tier=job.tier,
        forecast=job.forecast,
        fill=True,
    )
    classes = {n: s.name for n, s in assign_specs(job.requests, fleet).items()}
    over = job.override or SloOverride()
    targets = {n: over.apply(fleet.slo_of(c)) for n, c in classes.items()}

    def ttft_target_s(r: Request) -> float:
        return targets[r.model].ttft_target_s(r.prompt_tokens)

    limit = allowed_misses(len(job.requests), job.target)
    if probe.stop_early:
        cfg = replace(cfg, stop_after_misses=limit, slo_ttft_s=ttft_target_s)
    res = simulate(primed, fleet, cfg)
    if res.stopped_early:
        bound = 1.0 - (limit + 1) / max(len(job.requests), 1)
        return Outcome(probe, bound, True)
    summary = dict(summarize(res, fleet, job.override))
    summary["fleet_gpus_by_pool"] = {p.name: p.count for p in fleet.pools}
    assert slos(res, fleet, job.override).keys() == targets.keys()
    return Outcome(probe, float(summary["slo_attainment_ratio"] or 0.0), False, summary, res)


def allowed_misses(requests: int, target: float) -> int:
    """The most measured requests that may miss their SLO while attainment stays >= target."""
    return math.floor(requests * (1.0 - target) + 1e-9)


class _Search:
    """One policy's bracket-then-bisect search (see the module doc)."""

    def __init__(self, policy: PolicyName, start: int, max_gpus: int, target: float) -> None:
        self.policy = policy
        self.max_gpus = max_gpus
        self.target = target
        self.start = min(max(start, 1), max_gpus)
        self.outcomes: dict[int, Outcome] = {}
        self.order: list[Outcome] = []

    def passing(self) -> int | None:
        """The smallest size that reached the target so far."""
        sizes = [g for g, o in self.outcomes.items() if o.reaches(self.target)]
        return min(sizes) if sizes else None

    def next_size(self) -> int | None:
        """The next size to simulate, or None when the search is over."""
        if not self.outcomes:
            return self.start
        best = self.passing()
        if best is None:  # nothing reached it yet: go up
            last = max(self.outcomes)
            return None if last >= self.max_gpus else min(last * 2, self.max_gpus)
        below = [g for g in self.outcomes if g < best]  # all of them missed the target
        if not below:  # go down
            return best // 2 if best > 1 else None
        failing = max(below)
        return None if best - failing <= 1 else (failing + best) // 2

    def record(self, out: Outcome) -> None:
        self.outcomes[out.probe.gpus] = out
        self.order.append(out)

    def found(self, full: Outcome | None = None) -> Found:
        best = self.passing()
        if best is None:
            return Found(self.policy, None, full, tuple(self.order))
        return Found(self.policy, best, self.outcomes[best], tuple(self.order))


def search(
    policies: Sequence[PolicyName],
    start_gpus: int,
    max_gpus: int,
    target: float,
    evaluate: Callable[[Sequence[Probe]], Sequence[Outcome]],
    progress: Callable[[int], None] | None = None,
) -> list[Found]:
    """Search each policy's smallest fleet reaching ``target`` (see the module doc).

    ``evaluate`` runs a batch of probes (in any order, any parallelism) and returns their
    outcomes in the batch's order. The probes asked for depend only on the outcomes, so the
    result is the same whatever runs them.
    """
    searches = [_Search(p, start_gpus, max_gpus, target) for p in policies]
    while True:
        batch = []
        for s in searches:
            size = s.next_size()
            if size is not None:
                batch.append((s, Probe(s.policy, size)))
        if not batch:
            break
        outcomes = evaluate([p for _, p in batch])
        for (s, _), out in zip(batch, outcomes, strict=True):
            s.record(out)
        if progress is not None:
            progress(len(batch))
    # Not reached: the largest size once more, to the end, to say how close it came and why.
    missed = [s for s in searches if s.passing() is None and s.outcomes]
    full = evaluate([Probe(s.policy, max(s.outcomes), stop_early=False) for s in missed])
    if progress is not None and missed:
        progress(len(missed))
    at = {s.policy: o for s, o in zip(missed, full, strict=True)}
    for s in missed:
        s.order.append(at[s.policy])
    return [s.found(at.get(s.policy)) for s in searches]


def equal_slo_table(found: Sequence[Found], target: float) -> list[dict[str, Any]]:
    """The plan's first table: per policy, the fleet found and its GPU-hours and cost at the
    equal SLO, with the ratios to always-on's (when always-on was searched and reached it)."""
    base = next((f for f in found if f.policy == "always-on" and f.outcome is not None), None)
    base_h = base_c = None
    if base is not None and base.outcome is not None:
        base_h = float(base.outcome.summary["gpu_hours"])
        base_c = float(base.outcome.summary["cost_usd"])
    rows = []
    for f in found:
        row: dict[str, Any] = {"policy": f.policy, "slo_target_ratio": target}
        if f.outcome is None or f.gpus is None:
            tried = max((o.probe.gpus for o in f.probes), default=0)
            row.update({"reached": False, "gpus": None, "max_gpus_tried": tried})
            if f.outcome is not None and f.outcome.summary:
                s = f.outcome.summary
                row.update(
                    {
                        "slo_attainment_ratio": s["slo_attainment_ratio"],
                        "cold_start_requests": s["cold_start_requests"],
                        "slo_missed_requests": s["slo_missed_requests"],
                        "ttft_p99_s": s["ttft_p99_s"],
                    }
                )
            rows.append(row)
            continue
        s = f.outcome.summary
        hours, cost = float(s["gpu_hours"]), float(s["cost_usd"])
        row.update(
            {
                "reached": True,
                "gpus": f.gpus,
                "gpus_by_pool": s.get("fleet_gpus_by_pool", {}),
                "slo_attainment_ratio": s["slo_attainment_ratio"],
                "gpu_hours": hours,
                "models_per_gpu": s.get("models_per_gpu"),
                "cost_usd": cost,
                "gpu_hours_vs_always_on": round(hours / base_h, 4) if base_h else None,
                "cost_vs_always_on": round(cost / base_c, 4) if base_c else None,
                "cold_start_requests": s["cold_start_requests"],
                "ttft_p99_s": s["ttft_p99_s"],
            }
        )
        rows.append(row)
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The equal-SLO table as text lines."""
    head = (
        f"{'policy':12s} {'GPUs':>6s} {'by pool':24s} {'SLO':>7s} {'GPU-h':>9s} "
        f"{'x always-on':>11s} {'models/GPU':>10s} {'cost $':>10s} {'x always-on':>11s} "
        f"{'cold req':>8s} {'p99 TTFT':>9s}"
    )
    lines = [head]
    for r in rows:
        if not r["reached"]:
            text = f"{r['policy']:12s} {'-':>6s} not reached at {r['max_gpus_tried']} GPUs"
            if "slo_attainment_ratio" in r:
                text += (
                    f": {r['slo_attainment_ratio']:.4f} there, {r['slo_missed_requests']:,} "
                    f"requests late, {r['cold_start_requests']:,} waited on a cold start or wake "
                    "(--max-gpus, --slo-target, the SLO or the policy)"
                )
            lines.append(text)
            continue
        pools = ",".join(f"{k}:{v}" for k, v in r["gpus_by_pool"].items())
        gh = r["gpu_hours_vs_always_on"]
        gc = r["cost_vs_always_on"]
        p99 = r["ttft_p99_s"]
        mpg = r.get("models_per_gpu")
        lines.append(
            f"{r['policy']:12s} {r['gpus']:6d} {pools:24s} {r['slo_attainment_ratio']:7.4f} "
            f"{r['gpu_hours']:9.2f} {('-' if gh is None else f'{gh:.3f}'):>11s} "
            f"{('-' if mpg is None else f'{mpg:.2f}'):>10s} "
            f"{r['cost_usd']:10.2f} {('-' if gc is None else f'{gc:.3f}'):>11s} "
            f"{r['cold_start_requests']:8d} {('inf' if p99 is None else f'{p99:.2f} s'):>9s}"
        )
    return lines
