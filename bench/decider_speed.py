"""Decider speed: microseconds per :func:`autoscaler.decider.decide` call, now against a baseline.

The baseline is the decider as it was at ``--baseline`` (a git revision; by default ``deb1184``,
the last single-module decider: reason and signals built on first read, frozen dataclasses filled
through ``__dict__``), read from ``git archive`` (a single ``autoscaler/decider.py`` or the
``autoscaler/decider/`` package of stages, whichever the revision has), imported beside the
current one and timed in the same run, interleaved with it: ``--repeats`` rounds, the best of each
(the round least disturbed by other work on a shared machine; the median is printed too).

First both deciders replay the same scenarios and every output is compared: desired and current
counts, panic / stale / cold flags, the ``reason`` string, the ``signals`` dict and the next
state. Any difference stops the bench (exit 1): a change of speed that changes a result is not
what this bench measures.

Like with like: a baseline from before the scale-to-zero grace left the decider (``deb1184``
had a grace stage; since "Scale-to-zero grace counted once" it is counted after the decider, by
``autoscaler/scale_to_zero.py``) answers differently wherever its grace stage had its say, by
design. Those decisions (the baseline's reason carries the grace's note) are compared without
the count and the reason: every other field must be equal, and the current count must be what
the bounds make of 0 (``min_replicas``), the count the grace stage was given. The bench prints
how many decisions were compared in full and how many so. A baseline without the grace stage
(``--baseline`` at or after that commit) is compared in full throughout. The baseline's time
per call includes its grace stage (a few comparisons).

Scenarios timed:

- ``sim``: what ``bench/sim_speed.py`` times — one ready replica, a full 60 s window, the
  simulator's exact metrics; ``reason`` and ``signals`` are never read (the simulator reads only
  the counts).
- ``fleet``: ``bench/decider_throughput.py``'s models (2 ready replicas, sine load with bursts,
  panics, rate limits, a scale-down delay); ``reason`` unread.
- ``fleet+reason``: the same, reading every decision's ``reason`` and ``signals`` (what a log line
  per decision costs; the controller logs only decisions that change the count).

``now/base`` is the cost of a call now over the baseline's (below 1: now is faster).

  .venv/bin/python bench/decider_speed.py
  .venv/bin/python bench/decider_speed.py --baseline HEAD~3 --repeats 9
"""

from __future__ import annotations

import argparse
import importlib
import io
import math
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from autoscaler import decider as current
from autoscaler.decider import ModelObservation, ReplicaObservation
from autoscaler.policy import AutoscalingPolicy

REPO = Path(__file__).resolve().parent.parent
#: The last single-module decider (lazy reason and signals, fast constructors), before it became
#: a pipeline of stages with plain frozen dataclasses.
BEFORE = "deb1184"

Step = tuple[ModelObservation, AutoscalingPolicy, float]
#: The notes only a decider with the grace stage writes: "scale-to-zero grace: idle 3.0 s of 30 s"
#: (one replica kept) and "idle 31.0 s >= grace 30 s" (to zero).
GRACE_NOTES = ("scale-to-zero grace: idle ", " s >= grace ")


