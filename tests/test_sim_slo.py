"""The size-aware SLO: a TTFT target of a base plus a budget per prompt token (and an optional time
per output token), per model class in the fleet file; long-prompt traces can meet the defaults on
the example fleet, a flat 1 s target cannot."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from procs import thaw_argv
from test_sim_core import FLEET

from sim.core import RequestRecord, SimResult
from sim.fleet import FleetError, Slo, parse_fleet
from sim.report import SloOverride, slo_met, slos, summarize

ROOT = Path(__file__).resolve().parent.parent


def result(*records: RequestRecord) -> SimResult:
    return SimResult(
        policy="thaw",
        records=records,
        rejected_requests=0,
        unserved_requests=0,
        capacity_refusals=0,
        cold_starts_by_tier={},
        gpu_seconds_by_pool={"big": 0.0, "small": 0.0},
        end_s=10.0,
        sample_times_s=(),
        sample_replicas=(),
        sample_sleeping=(),
        sample_demand=(),
        window_s=10.0,
        model_classes={"a": "m8b"},
    )


def test_the_ttft_target_grows_with_the_prompt() -> None:
    slo = Slo()
    assert slo.ttft_target_s(0) == pytest.approx(1.0)
    assert slo.ttft_target_s(15_000) == pytest.approx(4.0)
    fleet = parse_fleet(FLEET)
    short_slow = RequestRecord("a", 0.0, 1.5, 2.0, False, 100, 10)
    long_slow = RequestRecord("a", 1.0, 1.5, 2.0, False, 10_000, 10)
    res = result(short_slow, long_slow)
    assert slo_met(res, slos(res, fleet)) == [False, True]
    flat = SloOverride(ttft_base_s=2.0, ttft_per_prompt_token_s=0.0)
    assert slo_met(res, slos(res, fleet, flat)) == [True, True]
    s = summarize(res, fleet)
    assert (s["slo_met_requests"], s["slo_missed_requests"]) == (1, 1)
    assert s["slo_attainment_ratio"] == 0.5


def test_tpot_is_part_of_the_slo_when_set() -> None:
    fleet = parse_fleet(FLEET)
    fast = RequestRecord("a", 0.0, 0.5, 0.5 + 9 * 0.02, False, 100, 10)
    slow = RequestRecord("a", 0.0, 0.5, 0.5 + 9 * 0.2, False, 100, 10)
    res = result(fast, slow)
    assert slo_met(res, slos(res, fleet)) == [True, True]
    assert slo_met(res, slos(res, fleet, SloOverride(tpot_s=0.05))) == [True, False]


def test_each_model_class_has_its_own_slo_else_the_fleets() -> None:
    text = FLEET.replace(
        "    wake_overhead_s: 0.5\n",
        "    wake_overhead_s: 0.5\n    slo: {ttft_base_s: 3.0, ttft_per_prompt_token_s: 0}\n",
    )
    fleet = parse_fleet(text + "slo: {ttft_base_s: 0.5}\n")
    assert fleet.slo_of("m8b") == Slo(ttft_base_s=3.0, ttft_per_prompt_token_s=0.0)
    assert fleet.slo.ttft_base_s == 0.5
    plain = parse_fleet(FLEET + "slo: {ttft_base_s: 0.5, tpot_s: 0.1}\n")
    assert plain.slo_of("m8b") == Slo(ttft_base_s=0.5, tpot_s=0.1)
    with pytest.raises(FleetError, match=r"slo\.ttft_base_s \(line 19\): value -1: must be > 0"):
        parse_fleet(FLEET + "slo: {ttft_base_s: -1}\n")
    unknown = r"slo\.ttft_p99 \(line 19\): value 1: unknown key; accepted keys: ttft_base_s,"
    with pytest.raises(FleetError, match=unknown):
        parse_fleet(FLEET + "slo: {ttft_p99: 1}\n")


def mooncake_like(path: Path, n: int = 300, seed: int = 2) -> None:
    """A Mooncake-shaped JSONL trace: ms timestamps, 12k-15k-token prompts, short outputs."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(2000.0, size=n))  # one request every 2 s
    prompts = rng.integers(12_000, 15_001, size=n)
    outputs = rng.integers(20, 400, size=n)
    lines = [
        json.dumps({"timestamp": int(a), "input_length": int(p), "output_length": int(o)})
        for a, p, o in zip(t, prompts, outputs, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_a_long_prompt_trace_meets_the_default_slo_on_the_example_fleet(tmp_path: Path) -> None:
    trace = tmp_path / "mooncake.jsonl"
    mooncake_like(trace)

    def run(out: str, *extra: str) -> dict[str, dict[str, object]]:
        argv = thaw_argv(
            "sim",
            "--trace",
            str(trace),
            "--models",
            "4",
            "--compare",
            "always-on",
            "--warmup-s",
            "120",
            "--no-progress",
            "--out",
            str(tmp_path / out),
            *extra,
        )
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        report = json.loads((tmp_path / out / "report.json").read_text())
        assert report["meta"]["trace_format"] == "mooncake"  # detected: no --trace-format
        return report["policies"]  # type: ignore[no-any-return]

    sized = run("sized")
    for entry in sized.values():  # the default: 1 s + 0.2 ms a prompt token
        assert float(entry["slo_attainment_ratio"]) >= 0.95  # type: ignore[arg-type]
    flat = run("flat", "--slo-ttft-s", "1", "--slo-ttft-per-token-s", "0")
    for entry in flat.values():
        assert float(entry["slo_attainment_ratio"]) < 0.5  # type: ignore[arg-type]
