"""Deciding only when the answer can change gives report.json byte for byte as calling the decider
for every model at every tick: on a slice of the Azure conversation trace (tests/data/traces,
sources named there) at 20 and 200 models, and on random policies and traces."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from test_sim_core import FLEET

from policy_file.load import load_policy
from policy_file.schema import ThawConfig
from sim.core import PolicyName, SimResult, simulate
from sim.fleet import example_fleet_path, load_fleet, parse_fleet
from sim.report import report_json
from sim.runner import sim_config, with_warmup
from sim.sizing import scaled_fleet
from sim.traces import Request, bursty, clip, diurnal, load_trace, poisson, spread_zipf

DATA = Path(__file__).resolve().parent / "data" / "traces" / "azure_conv_first10min.csv"
ROOT = Path(__file__).resolve().parent.parent


def both(
    policy: PolicyName,
    reqs: tuple[Request, ...],
    fleet_gpus: int,
    warmup_s: float,
    thaw: ThawConfig | None = None,
) -> tuple[SimResult, SimResult, str, str]:
    fleet = scaled_fleet(load_fleet(example_fleet_path()), fleet_gpus)
    thaw = thaw or load_policy(ROOT / "sim" / "examples" / "policy.yaml")
    primed, first = with_warmup(reqs, warmup_s)
    cfg = sim_config(policy, reqs, fleet, thaw, 0.0, warmup_s=warmup_s, first_measured=first)
    needed = simulate(primed, fleet, cfg)
    every = simulate(primed, fleet, replace(cfg, decide_every_tick=True))
    a = report_json([needed], fleet, None, {})
    b = report_json([every], fleet, None, {})
    return needed, every, a, b


@pytest.mark.parametrize(
    ("models", "gpus", "policy", "fewer"),
    [
        (20, 64, "thaw", 100),
        (20, 64, "kpa", 100),
        (200, 320, "thaw", 10),
        # too few GPUs: a start refused each tick for want of a GPU, counted as every tick would
        (200, 64, "thaw", 3),
        # a forecaster at rest is asked again only for a new interval or target, and the
        # decider only when that forecast asks for another count than the one parked with
        (200, 320, "predictive", 5),
    ],
)
def test_report_is_byte_identical_to_deciding_every_tick_on_the_azure_slice(
    models: int, gpus: int, policy: PolicyName, fewer: int
) -> None:
    reqs = spread_zipf(clip(load_trace(DATA), 300.0), models, 1.0, 0)
    needed, every, a, b = both(policy, reqs, gpus, 120.0)
    assert a == b
    assert needed.sample_replicas == every.sample_replicas
    assert needed.sample_demand == every.sample_demand
    assert needed.records == every.records
    assert needed.decisions * fewer <= every.decisions


@pytest.mark.parametrize(
    ("gpus", "policy"), [(64, "thaw"), (16, "thaw"), (64, "kpa"), (64, "predictive")]
)
def test_the_same_on_the_shared_example_fleet(gpus: int, policy: PolicyName) -> None:
    # every pool shared 8 ways: engines put to sleep or stopped by other models' arbitration;
    # predictive: models parked until their next forecast (kept parked while it asks for the
    # same count) that another model's arbitration unparks
    reqs = spread_zipf(clip(load_trace(DATA), 300.0), 200, 1.0, 0)
    fleet = scaled_fleet(load_fleet(ROOT / "sim" / "examples" / "fleet-shared.yaml"), gpus)
    thaw = load_policy(ROOT / "sim" / "examples" / "policy.yaml")
    primed, first = with_warmup(reqs, 120.0)
    cfg = sim_config(policy, reqs, fleet, thaw, 0.0, warmup_s=120.0, first_measured=first)
    needed = simulate(primed, fleet, cfg)
    every = simulate(primed, fleet, replace(cfg, decide_every_tick=True))
    assert report_json([needed], fleet, None, {}) == report_json([every], fleet, None, {})
    assert needed.sample_gpus_held == every.sample_gpus_held
    assert needed.records == every.records
    assert needed.decisions * 3 <= every.decisions
    assert needed.gpu_memory_overflows == every.gpu_memory_overflows == 0


@pytest.mark.parametrize(("gpus", "seed"), [(8, 14), (2, 24)])
def test_the_same_on_random_policies_and_traces(gpus: int, seed: int) -> None:
    # 2 GPUs for up to 8 models: starts and wakes refused for want of a GPU
    rng = random.Random(seed)
    fleet = parse_fleet(FLEET.replace("count: 8", f"count: {gpus}", 1))
    for _ in range(12):
        seed = rng.randrange(1000)
        auto: dict[str, Any] = {
            "max_replicas": rng.choice([1, 2, 4]),
            "stable_window_s": rng.choice([6.0, 10.0, 60.0]),
            "scale_to_zero_grace_s": rng.choice([0.0, 5.0, 30.0]),
            "scale_down_delay_s": rng.choice([0.0, 0.0, 5.0]),
            "target_concurrency_per_replica": rng.choice([None, 1.0, 4.0, 70.0]),
            "target_waiting_per_replica": rng.choice([None, 1.0, 4.0]),
            "target_kv_cache_usage_ratio": rng.choice([None, 0.05, 0.8]),
            "panic_threshold_pct": rng.choice([110.0, 200.0, 1000.0]),
            "min_replicas": rng.choice([0, 0, 1]),
            "initial_replicas": rng.choice([0, 1]),
        }
        if not any(auto[k] for k in auto if k.startswith("target_")):
            auto["target_concurrency_per_replica"] = 2.0
        model: dict[str, Any] = {"name": "any", "engine": {"kind": "emulator"}, "autoscaling": auto}
        if rng.random() < 0.5:
            model["warm_pool"] = {
                "enabled": True,
                "max_sleeping": 1,
                "sleep_ttl_s": rng.choice([30.0, 300.0]),
            }
        thaw = ThawConfig.model_validate({"models": [model], "tick_s": rng.choice([0.5, 1.0, 2.0])})
        kind = rng.choice(["bursty", "poisson", "diurnal"])
        if kind == "bursty":
            reqs = bursty(rng.choice([1.0, 5.0]), 20.0, rng.choice([30.0, 100.0]), 600.0, seed)
        elif kind == "poisson":
            reqs = poisson(rng.choice([0.1, 3.0]), 600.0, seed, 300, 40)
        else:
            reqs = diurnal(1.0, 300.0, 1.0, 600.0, seed, 200, 32)
        reqs = spread_zipf(reqs, rng.choice([1, 3, 8]), 1.0, seed)
        policy: PolicyName = rng.choice(["thaw", "kpa", "predictive"])
        primed, first = with_warmup(reqs, rng.choice([0.0, 100.0]))
        cfg = sim_config(policy, reqs, fleet, thaw, 0.0, first_measured=first)
        cfg = replace(cfg, sample_every_s=1.0)
        a = simulate(primed, fleet, cfg)
        b = simulate(primed, fleet, replace(cfg, decide_every_tick=True))
        assert a.decisions <= b.decisions
        assert report_json([a], fleet, None, {}) == report_json([b], fleet, None, {}), auto
        assert (a.sample_replicas, a.sample_sleeping) == (b.sample_replicas, b.sample_sleeping)


def test_an_idle_replica_that_never_saw_a_request_parks_and_matches() -> None:
    # min_replicas 1 starts a replica at once; its first request comes minutes later
    fleet = parse_fleet(FLEET)
    thaw = ThawConfig.model_validate(
        {"models": [{"name": "any", "engine": {"kind": "emulator"},
                     "autoscaling": {"min_replicas": 1, "max_replicas": 2}}]}
    )  # fmt: skip
    reqs = tuple(Request(300.0 + r.arrival_s, r.prompt_tokens, r.output_tokens, r.model)
                 for r in poisson(0.5, 300.0, 4, 200, 16))  # fmt: skip
    cfg = replace(sim_config("thaw", reqs, fleet, thaw, 0.0), sample_every_s=1.0)
    a = simulate(reqs, fleet, cfg)
    b = simulate(reqs, fleet, replace(cfg, decide_every_tick=True))
    assert report_json([a], fleet, None, {}) == report_json([b], fleet, None, {})
    assert a.decisions < b.decisions / 2


def test_a_forecaster_that_starts_replicas_ahead_matches_deciding_every_tick() -> None:
    from test_sim_predictive import SEASONAL, bursts, fleet_text
    from test_sim_predictive import thaw_config as predictive_config

    fleet = parse_fleet(fleet_text("[dear]"))
    reqs = spread_zipf(bursts(), 3, 1.0, 2)
    cfg = sim_config("predictive", reqs, fleet, predictive_config(), 0.0, forecast=SEASONAL)
    a = simulate(reqs, fleet, cfg)
    b = simulate(reqs, fleet, replace(cfg, decide_every_tick=True))
    assert report_json([a], fleet, None, {}) == report_json([b], fleet, None, {})
    assert a.sample_replicas == b.sample_replicas
    assert a.decisions < b.decisions


def test_the_thaw_policys_own_forecast_matches_deciding_every_tick() -> None:
    # The thaw policy runs the policy file's forecaster when autoscaling.forecast.enabled is set:
    # the same parking rules as predictive's, so the same report as deciding every tick.
    from test_sim_predictive import SEASONAL, bursts, fleet_text
    from test_sim_predictive import thaw_config as predictive_config

    fleet = parse_fleet(fleet_text("[dear]"))
    reqs = spread_zipf(bursts(), 3, 1.0, 2)
    thaw = predictive_config(forecast=SEASONAL.model_dump())
    cfg = sim_config("thaw", reqs, fleet, thaw, 0.0)
    assert cfg.forecasts  # the file's forecast is on
    a = simulate(reqs, fleet, cfg)
    b = simulate(reqs, fleet, replace(cfg, decide_every_tick=True))
    assert report_json([a], fleet, None, {}) == report_json([b], fleet, None, {})
    assert a.sample_replicas == b.sample_replicas
    assert a.decisions < b.decisions


@pytest.mark.parametrize(("tick_s", "grace_s"), [(1.0, 5.0), (0.3, 5.0), (2.0, 30.0), (1.0, 0.0)])
def test_the_grace_counts_once_from_the_first_tick_the_decider_wants_zero(
    tick_s: float, grace_s: float
) -> None:
    # As the cluster runs it (autoscaler/scale_to_zero.py): the decider wants 0 once its stable
    # window has seen no request, and the replica stays one grace longer. The idle replica is
    # parked meanwhile and visited again at the tick where the grace runs out.
    fleet = parse_fleet(FLEET)
    window_s = 10.0
    thaw = ThawConfig.model_validate(
        {"tick_s": tick_s,
         "models": [{"name": "any", "engine": {"kind": "emulator"},
                     "autoscaling": {"max_replicas": 1, "stable_window_s": window_s,
                                     "scale_to_zero_grace_s": grace_s,
                                     "target_concurrency_per_replica": 1.0}}]}
    )  # fmt: skip
    reqs = (Request(0.0, 200, 16, "any"),)
    cfg = replace(sim_config("thaw", reqs, fleet, thaw, 120.0), sample_every_s=tick_s)
    a = simulate(reqs, fleet, cfg)
    b = simulate(reqs, fleet, replace(cfg, decide_every_tick=True))
    assert report_json([a], fleet, None, {}) == report_json([b], fleet, None, {})
    assert a.sample_replicas == b.sample_replicas
    assert a.decisions < b.decisions / 3
    (rec,) = a.records
    held_s = sum(a.gpu_seconds_by_pool.values())  # from the start at 0 to the release
    # the last tick that saw the request (within a tick before its end), the first tick after
    # a window from it, the first tick after a grace from that
    zero_s = rec.e2e_s + window_s + grace_s
    assert zero_s - tick_s < held_s < zero_s + 2 * tick_s
