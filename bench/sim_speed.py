"""Simulator speed: requests and events simulated per second, at two trace sizes, on one core.

The trace is the shared Azure conversation trace (19,366 requests over 57 minutes) tiled in time
until it has ``--sizes`` requests (1M = 52 copies, about 50 hours), spread over ``--models``
models with Zipf popularity; each size is replayed once under one policy (``thaw`` by default:
the real decider every tick for every model, the warm pool, EngineCore replicas).

Printed for each size: wall time, requests/s, events/s, decider calls; and, measured in the same
run on the same machine:

- the floor of any heap-based event loop in Python: as many ``heappush`` + ``heappop`` of the same
  tuples as the simulation processed events, doing nothing else;
- the decider alone: the mean cost of one :func:`autoscaler.decider.decide` call (timed over
  20,000 calls on a warmed-up window), times the run's decider calls, as a share of the wall time,
  and the ceiling that puts on the simulator (requests / decider seconds: the requests/s it would
  reach if everything but the real decider took no time). Every model that is not at rest decides
  once per tick (1 s), so on this trace the decider calls per request are fixed by the trace, not
  by the simulator.

Then the work (events, decider calls) and the wall time per request at the larger size over the
smaller one (1.0 = linear in requests), and the issue's goal (200,000 requests/s). On a shared
machine the wall times move with the load; the work counts do not.

  .venv/bin/python bench/sim_speed.py                          # 250k and 1M requests, 20 models
  .venv/bin/python bench/sim_speed.py --sizes 50000,200000 --models 100
"""

from __future__ import annotations

import argparse
import heapq
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from autoscaler.decider import DeciderState, ModelObservation, ReplicaObservation, decide
from autoscaler.policy import AutoscalingPolicy
from policy_file.load import load_policy
from sim.core import PolicyName, simulate
from sim.fleet import load_fleet
from sim.runner import sim_config
from sim.traces import Request, load_trace, spread_zipf

REPO = Path(__file__).resolve().parent.parent
AZURE = REPO.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"
GOAL_REQUESTS_PER_S = 200_000


def tiled(base: tuple[Request, ...], size: int) -> tuple[Request, ...]:
    """``base`` repeated back to back (one second apart) until ``size`` requests."""
    span = base[-1].arrival_s + 1.0
    out: list[Request] = []
    k = 0
    while len(out) < size:
        shift = k * span
        out.extend(replace(r, arrival_s=r.arrival_s + shift) for r in base)
        k += 1
    return tuple(out[:size])


def heap_floor(events: int) -> float:
    """Seconds for ``events`` heappush + heappop of (time, seq, kind, payload) tuples."""
    heap: list[tuple[float, int, int, None]] = []
    t0 = time.perf_counter()
    seq = 0
    for i in range(min(events, 64)):
        seq += 1
        heapq.heappush(heap, (float(i), seq, 1, None))
    for _ in range(events):
        now = heapq.heappop(heap)[0]
        seq += 1
        heapq.heappush(heap, (now + 0.5, seq, 1, None))
    return time.perf_counter() - t0


def decide_cost_s(calls: int = 20_000) -> float:
    """Mean seconds of one decide call (one ready replica, a full 60 s window)."""
    policy = AutoscalingPolicy(max_replicas=8, target_waiting_per_replica=None)
    obs = ModelObservation("m", (ReplicaObservation("r", "ready", 0.0, 3.0, 0.1, 0.0),), 0)
    state = DeciderState.initial()
    for k in range(100):
        _, state = decide(obs, policy, state, float(k))
    t0 = time.perf_counter()
    for k in range(100, 100 + calls):
        _, state = decide(obs, policy, state, float(k))
    return (time.perf_counter() - t0) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trace", default=str(AZURE), help="Azure CSV trace to tile")
    ap.add_argument("--sizes", default="250000,1000000", help="two request counts")
    ap.add_argument("--models", type=int, default=20, help="models to spread over (Zipf)")
    ap.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent")
    ap.add_argument("--policy", default="thaw", choices=["thaw", "kpa", "always-on"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    fleet = load_fleet(REPO / "sim" / "examples" / "fleet.yaml")
    thaw = load_policy(REPO / "sim" / "examples" / "policy.yaml")
    base = load_trace(args.trace)
    policy: PolicyName = args.policy
    per_request: list[float] = []
    work: list[tuple[float, float]] = []
    lines: list[str] = []
    bar = tqdm(total=sum(sizes), unit="req", desc="simulating", file=sys.stderr, leave=False)
    for size in sizes:
        t0 = time.perf_counter()
        reqs = spread_zipf(tiled(base, size), args.models, args.zipf, args.seed)
        cfg = sim_config(policy, reqs, fleet, thaw, 0.0)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = simulate(reqs, fleet, cfg, bar.update)
        wall = time.perf_counter() - t0
        floor = heap_floor(res.events)
        per_call = decide_cost_s()  # right after the run: the box's load then
        per_request.append(wall / size)
        work.append((res.events / size, res.decisions / size))
        lines.append(
            f"{size:>9,} requests, {args.models} models, {res.end_s / 3600:.1f} h simulated "
            f"({policy}): {wall:.1f} s wall (+{build:.1f} s building the trace), "
            f"{size / wall:,.0f} requests/s, {res.events / wall:,.0f} events/s "
            f"({res.events:,} events)"
        )
        lines.append(
            f"           heap-loop floor {res.events / floor:,.0f} events/s: the simulator is "
            f"{floor / wall:.3f}x the floor; {res.decisions:,} decider calls "
            f"({res.decisions / size:.2f} per request) = "
            f"{res.decisions * per_call / wall:.0%} of the wall time "
            f"(decider alone {per_call * 1e6:.1f} us per call; its ceiling "
            f"{size / (res.decisions * per_call):,.0f} requests/s)"
        )
    bar.close()
    print("\n".join(lines))
    ratio = per_request[-1] / per_request[0]
    print(
        f"work per request at {sizes[-1]:,} / at {sizes[0]:,}: events "
        f"{work[-1][0] / work[0][0]:.3f}, decider calls {work[-1][1] / work[0][1]:.3f} "
        "(1.000 = linear; deterministic, unlike wall time on a shared machine)"
    )
    print(
        f"wall time per request at {sizes[-1]:,} / at {sizes[0]:,}: {ratio:.2f} (1.00 = linear); "
        f"goal {GOAL_REQUESTS_PER_S:,} requests/s: "
        f"{1 / per_request[-1] / GOAL_REQUESTS_PER_S:.3f}x of it"
    )
    if not math.isfinite(ratio):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
