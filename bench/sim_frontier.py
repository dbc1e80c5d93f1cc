"""Cost against SLO: how far Thaw's policy can go below always-on, and what it costs in latency.

Replays a trace (the shared Azure conversation trace by default) with the same trace, fleet,
policy, spread, SLO and warm-up options as ``thaw sim`` (``--trace``, ``--trace-format``
detected unless given, ``--fleet``, ``--config``, ``--models``, ``--zipf``, ``--seed``,
``--slo-*``, ``--warmup-s``, ``--start-tier``) under ``kpa`` and ``always-on`` (the baselines,
measured in the same run) and under the policy file's policy with its stable window (and grace)
swept from Knative's 60 s down to the decider's 6 s minimum. Each line: GPU-hours as a share of
always-on's, SLO attainment (the fleet file's size-aware SLO, or ``--slo-*``), cold-start
requests as a share of kpa's.

The first line is the floor no one-GPU-per-replica policy can beat: a GPU held exactly while the
model has a request at an engine, with no cold start at all (``busy_gpu_hours_floor``). On a
trace where even that floor is above a goal (say 0.4x of always-on), no policy meets the goal.
All of it is on one fleet, where the policies reach different SLOs: ``thaw sim plan`` compares
them at an equal SLO.

  .venv/bin/python bench/sim_frontier.py --models 20
  .venv/bin/python bench/sim_frontier.py --trace mooncake.jsonl --models 8 --seed 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from policy_file.schema import ThawConfig  # noqa: E402
from sim.core import PolicyName, SimResult  # noqa: E402
from sim.report import summarize  # noqa: E402
from sim.runner import run_policies  # noqa: E402
from thaw.cmd_sim import InputError, add_input_args, load_inputs  # noqa: E402

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
    add_input_args(ap)
    ap.set_defaults(trace=str(AZURE), models=20)
    args = ap.parse_args()
    try:
        inputs = load_inputs(args)
    except InputError as e:
        raise SystemExit(f"sim_frontier: {e}") from None
    fleet, reqs, over = inputs.fleet, inputs.requests, inputs.override
    t0 = time.perf_counter()

    def simulate(policy: PolicyName, cfg: ThawConfig) -> SimResult:
        (res,) = run_policies(
            [policy], reqs, fleet, cfg, inputs.horizon_s, warmup_s=args.warmup_s,
            tier=args.start_tier,
        )  # fmt: skip
        return res

    always_res = simulate("always-on", inputs.thaw)
    always = summarize(always_res, fleet, over)
    kpa = summarize(simulate("kpa", inputs.thaw), fleet, over)
    base_h = float(always["gpu_hours"])
    kpa_cold = max(int(kpa["cold_start_requests"]), 1)
    slo = over.apply(fleet.slo)
    print(
        f"{len(reqs):,} requests ({Path(args.trace).name}, {inputs.trace_format}) over "
        f"{args.models} models (Zipf {args.zipf:g}, seed {args.seed}), fleet "
        f"{Path(args.fleet).name}; SLO: TTFT <= {slo.ttft_base_s:g} s + "
        f"{slo.ttft_per_prompt_token_s:g} s a prompt token"
        + (f", TPOT <= {slo.tpot_s:g} s" if slo.tpot_s else "")
        + " (models with their own slo in the fleet file keep it)"
    )
    head = ("policy", "GPU-h", "x always-on", "SLO", "cold req", "x kpa", "unserved")
    print(
        f"{head[0]:34s} {head[1]:>7s} {head[2]:>11s} {head[3]:>8s} {head[4]:>8s} {head[5]:>6s} "
        f"{head[6]:>8s}"
    )
    low = float(always["busy_gpu_hours_floor"])
    print(f"{'floor: GPU only while busy':34s} {low:7.2f} {low / base_h:11.3f}")

    def line(name: str, s: dict[str, Any]) -> None:
        h = float(s["gpu_hours"])
        cold = int(s["cold_start_requests"])
        print(
            f"{name:34s} {h:7.2f} {h / base_h:11.3f} {float(s['slo_attainment_ratio']):8.4f} "
            f"{cold:8d} {cold / kpa_cold:6.2f} {int(s['unserved_requests']):8d}"
        )

    line("always-on", always)
    line("kpa (60 s window, 30 s grace)", kpa)
    for stable_s, grace_s in SWEEP:
        res = simulate("thaw", with_windows(inputs.thaw, stable_s, grace_s))
        line(f"thaw ({stable_s:g} s window, {grace_s:g} s grace)", summarize(res, fleet, over))
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
