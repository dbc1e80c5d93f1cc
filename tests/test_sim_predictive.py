"""The simulator's predictive policy (forecaster fed the simulated arrivals) and its placement."""

from __future__ import annotations

from dataclasses import replace

from autoscaler.policy import ForecastConfig
from policy_file.schema import ThawConfig
from sim.core import SimResult
from sim.fleet import parse_fleet
from sim.runner import run_policies
from sim.traces import Request, bursty

POOL = (
    "gpu_memory_bytes: 80000000000, host_ram_bytes: 1000000000000, "
    "local_disk_bytes_per_s: 2.0e+9, s3_bytes_per_s: 1.0e+9, host_to_gpu_bytes_per_s: 2.0e+10"
)
PERF = (
    "{prefill_tokens_per_s: 10000, decode_base_s: 0.05, decode_per_seq_s: 0.001, "
    "kv_capacity_tokens: 20000, max_num_seqs: 4, max_model_len_tokens: 8000}"
)


def fleet_text(pools: str, dear_count: int = 8, cheap_count: int = 8, dear_speed: float = 1) -> str:
    return f"""
pools:
  - {{name: dear, gpu_type: H100, count: {dear_count}, cost_per_hour_usd: 10, {POOL},
     speed: {{decode_ratio: {dear_speed}}}}}
  - {{name: cheap, gpu_type: A100, count: {cheap_count}, cost_per_hour_usd: 4, {POOL}}}
models:
  - name: m
    weights_bytes: 16000000000
    kv_bytes_per_token: 131072
    pools: {pools}
    engine_start_s: 10
    wake_overhead_s: 0.5
    perf: {PERF}
"""


def thaw_config(**autoscaling: object) -> ThawConfig:
    base: dict[str, object] = {
        "max_replicas": 4,
        "target_waiting_per_replica": None,
        "target_kv_cache_usage_ratio": None,
        "target_concurrency_per_replica": 4.0,
        "stable_window_s": 30.0,
        "scale_to_zero_grace_s": 10.0,
    }
    base.update(autoscaling)
    return ThawConfig.model_validate(
        {"models": [{"name": "any", "engine": {"kind": "emulator"}, "autoscaling": base}]}
    )


def run(
    reqs: tuple[Request, ...],
    policies: list[str],
    *,
    pools: str = "[dear]",
    forecast: ForecastConfig | None = None,
    **fleet_kw: float,
) -> list[SimResult]:
    fleet = parse_fleet(fleet_text(pools, **fleet_kw))  # type: ignore[arg-type]
    return run_policies(
        policies,  # type: ignore[arg-type]
        reqs,
        fleet,
        thaw_config(),
        horizon_s=0.0,
        forecast=forecast,
    )


def bursts() -> tuple[Request, ...]:
    """60 s of traffic every 600 s, for an hour: a season the forecaster can learn."""
    return bursty(2.0, 60.0, 540.0, 3600.0, seed=4, mean_prompt_tokens=100, mean_output_tokens=8)


SEASONAL = ForecastConfig(
    enabled=True, method="seasonal_naive", interval_s=10.0, season_s=600.0, min_history=30
)


def test_a_forecaster_that_never_speaks_changes_nothing() -> None:
    silent = SEASONAL.model_copy(update={"min_history": 100_000})
    thaw, predictive = run(bursts(), ["thaw", "predictive"], forecast=silent)
    assert predictive.records == thaw.records
    assert predictive.gpu_seconds_by_pool == thaw.gpu_seconds_by_pool


def test_a_learned_season_starts_replicas_before_the_burst() -> None:
    thaw, predictive = run(bursts(), ["thaw", "predictive"], forecast=SEASONAL)
    cold_thaw = sum(r.cold_start for r in thaw.records)
    cold_pred = sum(r.cold_start for r in predictive.records)
    # thaw pays a start at every burst; after a season of history the forecast is there first
    assert cold_thaw >= 6
    assert cold_pred < cold_thaw / 2, (cold_pred, cold_thaw)
    # ... so the bursts' TTFT tail no longer holds an 18 s start
    later = 600.0  # after one season of history
    assert max(r.ttft_s for r in predictive.records if r.arrival_s > later) < 5.0
    assert max(r.ttft_s for r in thaw.records if r.arrival_s > later) > 18.0
    # ready before the burst, it needs fewer replicas than thaw, which scales up for the
    # backlog its start left: less GPU time here, not more
    assert sum(predictive.gpu_seconds_by_pool.values()) < sum(thaw.gpu_seconds_by_pool.values())


def test_predictive_is_deterministic() -> None:
    a = run(bursts(), ["predictive"], forecast=SEASONAL)[0]
    b = run(bursts(), ["predictive"], forecast=SEASONAL)[0]
    assert a == b


def test_new_replicas_go_to_the_cheaper_pool_the_model_fits() -> None:
    reqs = bursts()[:50]
    (res,) = run(reqs, ["thaw"], pools="[dear, cheap]")
    assert res.gpu_seconds_by_pool["cheap"] > 0
    assert res.gpu_seconds_by_pool["dear"] == 0


def test_a_full_cheap_pool_sends_replicas_to_the_next() -> None:
    # a burst that needs several replicas; the cheap pool has one GPU
    many = tuple(
        replace(r, arrival_s=r.arrival_s / 10)
        for r in bursty(
            40.0, 30.0, 0.0, 30.0, seed=2, mean_prompt_tokens=100, mean_output_tokens=64
        )
    )
    (res,) = run(many, ["thaw"], pools="[dear, cheap]", cheap_count=1)
    assert res.gpu_seconds_by_pool["cheap"] > 0
    assert res.gpu_seconds_by_pool["dear"] > 0


def test_one_pool_keeps_the_listed_pool() -> None:
    (res,) = run(bursts()[:50], ["thaw"], pools="[dear]")
    assert res.gpu_seconds_by_pool["dear"] > 0
    assert res.gpu_seconds_by_pool["cheap"] == 0


def test_a_dearer_pool_wins_when_it_serves_enough_more() -> None:
    # 10 $/h at 3x the decode speed is 3.3 $/h per unit served, below the cheap pool's 4
    (res,) = run(bursts()[:50], ["thaw"], pools="[cheap, dear]", dear_speed=3.0)
    assert res.gpu_seconds_by_pool["dear"] > 0
    assert res.gpu_seconds_by_pool["cheap"] == 0
    (res,) = run(bursts()[:50], ["thaw"], pools="[cheap, dear]", dear_speed=2.0)  # 5 $/h: no
    assert res.gpu_seconds_by_pool["dear"] == 0


def test_the_thaw_policy_runs_the_files_forecast_when_enabled() -> None:
    # The simulator honours autoscaling.forecast.enabled in the policy file (it was ignored:
    # only --compare predictive forecast).
    fleet = parse_fleet(fleet_text("[dear]"))
    cfg = thaw_config(forecast=SEASONAL.model_dump())
    thaw, predictive = run_policies(["thaw", "predictive"], bursts(), fleet, cfg, horizon_s=0.0)
    assert thaw.records == predictive.records
    assert thaw.gpu_seconds_by_pool == predictive.gpu_seconds_by_pool
    (plain,) = run(bursts(), ["thaw"])  # the same file without the forecast
    assert sum(r.cold_start for r in thaw.records) < sum(r.cold_start for r in plain.records)