def load_baseline(rev: str) -> ModuleType:
    """The decider at ``rev``, imported from git, beside the current one.

    ``autoscaler/`` at ``rev`` is written to a temporary folder and ``autoscaler.decider``
    imported from there (a single module or a package of stages, whichever ``rev`` has), with the
    current ``autoscaler`` modules set aside meanwhile and put back after: the baseline's
    modules keep their own names bound, so both deciders run side by side in this process.
    """
    archive = subprocess.run(
        ["git", "archive", rev, "autoscaler"], cwd=REPO, check=True, capture_output=True
    ).stdout
    tmp = Path(tempfile.mkdtemp(prefix="decider-baseline-"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp, filter="data")
    ours = [k for k in sys.modules if k == "autoscaler" or k.startswith("autoscaler.")]
    mine = {k: sys.modules.pop(k) for k in ours}
    sys.path.insert(0, str(tmp))
    try:
        mod = importlib.import_module("autoscaler.decider")
    finally:
        sys.path.remove(str(tmp))
        for k in [k for k in sys.modules if k == "autoscaler" or k.startswith("autoscaler.")]:
            del sys.modules[k]
        sys.modules.update(mine)
        shutil.rmtree(tmp, ignore_errors=True)
    return mod


def sim_steps(calls: int) -> list[Step]:
    """``bench/sim_speed.py``'s decide_cost_s scenario: one model, one ready replica."""
    policy = AutoscalingPolicy(max_replicas=8, target_waiting_per_replica=None)
    obs = ModelObservation("m", (ReplicaObservation("r", "ready", 0.0, 3.0, 0.1, 0.0),), 0)
    return [(obs, policy, float(k)) for k in range(calls)]


def fleet_frames(models: int, ticks: int) -> tuple[AutoscalingPolicy, list[list[ModelObservation]]]:
    """``bench/decider_throughput.py``'s observations: ``ticks`` frames of ``models`` models."""
    sys.path.insert(0, str(REPO / "bench"))
    from decider_throughput import observations  # a sibling script

    policy = AutoscalingPolicy(
        max_replicas=20,
        target_waiting_per_replica=4.0,
        target_kv_cache_usage_ratio=0.8,
        target_concurrency_per_replica=10.0,
        scale_down_delay_s=10.0,
    )
    return policy, [observations(models, 2, t) for t in range(ticks)]


def random_steps(seed: int, n: int) -> list[Step]:
    """Odd corners for the equality check: stale and missing metrics, cold starts, forecasts,
    starting / sleeping replicas, in-flight floors, time going back, policy bounds."""
    rng = random.Random(seed)
    policies = [
        AutoscalingPolicy(),
        AutoscalingPolicy(
            min_replicas=1,
            max_replicas=3,
            initial_replicas=2,
            activation_scale=2,
            target_waiting_per_replica=2.0,
            target_kv_cache_usage_ratio=0.5,
            scale_down_delay_s=5.0,
            stable_window_s=10.0,
            panic_window_pct=20.0,
        ),
        AutoscalingPolicy(max_replicas=50, target_concurrency_per_replica=None),
    ]
    out: list[Step] = []
    now = 0.0
    for _ in range(n):
        now += rng.choice([0.5, 1.0, 1.0, 2.0, 7.0, -3.0])
        reps = []
        for r in range(rng.randint(0, 4)):
            missing = rng.random() < 0.05
            reps.append(
                ReplicaObservation(
                    f"r{r}",
                    rng.choice(["ready", "ready", "ready", "starting", "sleeping", "draining"]),
                    None if missing else float(rng.randint(0, 30)),
                    float(rng.randint(0, 30)),
                    rng.random(),
                    rng.choice([0.1, 0.5, 1.0, 90.0]),
                    rng.choice([None, None, float(rng.randint(0, 60))]),
                )
            )
        fc = rng.choice([None, None, rng.uniform(0.0, 6.0)])
        obs = ModelObservation("m", tuple(reps), rng.choice([0, 0, 0, 3, 40]), fc)
        out.append((obs, policies[(len(out) // 50) % len(policies)], now))
    return out


def outputs(mod: Any, steps: Sequence[Step]) -> list[tuple[object, ...]]:
    """Every field of every decision and next state, ``reason`` and ``signals`` included."""
    state = mod.DeciderState.initial()
    rows: list[tuple[object, ...]] = []
    for obs, policy, now in steps:
        d, state = mod.decide(obs, policy, state, now)
        rows.append(
            (
                d.model, d.desired_replicas, d.current_replicas, d.reason, d.panic,
                d.stale_metrics, d.cold_start, dict(d.signals), d.changes,
                state.sample_times_s, state.waiting_samples, state.concurrency_samples,
                state.kv_usage_samples, state.panic_since_s, state.max_panic_replicas,
                state.delay_times_s, state.delay_desired, state.started_s,
            )
        )  # fmt: skip
    return rows


def without_count(row: tuple[object, ...]) -> tuple[object, ...]:
    """A row of :func:`outputs` without the desired count, the reason and ``changes``."""
    return (row[0], row[2], *row[4:8], *row[9:])


def check_same(old: ModuleType, steps_sets: Sequence[Sequence[Step]]) -> tuple[int, int]:
    """Every output equal, except where the baseline's grace stage had its say (see the module
    doc); returns the decisions compared in full and those compared without count and reason."""
    graced = hasattr(old.DeciderState.initial(), "idle_since_s")  # it had the grace stage
    full = partial = 0
    for steps in steps_sets:
        a, b = outputs(old, steps), outputs(current, steps)
        for k, (x, y, step) in enumerate(zip(a, b, steps, strict=True)):
            reason = x[3]
            assert isinstance(reason, str)
            if graced and any(note in reason for note in GRACE_NOTES):
                partial += 1
                same = without_count(x) == without_count(y) and y[1] == step[1].min_replicas
            else:
                full += 1
                same = x == y
            if not same:
                print(f"DIFFERENT at step {k}:\n  baseline {x}\n  current  {y}", file=sys.stderr)
                raise SystemExit(1)
    return full, partial


def timer_sim(mod: Any, steps: Sequence[Step]) -> Callable[[], float]:
    warm = 100

    def run() -> float:
        state = mod.DeciderState.initial()
        decide = mod.decide
        for obs, policy, now in steps[:warm]:
            _, state = decide(obs, policy, state, now)
        t0 = time.perf_counter()
        for obs, policy, now in steps[warm:]:
            _, state = decide(obs, policy, state, now)
        return (time.perf_counter() - t0) / (len(steps) - warm)

    return run


def timer_fleet(
    mod: Any, policy: AutoscalingPolicy, frames: list[list[ModelObservation]], read: bool
) -> Callable[[], float]:
    warm = int(policy.stable_window_s) + 1

    def run() -> float:
        decide = mod.decide
        states = [mod.DeciderState.initial() for _ in frames[0]]
        for t in range(warm):
            for i, obs in enumerate(frames[t]):
                _, states[i] = decide(obs, policy, states[i], float(t))
        chars = 0
        t0 = time.perf_counter()
        for t in range(warm, len(frames)):
            for i, obs in enumerate(frames[t]):
                d, states[i] = decide(obs, policy, states[i], float(t))
                if read:
                    chars += len(d.reason) + len(d.signals)
        calls = (len(frames) - warm) * len(frames[0])
        return (time.perf_counter() - t0) / calls

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--baseline", default=BEFORE, help=f"git revision (default: {BEFORE})")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved rounds (default: 7)")
    ap.add_argument("--calls", type=int, default=5000, help="sim scenario calls (default: 5000)")
    ap.add_argument("--models", type=int, default=200, help="fleet models (default: 200)")
    ap.add_argument("--ticks", type=int, default=20, help="fleet timed ticks (default: 20)")
    args = ap.parse_args()

    old = load_baseline(args.baseline)
    policy, frames = fleet_frames(
        args.models, int(AutoscalingPolicy().stable_window_s) + 1 + args.ticks
    )
    sim = sim_steps(args.calls + 100)
    fleet_rows = [[(frames[t][i], policy, float(t)) for t in range(len(frames))] for i in range(5)]
    full, partial = check_same(
        old, [sim[:300], random_steps(1, 2000), random_steps(2, 2000), *fleet_rows]
    )
    print(f"outputs identical to {args.baseline} over {full:,} decisions "
          "(counts, flags, reason, signals, next state)")  # fmt: skip
    if partial:
        print(f"and over {partial:,} where {args.baseline}'s scale-to-zero grace stage had its "
              "say (now counted after the decider): all but count and reason, count = the "
              "bounds of 0")  # fmt: skip

    scenarios: dict[str, Callable[[Any], Callable[[], float]]] = {
        "sim": lambda m: timer_sim(m, sim),
        "fleet": lambda m: timer_fleet(m, policy, frames, read=False),
        "fleet+reason": lambda m: timer_fleet(m, policy, frames, read=True),
    }
    head = f"{'scenario':<14}{'baseline us':>12}{'now us':>10}{'now/base':>10}"
    print(f"{head}{'median now/base':>17}   (best of {args.repeats} interleaved rounds)")
    for name, make in scenarios.items():
        before, after = make(old), make(current)
        b: list[float] = []
        a: list[float] = []
        for _ in range(args.repeats):
            b.append(before())
            a.append(after())
        mb, ma = min(b), min(a)
        med = statistics.median(a) / statistics.median(b)
        print(f"{name:<14}{mb * 1e6:>12.1f}{ma * 1e6:>10.1f}{ma / mb:>9.2f}x{med:>16.2f}x")
        if not math.isfinite(mb / ma):
            raise SystemExit(1)


if __name__ == "__main__":
    main()
