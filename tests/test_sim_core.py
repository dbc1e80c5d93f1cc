"""The simulator core: the real decider drives EngineCore replicas; deterministic for a seed."""

from __future__ import annotations

import pytest

from autoscaler.policy import AutoscalingPolicy
from policy_file.schema import ThawConfig
from sim.core import PolicyName, SimResult
from sim.fleet import FleetError, cold_start_s, parse_fleet
from sim.report import report_json, summarize
from sim.runner import run_policies, sim_config
from sim.traces import Request, bursty, poisson, spread_zipf

FLEET = """
pools:
  - {name: big, gpu_type: H100, gpu_memory_bytes: 80000000000, count: 8, cost_per_hour_usd: 10,
     host_ram_bytes: 1000000000000, local_disk_bytes_per_s: 2.0e+9, s3_bytes_per_s: 1.0e+9,
     host_to_gpu_bytes_per_s: 2.0e+10}
  - {name: small, gpu_type: L4, gpu_memory_bytes: 24000000000, count: 8, cost_per_hour_usd: 1,
     host_ram_bytes: 16000000000, local_disk_bytes_per_s: 1.0e+9, s3_bytes_per_s: 5.0e+8,
     host_to_gpu_bytes_per_s: 1.0e+10}
models:
  - name: m8b
    weights_bytes: 16000000000
    kv_bytes_per_token: 131072
    pools: [big]
    engine_start_s: 10
    perf: {prefill_tokens_per_s: 10000, decode_base_s: 0.05, decode_per_seq_s: 0.001,
           kv_capacity_tokens: 20000, max_num_seqs: 4, max_model_len_tokens: 8000,
           }
    wake_overhead_s: 0.5
"""


def thaw_config(**autoscaling: object) -> ThawConfig:
    return ThawConfig.model_validate(
        {"models": [{"name": "any", "engine": {"kind": "emulator"}, "autoscaling": autoscaling}]}
    )


def run(
    requests: tuple[Request, ...], policies: list[str], **autoscaling: object
) -> list[SimResult]:
    fleet = parse_fleet(FLEET)
    cfg = thaw_config(**{"max_replicas": 4, **autoscaling})
    return run_policies(policies, requests, fleet, cfg, horizon_s=0.0)  # type: ignore[arg-type]


def test_cold_start_times_are_derived_per_tier() -> None:
    fleet = parse_fleet(FLEET)
    m, p = fleet.models[0], fleet.pool("big")
    assert cold_start_s(m, p, "local_disk") == pytest.approx(10 + 8)
    assert cold_start_s(m, p, "remote") == pytest.approx(10 + 16)
    assert cold_start_s(m, p, "wake_level1") == pytest.approx(0.8 + 0.5)
    assert cold_start_s(m, p, "wake_level2") == pytest.approx(8 + 0.5)


def test_fleet_errors_name_the_field_and_value() -> None:
    with pytest.raises(FleetError) as e:
        parse_fleet(
            FLEET.replace("pools: [big]", "pools: [huge]").replace("count: 8", "count: -1", 1)
        )
    text = str(e.value)
    assert "pools[0].count (line 3): value -1: must be >= 0" in text
    with pytest.raises(FleetError, match=r"models\[0\].pools\[0\] = 'small': weights_bytes"):
        parse_fleet(
            FLEET.replace("pools: [big]", "pools: [small]").replace("24000000000", "12000000000")
        )
    with pytest.raises(FleetError, match=r"models\[0\].pools\[0\] = 'huge': must be one of big"):
        parse_fleet(FLEET.replace("pools: [big]", "pools: [huge]"))
    unknown = r"pools\[0\].colour \(line 3\): value 'red': unknown key; accepted keys: name,"
    with pytest.raises(FleetError, match=unknown):
        parse_fleet(FLEET.replace("count: 8,", "count: 8, colour: red,", 1))


def test_same_seed_same_report_byte_for_byte() -> None:
    fleet = parse_fleet(FLEET)

    def once(seed: int) -> str:
        reqs = spread_zipf(poisson(2.0, 120.0, seed, 200, 16), 3, 1.0, seed)
        results = run(reqs, ["thaw", "kpa", "always-on"])
        return report_json(results, fleet, None, {"seed": seed})

    assert once(5) == once(5)
    assert once(5) != once(6)


