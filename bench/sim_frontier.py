"""Cost against SLO: how far Thaw's policy can go below always-on, and what it costs in latency.

Replays the shared Azure conversation trace spread over ``--models`` models (Zipf ``--zipf``,
seed 0, 600 s warm-up) on the example fleet under ``kpa`` and ``always-on`` (the baselines,
measured in the same run) and under Thaw's example policy with its stable window (and grace)
swept from Knative's 60 s down to the decider's 6 s minimum. Each line: GPU-hours as a share of
always-on's, SLO attainment (TTFT <= ``--slo-ttft-s``), cold-start requests as a share of kpa's.

The first line is the floor no one-GPU-per-replica policy can beat: a GPU held exactly while the
model has a request in the system, with no cold start at all (``busy_gpu_hours_floor``). On a
trace where even that floor is above a goal (say 0.4x of always-on), no policy meets the goal.

  .venv/bin/python bench/sim_frontier.py
  .venv/bin/python bench/sim_frontier.py --zipf 1.5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from policy_file.load import load_policy
from policy_file.schema import ThawConfig
from sim.core import PolicyName, SimResult
from sim.fleet import load_fleet
from sim.report import summarize
from sim.runner import run_policies
from sim.traces import load_trace, spread_zipf

REPO = Path(__file__).resolve().parent.parent
AZURE = REPO.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"
SWEEP = ((60.0, 30.0), (45.0, 20.0), (30.0, 15.0), (20.0, 10.0), (10.0, 5.0), (6.0, 0.0))


def with_windows(base: ThawConfig, stable_s: float, grace_s: float) -> ThawConfig:
    model = base.models[0]
    auto = model.autoscaling.model_copy(
        update={"stable_window_s": stable_s, "scale_to_zero_grace_s": grace_s}
    )
    return base.model_copy(update={"models": (model.model_copy(update={"autoscaling": auto}),)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trace", default=str(AZURE))
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--zipf", type=float, default=1.0)
    ap.add_argument("--slo-ttft-s", type=float, default=1.0)
    ap.add_argument("--warmup-s", type=float, default=600.0)
    args = ap.parse_args()
    fleet = load_fleet(REPO / "sim" / "examples" / "fleet.yaml")
    thaw = load_policy(REPO / "sim" / "examples" / "policy.yaml")
    reqs = spread_zipf(load_trace(args.trace), args.models, args.zipf, 0)
    t0 = time.perf_counter()

    def run(policy: PolicyName, cfg: ThawConfig) -> dict[str, Any]:
        (res,) = run_policies([policy], reqs, fleet, cfg, 0.0, warmup_s=args.warmup_s)
        return summarize(res, fleet, args.slo_ttft_s)

    def floor(res: SimResult) -> float:
        return float(summarize(res, fleet, args.slo_ttft_s)["busy_gpu_hours_floor"])

    (always_res,) = run_policies(["always-on"], reqs, fleet, thaw, 0.0, warmup_s=args.warmup_s)
    always = summarize(always_res, fleet, args.slo_ttft_s)
    kpa = run("kpa", thaw)
    base_h = float(always["gpu_hours"])
    kpa_cold = max(int(kpa["cold_start_requests"]), 1)
    print(
        f"{len(reqs):,} requests over {args.models} models (Zipf {args.zipf:g}), "
        f"SLO TTFT <= {args.slo_ttft_s:g} s"
    )
    head = ("policy", "GPU-h", "x always-on", "SLO", "cold req", "x kpa")
    print(f"{head[0]:34s} {head[1]:>7s} {head[2]:>11s} {head[3]:>8s} {head[4]:>8s} {head[5]:>6s}")
    low = floor(always_res)
    print(f"{'floor: GPU only while busy':34s} {low:7.2f} {low / base_h:11.3f}")

    def line(name: str, s: dict[str, Any]) -> None:
        h = float(s["gpu_hours"])
        cold = int(s["cold_start_requests"])
        print(
            f"{name:34s} {h:7.2f} {h / base_h:11.3f} {float(s['slo_attainment_ratio']):8.4f} "
            f"{cold:8d} {cold / kpa_cold:6.2f}"
        )

    line("always-on", always)
    line("kpa (60 s window, 30 s grace)", kpa)
    for stable_s, grace_s in SWEEP:
        line(
            f"thaw ({stable_s:g} s window, {grace_s:g} s grace)",
            run("thaw", with_windows(thaw, stable_s, grace_s)),
        )
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
