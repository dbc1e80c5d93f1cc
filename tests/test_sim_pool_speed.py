"""A pool's GPU type sets the engine speed: prefill rate, decode step and KV capacity per pool."""

from __future__ import annotations

import statistics

import pytest

from policy_file.schema import ThawConfig
from sim.core import SimResult
from sim.fleet import FleetError, example_fleet_path, load_fleet, parse_fleet
from sim.runner import run_policies
from sim.traces import poisson

# Two pools alike but for their GPU's speed; the model's perf was measured on `slow`.
FLEET = """
pools:
  - {name: slow, gpu_type: A100, gpu_memory_bytes: 80000000000, count: 4, cost_per_hour_usd: 5,
     host_ram_bytes: 1000000000000, local_disk_bytes_per_s: 2.0e+9, s3_bytes_per_s: 1.0e+9,
     host_to_gpu_bytes_per_s: 2.0e+10}
  - {name: fast, gpu_type: H100, gpu_memory_bytes: 80000000000, count: 4, cost_per_hour_usd: 5,
     host_ram_bytes: 1000000000000, local_disk_bytes_per_s: 2.0e+9, s3_bytes_per_s: 1.0e+9,
     host_to_gpu_bytes_per_s: 2.0e+10,
     speed: {prefill_ratio: 3.0, decode_ratio: 2.0}}
models:
  - name: m8b
    weights_bytes: 16000000000
    kv_bytes_per_token: 131072
    pools: [POOL]
    perf_pool: slow
    engine_start_s: 10
    perf: {prefill_tokens_per_s: 4000, decode_base_s: 0.05, decode_per_seq_s: 0.001,
           kv_capacity_tokens: 40000, max_num_seqs: 4, max_model_len_tokens: 16000}
"""


def run_on(pool: str, policy: str) -> SimResult:
    fleet = parse_fleet(FLEET.replace("[POOL]", f"[{pool}]"))
    cfg = ThawConfig.model_validate(
        {"models": [{"name": "any", "engine": {"kind": "emulator"}, "autoscaling": {}}]}
    )
    reqs = poisson(0.5, 300.0, 3, 2000, 32)
    (res,) = run_policies([policy], reqs, fleet, cfg, 0.0)  # type: ignore[list-item]
    assert len(res.records) == len(reqs)
    return res


@pytest.mark.parametrize("policy", ["always-on", "thaw"])
def test_a_faster_pool_gives_lower_ttft_on_the_same_trace(policy: str) -> None:
    slow, fast = run_on("slow", policy), run_on("fast", policy)
    warm = [(a.ttft_s, b.ttft_s) for a, b in zip(slow.records, fast.records, strict=True)]
    warm = [(a, b) for (a, b), r in zip(warm, slow.records, strict=True) if not r.cold_start]
    assert warm
    assert all(b < a for a, b in warm)
    # Prefill dominates a 2000-token prompt: about 3x faster, decode steps 2x.
    ratio = statistics.median(b / a for a, b in warm)
    assert 0.3 < ratio < 0.45
    assert statistics.median(r.e2e_s for r in fast.records) < statistics.median(
        r.e2e_s for r in slow.records
    )


def test_engine_perf_scales_against_the_perf_pool_and_derives_kv_from_memory() -> None:
    fleet = parse_fleet(
        FLEET.replace("[POOL]", "[slow, fast]").replace(
            "decode_ratio: 2.0}", "decode_ratio: 2.0, memory_utilization_ratio: 0.5}"
        )
    )
    m = fleet.models[0]
    assert fleet.engine_perf(m, "slow") is m.perf  # the reference pool: the file's figures
    fast = fleet.engine_perf(m, "fast")
    assert fast.prefill_tokens_per_s == pytest.approx(12000)
    assert fast.decode_base_s == pytest.approx(0.025)
    assert fast.decode_per_seq_s == pytest.approx(0.0005)
    assert fast.kv_capacity_tokens == (40_000_000_000 - 16_000_000_000) // 131072
    assert fast.max_model_len_tokens == m.perf.max_model_len_tokens
    # perf measured on the fast pool instead: the slow one is slower by the same ratios.
    other = parse_fleet(FLEET.replace("[POOL]", "[slow, fast]").replace("perf_pool: slow", ""))
    on_fast_first = parse_fleet(
        FLEET.replace("[POOL]", "[fast, slow]").replace("perf_pool: slow", "")
    )
    assert other.engine_perf(other.models[0], "fast").prefill_tokens_per_s == pytest.approx(12000)
    slow = on_fast_first.engine_perf(on_fast_first.models[0], "slow")
    assert slow.prefill_tokens_per_s == pytest.approx(4000 / 3)
    assert slow.decode_base_s == pytest.approx(0.1)


def test_pool_speed_errors_name_the_field_and_value() -> None:
    text = FLEET.replace("[POOL]", "[fast]")
    # the one format (kernel.config_errors): path (line N): value V: what is accepted
    bad = r"pools\[1\]\.speed\.prefill_ratio \(line 9\): value -1: must be > 0"
    with pytest.raises(FleetError, match=bad):
        parse_fleet(text.replace("prefill_ratio: 3.0", "prefill_ratio: -1"))
    bad = (
        r"pools\[1\]\.speed\.memory_utilization_ratio \(line 9\): value 1.5: must be <= 1 "
        r"\(accepted: \(0, 1\]\)"
    )
    with pytest.raises(FleetError, match=bad):
        parse_fleet(
            text.replace("decode_ratio: 2.0}", "decode_ratio: 2.0, memory_utilization_ratio: 1.5}")
        )
    with pytest.raises(FleetError, match=r"models\[0\]\.perf_pool = 'h200': must be one of slow"):
        parse_fleet(text.replace("perf_pool: slow", "perf_pool: h200"))
    bad = r"pools\[1\]\.speed\.colour \(line 9\): value 'red': unknown key; accepted keys: pre"
    with pytest.raises(FleetError, match=bad):
        parse_fleet(text.replace("decode_ratio: 2.0}", "decode_ratio: 2.0, colour: red}"))
    with pytest.raises(
        FleetError,
        match=r"models\[0\]\.pools\[0\] = 'fast': KV capacity \d+ tokens = .*"
        r"must be >= perf\.max_model_len_tokens \(16000\)",
    ):
        parse_fleet(
            text.replace("decode_ratio: 2.0}", "decode_ratio: 2.0, memory_utilization_ratio: 0.21}")
        )


def test_example_fleet_runs_each_model_faster_on_the_faster_gpu() -> None:
    fleet = load_fleet(example_fleet_path())
    llama = fleet.model("llama-3.1-8b")
    on_a100, on_h100 = fleet.engine_perf(llama, "a100"), fleet.engine_perf(llama, "h100")
    assert on_h100.prefill_tokens_per_s > on_a100.prefill_tokens_per_s
    assert on_h100.decode_step_s(8) < on_a100.decode_step_s(8)
    qwen = fleet.model("qwen2.5-1.5b")
    assert fleet.engine_perf(qwen, "a100").decode_step_s(1) < fleet.engine_perf(
        qwen, "l4"
    ).decode_step_s(1)
    for m in fleet.models:
        for p in m.pools:
            assert fleet.engine_perf(m, p).kv_capacity_tokens >= m.perf.max_model_len_tokens