def test_the_real_decider_caps_replicas_at_max_replicas() -> None:
    burst = poisson(20.0, 60.0, 1, 200, 64)
    for cap in (1, 3):
        (res,) = run(burst, ["thaw"], max_replicas=cap, target_waiting_per_replica=1.0)
        assert max(res.sample_replicas) == cap
        assert res.cold_starts_by_tier["local_disk"] == cap
        assert len(res.records) == len(burst)


def test_always_on_has_no_cold_start_requests() -> None:
    reqs = poisson(1.0, 120.0, 2, 200, 16)
    (res,) = run(reqs, ["always-on"])
    s = summarize(res, parse_fleet(FLEET))
    assert s["cold_start_requests"] == 0
    assert set(s["cold_starts_by_tier"].values()) == {0}
    assert s["requests"] == len(reqs)


def test_scale_to_zero_on_a_sparse_trace_cold_starts_but_costs_less() -> None:
    reqs = bursty(2.0, 20.0, 600.0, 1900.0, 4, 200, 16)
    thaw, kpa, always = run(reqs, ["thaw", "kpa", "always-on"], scale_to_zero_grace_s=30.0)
    for res in (thaw, kpa):
        assert sum(r.cold_start for r in res.records) > 0
        assert res.cold_starts_by_tier["local_disk"] >= 3  # one per burst at least
        assert sum(res.gpu_seconds_by_pool.values()) < 0.7 * sum(
            always.gpu_seconds_by_pool.values()
        )
    assert thaw.records[0].ttft_s >= 18.0  # the first waited for a local-disk start
    assert sum(r.cold_start for r in always.records) == 0


def test_kpa_uses_knative_defaults() -> None:
    reqs = poisson(1.0, 10.0, 0, 100, 8)
    cfg = sim_config("kpa", reqs, parse_fleet(FLEET), thaw_config(max_replicas=4), 0.0)
    pol = cfg.autoscaling["model"]
    assert isinstance(pol, AutoscalingPolicy)
    assert pol.target_concurrency_per_replica == 70.0
    assert pol.target_waiting_per_replica is None
    assert pol.target_kv_cache_usage_ratio is None
    assert (pol.stable_window_s, pol.panic_window_s, pol.panic_threshold_pct) == (60.0, 6.0, 200.0)
    assert pol.scale_to_zero_grace_s == 30.0


def test_fast_forward_gives_the_same_results_as_stepping_token_by_token() -> None:
    from dataclasses import replace

    from sim.core import simulate

    fleet = parse_fleet(FLEET)
    reqs = spread_zipf(poisson(3.0, 120.0, 9, 300, 40), 2, 1.0, 9)
    cfg = thaw_config(max_replicas=3, target_waiting_per_replica=1.0)
    policies: tuple[PolicyName, ...] = ("thaw", "always-on")
    for policy in policies:
        fast = sim_config(policy, reqs, fleet, cfg, 0.0)
        a = simulate(reqs, fleet, fast)
        b = simulate(reqs, fleet, replace(fast, fast_forward=False))
        assert len(a.records) == len(b.records) == len(reqs)
        for x, y in zip(a.records, b.records, strict=True):
            assert x.ttft_s == pytest.approx(y.ttft_s, abs=1e-6)
            assert x.e2e_s == pytest.approx(y.e2e_s, abs=1e-6)
            assert x.cold_start == y.cold_start
        assert a.cold_starts_by_tier == b.cold_starts_by_tier
        assert a.sample_replicas == b.sample_replicas


def test_requests_left_unserved_for_want_of_gpus_miss_the_slo() -> None:
    # 12 models on 8 GPUs, always-on: 4 models never get a replica; their requests are never
    # served and count as SLO misses, not as absent.
    fleet = parse_fleet(FLEET)
    reqs = spread_zipf(poisson(4.0, 120.0, 3, 200, 16), 12, 0.0, 3)
    models_seen = {r.model for r in reqs}
    assert len(models_seen) == 12
    (res,) = run(reqs, ["always-on"])
    s = summarize(res, fleet)
    assert s["unserved_requests"] > 0
    assert s["requests"] == len(reqs)
    assert s["served_requests"] == len(reqs) - s["unserved_requests"] - s["rejected_too_long"]
    assert s["slo_attainment_ratio"] <= s["served_requests"] / s["requests"] + 1e-6  # rounded
