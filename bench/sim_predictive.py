"""Predictive vs reactive Thaw vs kpa, same fleet: does forecasting one cold start ahead pay?

Three traces, each spread over ``--models`` models (Zipf ``--zipf``, seed 0) on the example fleet
(sim/examples/fleet.yaml) with the example policy (sim/examples/policy.yaml), new replicas from
``--tier`` (local disk: 33 s for the 8B model on A100, 23 s for the 1.5B on L4; sleepers wake in
about 1 s):

- ``azure``: the shared Azure conversation trace (19,366 requests over 57 minutes), whole, after a
  600 s warm-up replay (as bench/sim_frontier.py and ``thaw sim`` do). It has no season, so the
  forecaster runs ``ewma`` (``method: auto`` without a season).
- ``diurnal``: a synthetic diurnal trace (sim.traces.diurnal: ``--diurnal-rate`` req/s mean,
  amplitude 1.0 so the trough is silent, a "day" of 1800 s, ``--days`` days). The forecaster has
  ``season_s`` = the day and ``--diurnal-method`` (ridge by default, what ``method: auto`` runs
  with a season; quantile gbr is a little more accurate on a diurnal trace in
  bench/forecast_accuracy.py but fails on scheduled bursts and costs ~20x per refit). No
  warm-up (the forecaster needs the days to learn).
- ``periodic``: scheduled bursts (sim.traces.bursty: 10 req/s for 60 s every 600 s, 3 hours),
  as a batch job or a cron-driven client makes; ``season_s`` 600 and the same method. Every
  policy meets the first burst cold (no warm-up, nothing to learn from yet).

Policies, each replaying the same trace on the same fleet: ``kpa`` (Knative's defaults, no warm
pool), ``thaw`` (reactive: the example policy and its level-1 warm pool, 30 s scale-to-zero
grace), ``predictive`` (``thaw`` plus the forecaster, quantile ``--quantile``, interval 10 s,
horizon the model's cold-start time, min_confidence 0.3), and ``thaw 120s`` / ``thaw 300s``
(``--grace-s``): reactive thaw holding idle replicas longer, the cheap alternative a forecast
has to beat at equal GPU-hours.

Printed per trace and policy: requests, cold-start requests (requests that waited on a start or
a wake) and their ratio to reactive thaw's, p99 TTFT, SLO attainment (TTFT <= ``--slo-ttft-s``),
GPU-hours and cost with their ratios to reactive thaw's, and the seconds each run took. Then
where the cold-start requests fall: the 4 most popular models vs the tail, the first season
(no history yet) vs later. ``--also-quantiles`` adds predictive runs at other quantiles (the
cost of provisioning for a busier interval).

  .venv/bin/python bench/sim_predictive.py
  .venv/bin/python bench/sim_predictive.py --tier remote --quantile 0.95
  .venv/bin/python bench/sim_predictive.py --also-quantiles 0.5,0.99
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from autoscaler.policy import ForecastConfig
from policy_file.load import load_policy
from policy_file.schema import ThawConfig
from sim.core import PolicyName
from sim.fleet import load_fleet
from sim.report import SloOverride, summarize
from sim.runner import run_policies, with_warmup
from sim.traces import Request, bursty, diurnal, load_trace, model_names, spread_zipf

REPO = Path(__file__).resolve().parent.parent
AZURE = REPO.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"
POLICIES: tuple[PolicyName, ...] = ("kpa", "thaw", "predictive")
HEAD = 4  # the most popular models; the rest are the tail


def with_grace(base: ThawConfig, grace_s: float) -> ThawConfig:
    """``base`` with every model's scale-to-zero grace set to ``grace_s``."""
    models = tuple(
        m.model_copy(
            update={
                "autoscaling": m.autoscaling.model_copy(update={"scale_to_zero_grace_s": grace_s})
            }
        )
        for m in base.models
    )
    return base.model_copy(update={"models": models})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trace", default=str(AZURE))
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--zipf", type=float, default=1.0)
    ap.add_argument("--tier", choices=("local_disk", "remote"), default="local_disk")
    ap.add_argument("--quantile", type=float, default=0.9)
    ap.add_argument("--slo-ttft-s", type=float, default=1.0)
    ap.add_argument("--warmup-s", type=float, default=600.0)
    ap.add_argument("--diurnal-rate", type=float, default=3.0)
    ap.add_argument("--days", type=int, default=6)
    ap.add_argument("--day-s", type=float, default=1800.0)
    ap.add_argument(
        "--diurnal-method", choices=("seasonal_naive", "ewma", "ridge", "gbr"), default="ridge"
    )
    ap.add_argument("--only", choices=("azure", "diurnal", "periodic"), default=None)
    ap.add_argument(
        "--grace-s",
        default="120,300",
        help="comma-separated: also run reactive thaw with these scale-to-zero graces (the "
        "cheap alternative to a forecast: hold replicas longer); empty: none",
    )
    ap.add_argument(
        "--also-quantiles",
        default="",
        help="comma-separated: also run predictive at these quantiles (e.g. 0.5,0.99)",
    )
    args = ap.parse_args()
    fleet = load_fleet(REPO / "sim" / "examples" / "fleet.yaml")
    thaw = load_policy(REPO / "sim" / "examples" / "policy.yaml")

    base = ForecastConfig(enabled=True, quantile=args.quantile, interval_s=10.0, min_history=30)
    cases: list[tuple[str, Sequence[Request], float, ForecastConfig]] = []
    if args.only in (None, "azure"):
        azure = spread_zipf(load_trace(args.trace), args.models, args.zipf, 0)
        cases.append(("azure", azure, args.warmup_s, base.model_copy(update={"season_s": 0.0})))
    if args.only in (None, "diurnal"):
        syn = diurnal(args.diurnal_rate, args.day_s, 1.0, args.days * args.day_s, seed=1)
        fc = base.model_copy(update={"season_s": args.day_s, "method": args.diurnal_method})
        cases.append(("diurnal", spread_zipf(syn, args.models, args.zipf, 0), 0.0, fc))
    if args.only in (None, "periodic"):
        burst = bursty(10.0, 60.0, 540.0, 3 * 3600.0, seed=3)
        fc = base.model_copy(update={"season_s": 600.0, "method": args.diurnal_method})
        cases.append(("periodic", spread_zipf(burst, args.models, args.zipf, 0), 0.0, fc))

    runs: list[tuple[str, PolicyName, float, ThawConfig]] = [
        (p, p, args.quantile, thaw) for p in POLICIES
    ]
    for q in (float(x) for x in args.also_quantiles.split(",") if x.strip()):
        runs.append((f"pred q{q:g}", "predictive", q, thaw))
    for g in (float(x) for x in args.grace_s.split(",") if x.strip()):
        runs.append((f"thaw {g:g}s", "thaw", args.quantile, with_grace(thaw, g)))
    head_models = set(model_names(args.models)[:HEAD])
    rows: list[tuple[str, str, dict[str, Any], float]] = []
    where: list[tuple[str, str, int, int, int, int]] = []
    total = sum(len(with_warmup(c[1], c[2])[0]) for c in cases) * len(runs)
    bar = tqdm(total=total, unit="req", leave=False)
    for name, reqs, warmup_s, fc in cases:
        first_season = fc.season_s or 600.0  # azure: no season, its first 600 s
        for label, policy, q, cfg in runs:
            t0 = time.perf_counter()
            (res,) = run_policies(
                [policy], reqs, fleet, cfg, 0.0, bar.update, warmup_s=warmup_s,
                tier=args.tier, forecast=fc.model_copy(update={"quantile": q}),
            )  # fmt: skip
            took = time.perf_counter() - t0
            flat = SloOverride(ttft_base_s=args.slo_ttft_s, ttft_per_prompt_token_s=0.0)
            rows.append((name, label, summarize(res, fleet, flat), took))
            colds = [r for r in res.records if r.cold_start]
            where.append(
                (
                    name,
                    label,
                    sum(1 for r in colds if r.model in head_models),
                    sum(1 for r in colds if r.model not in head_models),
                    sum(1 for r in colds if r.arrival_s < first_season),
                    sum(1 for r in colds if r.arrival_s >= first_season),
                )
            )
    bar.close()

    print(
        f"{args.models} models (Zipf {args.zipf:g}), example fleet, starts from {args.tier}, "
        f"forecast q{args.quantile:g}, SLO TTFT <= {args.slo_ttft_s:g} s; ratios to reactive thaw"
    )
    for name, reqs, warmup_s, fc in cases:
        span = reqs[-1].arrival_s if reqs else 0.0
        extra = f", {warmup_s:g} s warm-up" if warmup_s else ""
        print(
            f"{name}: {len(reqs):,} requests over {span / 60:.0f} min{extra}; forecaster "
            f"{fc.method} (season {fc.season_s:g} s)"
        )
    head = ("trace", "policy", "cold req", "x thaw", "TTFT p99", "SLO", "GPU-h", "x thaw", "cost $")
    print(
        f"{head[0]:8s} {head[1]:11s} {head[2]:>8s} {head[3]:>7s} {head[4]:>9s} {head[5]:>7s} "
        f"{head[6]:>7s} {head[7]:>7s} {head[8]:>8s} {'x thaw':>7s} {'run s':>6s}"
    )
    for name, _, _, _ in cases:
        mine = {p: s for n, p, s, _ in rows if n == name}
        ref = mine["thaw"]
        for n, label, s, took in rows:
            if n != name:
                continue
            cold = int(s["cold_start_requests"])
            ref_cold = max(int(ref["cold_start_requests"]), 1)
            h = float(s["gpu_hours"])
            cost = float(s["cost_usd"])
            print(
                f"{name:8s} {label:11s} {cold:8d} {cold / ref_cold:7.2f} "
                f"{float(s['ttft_p99_s'] or math.inf):9.3f} "
                f"{float(s['slo_attainment_ratio']):7.4f} "
                f"{h:7.2f} {h / max(float(ref['gpu_hours']), 1e-9):7.3f} {cost:8.2f} "
                f"{cost / max(float(ref['cost_usd']), 1e-9):7.3f} {took:6.1f}"
            )

    print(
        f"where the cold-start requests are: the {HEAD} most popular models vs the other "
        f"{args.models - HEAD}; the first season (diurnal: day 1, no history to learn from; "
        "azure: first 600 s) vs later"
    )
    print(f"{'trace':8s} {'policy':11s} {'head':>6s} {'tail':>6s} {'first':>6s} {'later':>6s}")
    for name, label, n_head, n_tail, first, later in where:
        print(f"{name:8s} {label:11s} {n_head:6d} {n_tail:6d} {first:6d} {later:6d}")


if __name__ == "__main__":
    main()
