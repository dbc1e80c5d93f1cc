"""thaw sim on shared GPU pools (issue 13, part B): the fleet file's ``share``, engines placed on
GPUs with the arbiter deciding which are awake (sleep before wake, a wake waiting for the sleep's
copy-out), a shared GPU billed while any engine is on it, ``models_per_gpu``, and awake memory
never over a GPU's memory."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
from test_sim_cli import write_azure
from test_sim_core import FLEET
from test_sim_plan import staggered

from policy_file.schema import ThawConfig
from sim.core import SimResult, simulate
from sim.fleet import FleetError, cold_start_s, engine_awake_bytes, parse_fleet, sleep_s
from sim.plan import PlanJob, equal_slo_table, search
from sim.report import report_json, summarize
from sim.runner import run_policies, sim_config, with_warmup
from sim.traces import Request, bursty, poisson, spread_zipf
from sim.workers import ProbePool
from thaw.cli import main

# One GPU shared two ways whose memory holds one engine awake (0.6 of it each).
ONE_GPU = """
pools:
  - {name: gpu, gpu_type: A100, gpu_memory_bytes: 80000000000, count: 1, share: 2,
     cost_per_hour_usd: 4, host_ram_bytes: 1000000000000, local_disk_bytes_per_s: 2.0e+9,
     s3_bytes_per_s: 1.0e+9, host_to_gpu_bytes_per_s: 1.0e+10}
models:
  - name: m
    weights_bytes: 10000000000
    kv_bytes_per_token: 100000
    pools: [gpu]
    engine_start_s: 5
    wake_overhead_s: 0.5
    gpu_memory_utilization_ratio: 0.6
    perf: {prefill_tokens_per_s: 10000, decode_base_s: 0.01, decode_per_seq_s: 0.001,
           kv_capacity_tokens: 20000, max_num_seqs: 8, max_model_len_tokens: 8000}
"""

WARM = {"enabled": True, "sleep_level": 1, "max_sleeping": 1, "sleep_ttl_s": 3600.0}


def thaw(stable_s: float = 60.0, grace_s: float = 30.0, warm: bool = True) -> ThawConfig:
    model: dict[str, object] = {
        "name": "any",
        "engine": {"kind": "emulator"},
        "autoscaling": {
            "max_replicas": 1,
            "stable_window_s": stable_s,
            "scale_to_zero_grace_s": grace_s,
            "target_concurrency_per_replica": 4,
        },
    }
    if warm:
        model["warm_pool"] = WARM
    return ThawConfig.model_validate({"models": [model]})


def req(t: float, model: str) -> Request:
    return Request(t, 100, 4, model)


# -- the fleet file ---------------------------------------------------------------------------


def test_share_is_accepted_and_sets_each_engines_memory() -> None:
    fleet = parse_fleet(ONE_GPU)
    pool, model = fleet.pool("gpu"), fleet.models[0]
    assert pool.share == 2
    assert engine_awake_bytes(model, pool) == 48_000_000_000
    # without the model's own share: the pool's 0.9 (default) / share
    plain = parse_fleet(ONE_GPU.replace("gpu_memory_utilization_ratio: 0.6", ""))
    assert engine_awake_bytes(plain.models[0], plain.pool("gpu")) == 36_000_000_000
    # derived KV capacity: (48e9 - 10e9) / 1e5
    assert fleet.engine_perf(model, "gpu").kv_capacity_tokens == 380_000


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("share: 2", "share: 65"), "pools[0].share (line 3): value 65: must be <= 64"),
        (("share: 2", "share: 0"), "pools[0].share (line 3): value 0: must be >= 1"),
        (
            ("gpu_memory_utilization_ratio: 0.6", "gpu_memory_utilization_ratio: 0.12"),
            "models[0].pools[0] = 'gpu': KV capacity 0 tokens = (gpu_memory_bytes 80000000000 "
            "x the engine's share of a GPU shared 2 ways",
        ),
        (
            ("wake_overhead_s: 0.5", "wake_overhead_s: 0.5\n    asleep_gpu_bytes: 50000000000"),
            "models[0].asleep_gpu_bytes = 50000000000: must be <= what one engine takes awake "
            "on pool 'gpu' (48000000000)",
        ),
    ],
)
def test_bad_share_settings_are_refused_naming_the_field(
    edit: tuple[str, str], expected: str
) -> None:
    with pytest.raises(FleetError) as e:
        parse_fleet(ONE_GPU.replace(*edit), "fleet.yaml")
    assert any(expected in line for line in e.value.errors), e.value.errors


# -- a hand-checked scenario ------------------------------------------------------------------


def test_a_wake_on_a_full_gpu_sleeps_the_idle_model_first_and_waits_for_its_copy_out() -> None:
    """B runs at 0 and falls asleep (window 60 s + grace 30 s); A starts at 100 and is idle but
    awake (its window and grace run to ~190 s) when B's request comes at 150: the GPU holds one
    awake engine, so the arbiter puts A to sleep (copy-out: 10 GB at 10 GB/s = 1 s) and B's
    wake (1 s copy-in + 0.5 s) starts only when that is done."""
    fleet = parse_fleet(ONE_GPU)
    spec, pool = fleet.models[0], fleet.pool("gpu")
    reqs = (req(0.0, "b"), req(100.0, "a"), req(150.0, "b"))
    cfg = replace(sim_config("thaw", reqs, fleet, thaw(), 0.0), sample_every_s=1.0)
    res = simulate(reqs, fleet, cfg)
    assert res.cold_starts_by_tier["local_disk"] == 2  # b at 0, a at 100 (b asleep by then)
    assert res.cold_starts_by_tier["wake_level1"] == 1  # b at 150
    (late,) = [r for r in res.records if r.arrival_s == 150.0]
    copy_out, wake = sleep_s(spec, pool, 1), cold_start_s(spec, pool, "wake_level1")
    assert (copy_out, wake) == (1.0, 1.5)
    assert late.cold_start
    assert copy_out + wake <= late.ttft_s < copy_out + wake + 0.5
    # a's engine: awake from ~110 until b's request, then asleep; one GPU held throughout
    pairs = zip(res.sample_replicas, res.sample_sleeping, strict=True)
    at = dict(zip(res.sample_times_s, pairs, strict=True))
    assert at[149.0] == (1, 1)  # a awake, b asleep
    assert at[152.0] == (1, 1)  # b waking, a asleep
    assert res.gpu_memory_overflows == 0
    assert res.gpu_memory_peak_ratio == pytest.approx(0.6)
    assert set(res.sample_gpus_held[1:]) == {1}


def test_without_the_wait_the_wake_would_overflow_the_gpu() -> None:
    """The same scenario, with A's copy-out taking longer than B's wake would: B's memory is
    taken only after A's is given back, so the ledger never holds both awake."""
    slow = ONE_GPU.replace("host_to_gpu_bytes_per_s: 1.0e+10", "host_to_gpu_bytes_per_s: 1.0e+9")
    fleet = parse_fleet(slow)
    reqs = (req(0.0, "b"), req(100.0, "a"), req(150.0, "b"))
    (res,) = run_policies(["thaw"], reqs, fleet, thaw(), 0.0)
    (late,) = [r for r in res.records if r.arrival_s == 150.0]
    assert late.ttft_s >= 10.0 + 10.5  # a's 10 s copy-out, then b's 10.5 s wake
    assert res.gpu_memory_overflows == 0 and res.gpu_memory_peak_ratio <= 1.0


