"""Honest accounting: always-on billed for the measured window only, every refused start counted
(t=0 included), unserved requests an infinite TTFT tail (not left out), the busy floor below the
GPU-hours held, always-on sized with prefill, over-long requests reported apart."""

from __future__ import annotations

import math

import pytest
from test_sim_core import FLEET, thaw_config

from sim.core import simulate
from sim.fleet import parse_fleet
from sim.report import busy_gpu_hours, summarize, ttft_cdf
from sim.runner import run_policies, sim_config, with_warmup
from sim.sizing import model_load, peak_replicas
from sim.traces import Request, poisson, spread_zipf


def crowded() -> tuple[Request, ...]:
    """12 models for 8 GPUs: always-on leaves 4 without a replica."""
    return spread_zipf(poisson(4.0, 300.0, 3, 200, 16), 12, 0.0, 3)


def test_always_on_is_billed_to_the_end_of_the_measured_window_not_the_drain() -> None:
    fleet = parse_fleet(FLEET)
    reqs = crowded()
    cfg = sim_config("always-on", reqs, fleet, thaw_config(max_replicas=4), 0.0)
    res = simulate(reqs, fleet, cfg)
    assert res.unserved_requests > 0  # the run drains an hour for them
    assert res.end_s > reqs[-1].arrival_s + 3000
    assert res.window_s == pytest.approx(reqs[-1].arrival_s)
    # 8 GPUs pinned for the window, not for the hour of drain after it
    assert sum(res.gpu_seconds_by_pool.values()) == pytest.approx(8 * res.window_s)


def test_refusals_at_t0_count_even_after_a_warmup() -> None:
    fleet = parse_fleet(FLEET)
    reqs = crowded()
    primed, first = with_warmup(reqs, 120.0)
    cfg = sim_config(
        "always-on", reqs, fleet, thaw_config(), 0.0, warmup_s=120.0, first_measured=first
    )
    res = simulate(primed, fleet, cfg)
    assert res.capacity_refusals == 12 - 8
    s = summarize(res, fleet)
    assert s["capacity_refusals"] == 4
    assert s["unserved_requests"] > 0


def test_unserved_requests_are_an_infinite_ttft_tail_not_left_out() -> None:
    fleet = parse_fleet(FLEET)
    (res,) = run_policies(["always-on"], crowded(), fleet, thaw_config(), 0.0)
    s = summarize(res, fleet)
    share = s["unserved_requests"] / (s["served_requests"] + s["unserved_requests"])
    assert share > 0.01
    assert s["ttft_p99_s"] is None  # the 99th percentile is among the never-served
    assert s["ttft_p99_served_s"] is not None
    xs, ys, tail = ttft_cdf(res)
    assert tail == pytest.approx(share)
    assert ys[-1] == pytest.approx(1 - share)  # the curve stops short of 1
    assert math.isinf(xs[-1]) or ys[-1] < 1


def test_busy_floor_stays_below_the_gpu_hours_held_under_saturation() -> None:
    # 6 models on 2 GPUs, scale to zero: requests wait minutes at the activator for a GPU
    fleet = parse_fleet(FLEET.replace("count: 8", "count: 2", 1))
    reqs = spread_zipf(poisson(2.0, 600.0, 5, 200, 64), 6, 0.0, 5)
    for res in run_policies(["thaw", "kpa"], reqs, fleet, thaw_config(max_replicas=2), 0.0):
        assert max(r.wait_s for r in res.records) > 60  # saturated
        held = sum(res.gpu_seconds_by_pool.values()) / 3600
        assert 0 < busy_gpu_hours(res) <= held
        s = summarize(res, fleet)
        assert s["busy_gpu_hours_floor"] <= s["gpu_hours"]


def test_always_on_replicas_carry_prefill_not_one_per_model() -> None:
    fleet = parse_fleet(FLEET)
    spec = fleet.models[0]  # prefill 10,000 tokens/s
    # one 6,000-token prompt a second: 0.6 s of prefill every second, whatever the batch
    reqs = tuple(Request(float(t), 6000, 8, "m") for t in range(600))
    assert model_load(reqs, spec.perf) > 0.6
    assert peak_replicas(reqs, spec) == 2  # at 70 % utilization one replica is too few
    short = tuple(Request(float(t), 100, 8, "m") for t in range(600))
    assert peak_replicas(short, spec) == 1


def test_requests_over_the_context_are_reported_as_rejected_too_long() -> None:
    fleet = parse_fleet(FLEET)  # max_model_len_tokens 8000
    ok = poisson(1.0, 60.0, 1, 100, 8)
    long = tuple(Request(r.arrival_s + 0.001, 9000, 8, r.model) for r in ok[:5])
    reqs = tuple(sorted(ok + long, key=lambda r: r.arrival_s))
    (res,) = run_policies(["always-on"], reqs, fleet, thaw_config(), 0.0)
    s = summarize(res, fleet)
    assert s["rejected_too_long"] == 5
    assert s["requests"] == len(reqs)
    parts = ("slo_met_requests", "slo_missed_requests", "unserved_requests", "rejected_too_long")
    assert sum(s[k] for k in parts) == s["requests"]
    assert s["slo_attainment_ratio"] == pytest.approx(s["slo_met_requests"] / len(reqs))
