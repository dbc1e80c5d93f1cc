"""Decider throughput: how long one autoscaler tick takes for many models.

One tick = one :func:`autoscaler.decider.decide` call per model. The goal (issue 4) is 1,000
models in 50 ms or less on one core. Each model has ``--replicas`` ready replicas whose load
follows its own phase of a sine wave with bursts, so the decider exercises its windows, panic
mode, rate limits and the scale-down delay; the windows are warmed up (one full stable window of
ticks) before timing. The baseline, timed in the same run over the very same observations, is the
simplest possible decider: ``ceil(running + waiting / target)`` clamped to the bounds, with no
state. The ratio says what the windows, panic and guard rails cost on top of that.

  .venv/bin/python bench/decider_throughput.py
  .venv/bin/python bench/decider_throughput.py --models 5000 --ticks 10
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

from autoscaler.decider import DeciderState, ModelObservation, ReplicaObservation, decide
from autoscaler.policy import AutoscalingPolicy


def observations(models: int, replicas: int, tick: int) -> list[ModelObservation]:
    """The observation of every model at one tick (deterministic)."""
    out: list[ModelObservation] = []
    for m in range(models):
        phase = (tick + 7 * m) / 30.0
        load = 15.0 * (1.0 + math.sin(phase)) + (60.0 if (tick + m) % 97 < 3 else 0.0)
        per = load / replicas
        reps = tuple(
            ReplicaObservation(
                replica_id=f"m{m}-r{r}",
                state="ready",
                num_requests_waiting=max(0.0, per - 12.0),
                num_requests_running=min(per, 12.0),
                kv_cache_usage_ratio=min(1.0, per / 20.0),
                scrape_age_s=0.5,
            )
            for r in range(replicas)
        )
        out.append(ModelObservation(f"model-{m}", reps, buffered_requests=0))
    return out


def baseline_decide(obs: ModelObservation, policy: AutoscalingPolicy) -> int:
    """The trivial decider: instantaneous concurrency over the target, within the bounds."""
    total = 0.0
    for r in obs.replicas:
        total += (r.num_requests_running or 0.0) + (r.num_requests_waiting or 0.0)
    target = policy.target_concurrency_per_replica or 1.0
    return max(policy.min_replicas, min(policy.max_replicas, math.ceil(total / target)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000, help="models per tick (default: 1000)")
    parser.add_argument("--replicas", type=int, default=2, help="ready replicas per model (2)")
    parser.add_argument("--ticks", type=int, default=20, help="timed ticks (default: 20)")
    parser.add_argument("--goal-ms", type=float, default=50.0, help="goal per tick (50 ms)")
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the goal says
    policy = AutoscalingPolicy(
        max_replicas=20,
        target_waiting_per_replica=4.0,
        target_kv_cache_usage_ratio=0.8,
        target_concurrency_per_replica=10.0,
        scale_down_delay_s=10.0,
    )
    warmup = int(policy.stable_window_s) + 1
    frames = [observations(args.models, args.replicas, t) for t in range(warmup + args.ticks)]
    states = [DeciderState.initial() for _ in range(args.models)]
    for t in range(warmup):
        for i, obs in enumerate(frames[t]):
            _, states[i] = decide(obs, policy, states[i], float(t))

    decider_ms: list[float] = []
    baseline_ms: list[float] = []
    panics = changes = 0
    for k in range(args.ticks):
        t = warmup + k
        frame = frames[t]
        start = time.perf_counter()
        for obs in frame:
            baseline_decide(obs, policy)
        baseline_ms.append((time.perf_counter() - start) * 1000.0)
        start = time.perf_counter()
        for i, obs in enumerate(frame):
            d, states[i] = decide(obs, policy, states[i], float(t))
            panics += d.panic
            changes += d.changes
        decider_ms.append((time.perf_counter() - start) * 1000.0)

    med = statistics.median(decider_ms)
    base = statistics.median(baseline_ms)
    print(f"models: {args.models}, ready replicas each: {args.replicas}, timed ticks: {args.ticks}")
    print(f"samples per window after warm-up: {len(states[0].samples)}")
    print(f"decisions in panic: {panics}, decisions that change the count: {changes}")
    print(f"decider  tick: median {med:.1f} ms, max {max(decider_ms):.1f} ms")
    print(f"baseline tick: median {base:.1f} ms (stateless ceil(concurrency / target))")
    print(f"decisions per second: {args.models / (med / 1000.0):,.0f}")
    print(f"ratio decider / baseline: {med / base:.1f}x")
    verdict = "meets" if med <= args.goal_ms * args.models / 1000.0 else "misses"
    print(f"goal: 1,000 models in {args.goal_ms:g} ms per tick -> "
          f"{med * 1000.0 / args.models:.1f} ms per 1,000 models ({verdict} the goal)")  # fmt: skip


if __name__ == "__main__":
    main()