# -- billing and models per GPU ----------------------------------------------------------------


def test_a_shared_gpu_is_billed_while_any_engine_is_on_it_and_models_per_gpu() -> None:
    """Two models on one GPU shared two ways, both asleep most of the time: one GPU held from
    the first start to the end of the window, so models_per_gpu = 2 models / 1 GPU on average
    less the time before the first start."""
    fleet = parse_fleet(ONE_GPU)
    reqs = (req(0.0, "b"), req(100.0, "a"), req(150.0, "b"), req(400.0, "a"))
    (res,) = run_policies(["thaw"], reqs, fleet, thaw(), 0.0)
    assert res.window_s == 400.0
    assert sum(res.gpu_seconds_by_pool.values()) == pytest.approx(400.0)
    s = summarize(res, fleet)
    assert s["gpu_hours"] == pytest.approx(400.0 / 3600, abs=1e-4)
    assert s["models_served"] == 2
    assert s["models_per_gpu"] == pytest.approx(2.0)


def test_models_per_gpu_on_a_known_schedule_without_sharing() -> None:
    """Unshared, no warm pool: each model's GPU is held from its start to its stop; two models
    served over a 1000 s window with 250 GPU-seconds held between them: 2 / 0.25 = 8 models per
    GPU held on average."""
    fleet = parse_fleet(ONE_GPU.replace("share: 2", "share: 1").replace("count: 1", "count: 2"))
    cfg = thaw(stable_s=6.0, grace_s=0.0, warm=False)
    reqs = (req(0.0, "a"), req(500.0, "b"), req(1000.0, "a"))
    (res,) = run_policies(["thaw"], reqs, fleet, cfg, 0.0)
    held = sum(res.gpu_seconds_by_pool.values())
    s = summarize(res, fleet)
    assert s["models_served"] == 2
    assert s["models_per_gpu"] == pytest.approx(2 * 1000.0 / held, rel=1e-3)
    assert 1.0 < s["models_per_gpu"]


def test_no_gpu_held_reports_no_models_per_gpu() -> None:
    fleet = parse_fleet(ONE_GPU)
    (res,) = run_policies(["thaw"], (), fleet, thaw(), 60.0)
    assert summarize(res, fleet)["models_per_gpu"] is None


# -- properties --------------------------------------------------------------------------------


