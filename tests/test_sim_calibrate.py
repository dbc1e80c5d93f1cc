"""``thaw sim calibrate`` as a real process against a real ``thaw emulator``: the fleet entry it
writes is valid and carries the emulator's engine model back."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from procs import thaw_argv

from sim.fleet import parse_fleet

POOL = """\
pools:
  - {name: cpu, gpu_type: none, gpu_memory_bytes: 1000000000, count: 1, cost_per_hour_usd: 0,
     host_ram_bytes: 1000000000, local_disk_bytes_per_s: 1.0e+9, s3_bytes_per_s: 1.0e+8,
     host_to_gpu_bytes_per_s: 1.0e+10}
models:
"""


def test_calibrate_the_emulator_writes_a_fleet_entry(tmp_path: Path) -> None:
    out = tmp_path / "local.yaml"
    argv = thaw_argv(
        "sim",
        "calibrate",
        "--repeats",
        "1",
        "--out",
        str(out),
        "--emulator-arg=--load-time-s=1.5",
        "--emulator-arg=--decode-base-s=0.04",
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    (entry,) = yaml.safe_load(text)
    assert entry["engine_start_s"] >= 1.5  # /health answers 503 until the load time has passed
    assert entry["perf"]["decode_base_s"] >= 0.03
    assert entry["wake_overhead_s"] >= 0
    # It pastes into a fleet file once the user adds the model's size and pools.
    lines = "\n".join("  " + line for line in text.splitlines())
    lines += "\n    weights_bytes: 1000\n    kv_bytes_per_token: 10\n    pools: [cpu]\n"
    fleet = parse_fleet(POOL + lines)
    assert fleet.models[0].engine_start_s == entry["engine_start_s"]


def test_sim_without_trace_says_what_is_missing(tmp_path: Path) -> None:
    done = subprocess.run(thaw_argv("sim"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--trace and --out required" in done.stderr
    done = subprocess.run(
        thaw_argv("sim", "calibrate", "--help"), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "thaw sim calibrate --engine vllm" in done.stdout
