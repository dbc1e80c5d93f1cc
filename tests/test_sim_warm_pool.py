"""The simulator's warm pool, warm-up and end of run: sleepers of an unshared pool keep (and are
billed for) their GPU and wake in the derived time, host RAM bounds level 1, a model that never
gets a GPU ends unserved."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from test_sim_core import FLEET

from policy_file.schema import ThawConfig
from sim.core import SimResult, simulate
from sim.fleet import cold_start_s, parse_fleet
from sim.report import summarize
from sim.runner import run_policies, sim_config
from sim.traces import Request, bursty, poisson, spread_zipf

WARM = {"enabled": True, "sleep_level": 1, "max_sleeping": 1, "sleep_ttl_s": 3600.0}


def config(warm: Mapping[str, object] | None = None, **autoscaling: object) -> ThawConfig:
    model: dict[str, object] = {
        "name": "any",
        "engine": {"kind": "emulator"},
        "autoscaling": {
            "max_replicas": 1,
            "stable_window_s": 10.0,
            "scale_to_zero_grace_s": 5.0,
            **autoscaling,
        },
    }
    if warm is not None:
        model["warm_pool"] = dict(warm)
    return ThawConfig.model_validate({"models": [model]})


def sparse() -> tuple[Request, ...]:
    return bursty(1.0, 10.0, 200.0, 1000.0, 4, 200, 16)  # 5 bursts of 10 s, 200 s apart


def run_one(fleet_text: str, cfg: ThawConfig, policy: str = "thaw") -> SimResult:
    (res,) = run_policies([policy], sparse(), parse_fleet(fleet_text), cfg, 0.0)  # type: ignore[list-item]
    return res


def test_scaled_to_zero_replicas_sleep_holding_their_gpu_and_wake_in_the_derived_time() -> None:
    fleet = parse_fleet(FLEET)
    res = run_one(FLEET, config(WARM))
    assert res.cold_starts_by_tier["local_disk"] == 1  # the first start only
    assert res.cold_starts_by_tier["wake_level1"] == 4  # one wake per later burst
    wake = cold_start_s(fleet.models[0], fleet.pool("big"), "wake_level1")
    later = [r for r in res.records if r.cold_start and r.arrival_s > 100]
    assert len(later) >= 4
    assert all(r.ttft_s < wake + 1.0 for r in later)
    assert max(r.ttft_s for r in later) >= wake
    # Between bursts: nothing awake, one replica sleeps, and it still holds its GPU (a pod
    # holds its whole nvidia.com/gpu while its engine sleeps).
    quiet = [
        (n, s, g)
        for t, n, s, g in zip(
            res.sample_times_s,
            res.sample_replicas,
            res.sample_sleeping,
            res.sample_gpus_held,
            strict=True,
        )
        if 100 < t % 210 < 200
    ]
    assert quiet and all(n == 0 and s == 1 and g == 1 for n, s, g in quiet)
    cold = run_one(FLEET, config())
    assert cold.cold_starts_by_tier["local_disk"] == 5
    # Billed for its sleeper: the GPU from the first start to the end of the window, more than
    # the cold policy that gives it back between bursts.
    first_ready = min(r.arrival_s + r.ttft_s for r in res.records)
    held = sum(res.gpu_seconds_by_pool.values())
    assert held >= res.window_s - first_ready
    assert held > sum(cold.gpu_seconds_by_pool.values())
    assert max(r.ttft_s for r in res.records if r.arrival_s > 100) < 3.0
    assert max(r.ttft_s for r in cold.records) >= 18.0


def test_without_host_ram_for_the_weights_sleepers_fall_back_to_level_2() -> None:
    tight = FLEET.replace("host_ram_bytes: 1000000000000", "host_ram_bytes: 1000000000")
    res = run_one(tight, config(WARM))
    assert res.cold_starts_by_tier["wake_level1"] == 0
    assert res.cold_starts_by_tier["wake_level2"] == 4
    fleet = parse_fleet(tight)
    wake2 = cold_start_s(fleet.models[0], fleet.pool("big"), "wake_level2")
    later = [r for r in res.records if r.cold_start and r.arrival_s > 100]
    assert all(r.ttft_s < wake2 + 1.0 for r in later)
    assert max(r.ttft_s for r in later) >= wake2


def test_sleep_ttl_stops_the_sleeper_and_the_next_burst_starts_cold() -> None:
    res = run_one(FLEET, config({**WARM, "sleep_ttl_s": 60.0}))
    assert res.cold_starts_by_tier["wake_level1"] == 0
    assert res.cold_starts_by_tier["local_disk"] == 5
    assert not any(res.sample_sleeping[-5:])


def test_warmup_spares_every_policy_the_start_from_zero() -> None:
    reqs = poisson(2.0, 300.0, 5, 200, 16)
    fleet = parse_fleet(FLEET)
    cfg = config(scale_to_zero_grace_s=30.0)
    plain = run_policies(["thaw", "kpa"], reqs, fleet, cfg, 0.0)
    primed = run_policies(["thaw", "kpa"], reqs, fleet, cfg, 0.0, warmup_s=120.0)
    for a, b in zip(plain, primed, strict=True):
        assert sum(r.cold_start for r in a.records) > 0
        assert sum(r.cold_start for r in b.records) == 0
        assert len(a.records) == len(b.records) == len(reqs)
        assert b.records[0].arrival_s == pytest.approx(a.records[0].arrival_s)
        assert b.cold_starts_by_tier["local_disk"] == 0


def test_a_model_without_a_free_gpu_ends_unserved_not_in_an_endless_run() -> None:
    fleet = parse_fleet(FLEET.replace("count: 8", "count: 1", 1))
    reqs = spread_zipf(poisson(1.0, 60.0, 1, 100, 8), 2, 0.0, 1)
    cfg = sim_config("always-on", reqs, fleet, config(), 0.0)
    res = simulate(reqs, fleet, cfg)
    assert res.capacity_refusals == 1
    assert len({r.model for r in res.records}) == 1
    assert res.unserved_requests == len(reqs) - len(res.records) > 0
    # one GPU pinned for the measured window (not for the drain that waited on the other model)
    assert res.gpu_seconds_by_pool["big"] == pytest.approx(res.window_s)
    assert res.end_s > res.window_s + 3000
    s = summarize(res, fleet)
    assert s["unserved_requests"] == res.unserved_requests


def test_busy_floor_is_below_every_policys_gpu_hours() -> None:
    fleet = parse_fleet(FLEET)
    reqs = spread_zipf(bursty(3.0, 20.0, 100.0, 600.0, 2, 200, 32), 3, 1.0, 2)
    for res in run_policies(["thaw", "kpa", "always-on"], reqs, fleet, config(WARM), 0.0):
        s = summarize(res, fleet)
        assert 0 < s["busy_gpu_hours_floor"] <= s["gpu_hours"]


def test_skipping_models_at_rest_gives_the_same_results_as_ticking_every_model() -> None:
    from dataclasses import replace

    fleet = parse_fleet(FLEET)
    # A long tail: 12 models, most idle for minutes between requests; sleepers with a TTL.
    reqs = spread_zipf(bursty(1.0, 30.0, 300.0, 3000.0, 6, 200, 64), 12, 1.5, 6)
    for policy, warm in (("thaw", {**WARM, "sleep_ttl_s": 500.0}), ("thaw", None), ("kpa", None)):
        scaling = config(
            warm,
            max_replicas=3,
            scale_down_delay_s=20.0,
            target_concurrency_per_replica=1.0,
            target_waiting_per_replica=None,
            target_kv_cache_usage_ratio=None,
            panic_threshold_pct=1000.0,  # so that the stable window's zeros decide the count
        )
        cfg = replace(sim_config(policy, reqs, fleet, scaling, 0.0), sample_every_s=1.0)  # type: ignore[arg-type]
        a = simulate(reqs, fleet, cfg)
        b = simulate(reqs, fleet, replace(cfg, decide_every_tick=True))
        assert a.decisions < b.decisions / 2
        assert a.records == b.records
        assert a.cold_starts_by_tier == b.cold_starts_by_tier
        assert a.gpu_seconds_by_pool == b.gpu_seconds_by_pool
        assert (a.sample_replicas, a.sample_sleeping) == (b.sample_replicas, b.sample_sleeping)
    assert a.cold_starts_by_tier["local_disk"] > 12