def _run_random(seed: int) -> tuple[SimResult, SimResult]:
    rng = random.Random(seed)
    share = rng.choice([2, 4, 8])
    ratio = rng.choice([0.2, 0.3, 0.45, 0.6])
    ram = rng.choice([0, 30, 1000]) * 1_000_000_000
    text = (
        ONE_GPU.replace("share: 2", f"share: {share}")
        .replace("count: 1", f"count: {rng.choice([1, 2, 3])}")
        .replace("gpu_memory_utilization_ratio: 0.6", f"gpu_memory_utilization_ratio: {ratio}")
        .replace("host_ram_bytes: 1000000000000", f"host_ram_bytes: {ram}")
    )
    fleet = parse_fleet(text)
    model: dict[str, object] = {
        "name": "any",
        "engine": {"kind": "emulator"},
        "autoscaling": {
            "max_replicas": rng.choice([1, 2, 3]),
            "stable_window_s": rng.choice([6.0, 20.0, 60.0]),
            "scale_to_zero_grace_s": rng.choice([0.0, 5.0, 30.0]),
            "target_concurrency_per_replica": rng.choice([1.0, 4.0]),
            "min_replicas": rng.choice([0, 0, 1]),
        },
    }
    if rng.random() < 0.7:
        model["warm_pool"] = {
            "enabled": True,
            "sleep_level": rng.choice([1, 2]),
            "max_sleeping": rng.choice([1, 2]),
            "sleep_ttl_s": rng.choice([30.0, 300.0, 3600.0]),
        }
    cfg_file = ThawConfig.model_validate({"models": [model], "tick_s": rng.choice([0.5, 1.0])})
    if rng.random() < 0.5:
        reqs = bursty(rng.choice([1.0, 5.0]), 20.0, rng.choice([30.0, 100.0]), 600.0, seed)
    else:
        reqs = poisson(rng.choice([0.2, 2.0]), 600.0, seed, 300, 40)
    reqs = spread_zipf(reqs, rng.choice([2, 5, 12]), 1.0, seed)
    policy = rng.choice(["thaw", "kpa"])
    primed, first = with_warmup(reqs, rng.choice([0.0, 100.0]))
    cfg = sim_config(policy, reqs, fleet, cfg_file, 0.0, first_measured=first)  # type: ignore[arg-type]
    cfg = replace(cfg, sample_every_s=1.0)
    return simulate(primed, fleet, cfg), simulate(
        primed, fleet, replace(cfg, decide_every_tick=True)
    )


@pytest.mark.parametrize("seed", range(16))
def test_awake_memory_never_exceeds_a_gpu_and_skipping_ticks_changes_nothing(seed: int) -> None:
    res, every = _run_random(seed)
    for r in (res, every):
        assert r.gpu_memory_overflows == 0
        assert r.gpu_memory_peak_ratio <= 1.0
    fleet = parse_fleet(ONE_GPU)
    assert report_json([res], fleet, None, {}) == report_json([every], fleet, None, {})
    assert res.sample_gpus_held == every.sample_gpus_held
    assert res.decisions <= every.decisions


# -- thaw sim plan and thaw sim on shared pools ------------------------------------------------


def test_the_planner_sizes_a_shared_pool_and_it_needs_fewer_gpus() -> None:
    """Six models, each a burst every 300 s, one after another (tests/test_sim_plan.py): with a
    warm pool, an unshared pool needs a GPU per model (each sleeper holds its own); shared four
    ways (each engine 0.25 of the GPU) the same traffic needs fewer."""
    slo = "slo: {ttft_base_s: 30, ttft_per_prompt_token_s: 0}\n"
    plain = parse_fleet(FLEET + slo)
    shared = parse_fleet(
        FLEET.replace("count: 8", "count: 8, share: 4", 1).replace(
            "wake_overhead_s: 0.5", "wake_overhead_s: 0.5\n    gpu_memory_utilization_ratio: 0.25"
        )
        + slo
    )
    warm = thaw(stable_s=10.0, grace_s=5.0)
    found = {}
    for name, fleet in (("plain", plain), ("shared", shared)):
        job = PlanJob(staggered(), fleet, warm, 0.95, ("big",))
        with ProbePool(job, 1) as pool:
            (found[name],) = search(["thaw"], 8, 64, 0.95, pool.evaluate)
    assert found["plain"].gpus is not None and found["shared"].gpus is not None
    assert found["plain"].gpus == 6
    assert found["shared"].gpus < found["plain"].gpus
    (row,) = equal_slo_table([found["shared"]], 0.95)
    assert row["models_per_gpu"] > 6 / found["plain"].gpus


def test_thaw_sim_runs_the_shared_example_fleet(tmp_path: Path) -> None:
    write_azure(tmp_path / "t.csv")
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "out"
    argv = ["sim", "--trace", str(tmp_path / "t.csv"), "--models", "12", "--no-progress",
            "--fleet", str(root / "sim/examples/fleet-shared.yaml"),
            "--compare", "kpa", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    for entry in report["policies"].values():
        assert entry["models_served"] == 12
        assert entry["models_per_gpu"] > 1.0
