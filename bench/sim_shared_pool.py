"""Models per GPU at an equal SLO: Thaw on shared GPU pools against Thaw without sharing, kpa and
always-on (issue 13's measure).

The project's long-tail set-up: the shared Azure conversation trace spread over 200 models (Zipf
popularity, ``--models``, ``--seed``), the example fleet's pools, prices and models, the example
policy, 10 minutes of warm-up. Each line is one policy on one fleet, sized by ``thaw sim plan``'s
search (:func:`sim.plan.search`: the smallest GPU count, holding the file's pool mix, whose run
reaches ``--slo-target``, 0.99 by default, of every request within its size-aware SLO):

- ``thaw share N``: ``sim/examples/fleet-shared.yaml`` with every pool shared N ways (``--shares``,
  4 and 8 by default): engines packed onto GPUs, the GPU-memory arbiter deciding who is awake;
- ``thaw share N, min 1``: the same with ``min_replicas: 1`` for every model (no scale to zero:
  each model keeps an engine awake, packed by sharing; the warm pool serves its bursts);
- ``thaw unshared``, ``kpa unshared``, ``always-on unshared``: ``sim/examples/fleet.yaml`` (a
  sleeper holds its whole GPU, and is billed for it).

Printed per line: GPUs found (or "not reached" and the attainment at the largest size tried),
attainment, GPU-hours, models served, ``models_per_gpu`` (models served / GPUs held on average
over the window) and its ratio to always-on's, measured in the same run. The goal: >= 8 models per
GPU (Aegaeon's published anchor: up to 7). The figures come from one trace that was not used to
choose any setting (the memory shares in fleet-shared.yaml follow a rule stated there).

  .venv/bin/python bench/sim_shared_pool.py                     # 200 models, shares 4 and 8
  .venv/bin/python bench/sim_shared_pool.py --models 50 --duration-s 1200 --max-gpus 256
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autoscaler.policy import AutoscalingPolicy  # noqa: E402
from policy_file.load import load_policy  # noqa: E402
from policy_file.schema import ThawConfig  # noqa: E402
from sim.core import PolicyName  # noqa: E402
from sim.fleet import Fleet, example_fleet_path, load_fleet  # noqa: E402
from sim.plan import Found, PlanJob, search  # noqa: E402
from sim.traces import clip, load_trace, spread_zipf  # noqa: E402
from sim.workers import ProbePool, default_workers  # noqa: E402

AZURE = REPO.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"
SHARED = REPO / "sim" / "examples" / "fleet-shared.yaml"
POLICY = REPO / "sim" / "examples" / "policy.yaml"
GOAL_MODELS_PER_GPU = 8.0


@dataclass(frozen=True)
class Line:
    label: str
    policy: PolicyName
    fleet: Fleet
    thaw: ThawConfig


def with_share(fleet: Fleet, share: int) -> Fleet:
    """``fleet`` with every pool shared ``share`` ways, validated again."""
    data = fleet.model_dump()
    for p in data["pools"]:
        p["share"] = share
    return Fleet.model_validate(data)


def keep_one_awake(thaw: ThawConfig) -> ThawConfig:
    """``thaw`` with ``min_replicas: 1`` for every model."""
    models = []
    for m in thaw.models:
        data = m.autoscaling.model_dump()
        data["min_replicas"] = max(1, data["min_replicas"])
        auto = AutoscalingPolicy.model_validate(data)
        models.append(m.model_copy(update={"autoscaling": auto}))
    return thaw.model_copy(update={"models": tuple(models)})


def lines_of(shares: list[int]) -> list[Line]:
    thaw = load_policy(POLICY)
    shared = load_fleet(SHARED)
    plain = load_fleet(example_fleet_path())
    out = []
    for n in shares:
        fleet = with_share(shared, n)
        out.append(Line(f"thaw share {n}", "thaw", fleet, thaw))
        out.append(Line(f"thaw share {n}, min 1", "thaw", fleet, keep_one_awake(thaw)))
    out.append(Line("thaw unshared", "thaw", plain, thaw))
    out.append(Line("kpa unshared", "kpa", plain, thaw))
    out.append(Line("always-on unshared", "always-on", plain, thaw))
    return out


def fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trace", default=str(AZURE), help="Azure CSV or Mooncake JSONL trace")
    ap.add_argument("--models", type=int, default=200, help="models the trace is spread over")
    ap.add_argument("--seed", type=int, default=0, help="Zipf spread seed")
    ap.add_argument("--duration-s", type=float, default=0.0, help="clip the trace (0: all of it)")
    ap.add_argument(
        "--warmup-s", type=float, default=600.0, help="unmeasured warm-up replayed first"
    )
    ap.add_argument("--shares", default="4,8", help="engines per GPU to try, comma-separated")
    ap.add_argument("--slo-target", type=float, default=0.99, help="SLO attainment to reach")
    ap.add_argument("--max-gpus", type=int, default=1024, help="largest fleet the search tries")
    ap.add_argument("--workers", type=int, default=default_workers(), help="probe processes")
    args = ap.parse_args()
    reqs = load_trace(args.trace)
    if args.duration_s > 0:
        reqs = clip(reqs, args.duration_s)
    reqs = spread_zipf(reqs, args.models, 1.0, args.seed)
    gc.collect()
    gc.freeze()
    shares = [int(x) for x in args.shares.split(",") if x.strip()]
    print(
        f"{len(reqs):,} requests over {args.models} models, SLO target {args.slo_target:.2%}, "
        f"search up to {args.max_gpus} GPUs, {args.workers} workers",
        flush=True,
    )
    rows: list[tuple[Line, Found, float]] = []
    for line in lines_of(shares):
        start = sum(p.count for p in line.fleet.pools)
        job = PlanJob(reqs, line.fleet, line.thaw, args.slo_target, None, 0.0, args.warmup_s)
        t0 = time.perf_counter()
        with ProbePool(job, args.workers) as pool:
            (found,) = search([line.policy], start, args.max_gpus, args.slo_target, pool.evaluate)
        rows.append((line, found, time.perf_counter() - t0))
        print(f"  {line.label}: searched in {rows[-1][2]:.0f} s", file=sys.stderr, flush=True)
    base = next((f for ln, f, _ in rows if ln.policy == "always-on" and f.gpus is not None), None)
    base_mpg = None
    if base is not None and base.outcome is not None:
        base_mpg = base.outcome.summary.get("models_per_gpu")
    head = (
        f"{'line':24s} {'GPUs':>6s} {'SLO':>7s} {'GPU-h':>8s} {'models':>6s} "
        f"{'models/GPU':>10s} {'x always-on':>11s} {'cold req':>8s}"
    )
    print(head)
    for line, found, _ in rows:
        s = found.outcome.summary if found.outcome is not None else {}
        mpg = s.get("models_per_gpu")
        ratio = mpg / base_mpg if mpg is not None and base_mpg else None
        gpus = f"{found.gpus:6d}" if found.gpus is not None else f"{'>' + str(args.max_gpus):>6s}"
        note = "" if found.gpus is not None else "  (not reached: figures at the largest size)"
        print(
            f"{line.label:24s} {gpus} {fmt(s.get('slo_attainment_ratio'), '7.4f')} "
            f"{fmt(s.get('gpu_hours'), '8.2f')} {fmt(s.get('models_served'), '6d')} "
            f"{fmt(mpg, '10.2f')} {fmt(ratio, '11.2f')} "
            f"{fmt(s.get('cold_start_requests'), '8d')}{note}"
        )
    reached = [
        f.outcome.summary["models_per_gpu"]
        for ln, f, _ in rows
        if ln.label.startswith("thaw share") and f.gpus is not None and f.outcome is not None
    ]
    best = max((x for x in reached if x is not None), default=None)
    print(
        f"goal: >= {GOAL_MODELS_PER_GPU:g} models per GPU at the target with sharing; best "
        f"reached: {fmt(best, '.2f')}"
    )


if __name__ == "__main__":
    main()
