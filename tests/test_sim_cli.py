"""``thaw sim`` as a real process: report.json and plots written, errors name the line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from procs import thaw_argv

from sim.traces import poisson
from thaw.cli import main

ROOT = Path(__file__).resolve().parent.parent


def write_azure(path: Path) -> None:
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for r in poisson(0.5, 300.0, 3, 300, 12):
        whole = int(r.arrival_s)
        frac = f"{r.arrival_s - whole:.7f}"[2:]
        lines.append(
            f"2023-11-16 18:{whole // 60:02d}:{whole % 60:02d}.{frac},"
            f"{r.prompt_tokens},{r.output_tokens}"
        )
    path.write_text("\n".join(lines) + "\n")


def sim(tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    defaults = {
        "--fleet": str(ROOT / "sim/examples/fleet.yaml"),
        "--config": str(ROOT / "sim/examples/policy.yaml"),
    }
    for flag in extra:
        defaults.pop(flag, None)
    argv = thaw_argv(
        "sim",
        "--trace",
        str(tmp / "t.csv"),
        *(x for kv in defaults.items() for x in kv),
        "--no-progress",
        *extra,
    )
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_cli_writes_report_and_plots(tmp_path: Path) -> None:
    write_azure(tmp_path / "t.csv")
    out = tmp_path / "out"
    args = ("--models", "3", "--compare", "kpa,always-on", "--seed", "1")
    done = sim(tmp_path, "--out", str(out), *args)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert set(report["policies"]) == {"thaw", "kpa", "always-on"}
    for entry in report["policies"].values():
        for key in (
            "requests",
            "ttft_p50_s",
            "ttft_p99_s",
            "e2e_p99_s",
            "slo_attainment_ratio",
            "cold_start_requests",
            "cold_starts_by_tier",
            "gpu_hours_by_pool",
            "cost_usd",
        ):
            assert key in entry
    assert report["policies"]["always-on"]["cold_start_requests"] == 0
    assert report["policies"]["thaw"]["cold_start_requests"] > 0
    for name in ("replicas.png", "ttft_cdf.png", "cold_starts.png", "cost_vs_slo.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = tmp_path / "again"
    assert sim(tmp_path, "--out", str(again), *args).returncode == 0
    assert (again / "report.json").read_bytes() == (out / "report.json").read_bytes()


def test_cli_bad_row_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:47.0,12,lots\n"
    )
    done = sim(tmp_path, "--out", str(tmp_path / "out"))
    assert done.returncode == 1
    assert "t.csv:3: GeneratedTokens = 'lots'" in done.stderr
    assert not (tmp_path / "out").exists()


def test_cli_rejects_unknown_baseline(tmp_path: Path) -> None:
    write_azure(tmp_path / "t.csv")
    done = sim(tmp_path, "--out", str(tmp_path / "out"), "--compare", "hpa")
    assert done.returncode == 2
    assert "'hpa'" in done.stderr


def test_help_teaches_with_an_example() -> None:
    done = subprocess.run(thaw_argv("sim", "--help"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "thaw sim --trace" in done.stdout
    assert "always-on" in done.stdout


def test_cli_start_tier_and_warmup(tmp_path: Path) -> None:
    write_azure(tmp_path / "t.csv")
    out = tmp_path / "out"
    done = sim(
        tmp_path, "--out", str(out), "--compare", "kpa", "--start-tier", "remote", "--warmup-s", "0"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["start_tier"] == "remote"
    assert report["meta"]["warmup_s"] == 0.0
    kpa = report["policies"]["kpa"]
    assert kpa["cold_starts_by_tier"]["remote"] > 0
    assert kpa["cold_starts_by_tier"]["local_disk"] == 0
    bad = sim(tmp_path, "--out", str(tmp_path / "bad"), "--warmup-s", "-1")
    assert bad.returncode == 2
    assert "--warmup-s = -1.0: must be >= 0" in bad.stderr


def test_cli_compares_the_predictive_policy(tmp_path: Path) -> None:
    write_azure(tmp_path / "t.csv")
    out = tmp_path / "out"
    done = sim(tmp_path, "--out", str(out), "--models", "2", "--compare", "predictive,kpa")
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert set(report["policies"]) == {"thaw", "predictive", "kpa"}
    assert report["policies"]["predictive"]["requests"] == report["policies"]["thaw"]["requests"]
    assert (
        "predictive"
        in subprocess.run(
            thaw_argv("sim", "--help"), capture_output=True, text=True, timeout=60
        ).stdout
    )


def test_errors_name_the_flag_that_fixes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_azure(tmp_path / "t.csv")
    (tmp_path / "fleet.yaml").write_text("pools: []\nmodels: []\n")
    (tmp_path / "policy.yaml").write_text("models: [{name: x, autoscaling: {max_replicas: -1}}]\n")
    out = str(tmp_path / "out")

    def run(*args: str) -> tuple[int, str]:
        code = main(["sim", "--trace", str(tmp_path / "t.csv"), "--no-progress", *args])
        return code, capsys.readouterr().err

    code, err = run("--out", out, "--fleet", str(tmp_path / "fleet.yaml"))
    assert code == 1
    assert "(the fleet file given by --fleet)" in err
    code, err = run("--out", out, "--config", str(tmp_path / "policy.yaml"))
    assert code == 1
    assert "(the policy file given by --config)" in err
    code, err = run()
    assert code == 2
    assert "--out required" in err
    for flag, value in (("--slo-ttft-s", "0"), ("--models", "-1"), ("--slo-tpot-s", "-2")):
        code, err = run("--out", out, flag, value)
        assert code == 2
        assert f"{flag} = " in err
    code, err = run("--out", out, "--trace", str(tmp_path / "absent.csv"))
    assert code == 1
    assert "check --trace" in err
    assert not (tmp_path / "out").exists()


def test_a_jsonl_trace_needs_no_format_flag(tmp_path: Path) -> None:
    lines = [
        json.dumps(
            {
                "timestamp": int(r.arrival_s * 1000),
                "input_length": r.prompt_tokens,
                "output_length": r.output_tokens,
            }
        )
        for r in poisson(0.5, 120.0, 3, 300, 12)
    ]
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    argv = thaw_argv(
        "sim", "--trace", str(tmp_path / "t.jsonl"), "--no-progress", "--out", str(tmp_path / "o")
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "o" / "report.json").read_text())["meta"]["trace_format"] == (
        "mooncake"
    )


def test_a_warning_block_ends_a_run_with_unserved_or_refused_requests(tmp_path: Path) -> None:
    write_azure(tmp_path / "t.csv")
    fleet = (ROOT / "sim/examples/fleet.yaml").read_text()
    for count in ("count: 16", "count: 32"):
        fleet = fleet.replace(count, "count: 1")
    (tmp_path / "small.yaml").write_text(fleet)
    args = ("--models", "8", "--compare", "always-on", "--fleet", str(tmp_path / "small.yaml"))
    done = sim(tmp_path, "--out", str(tmp_path / "out"), *args)
    assert done.returncode == 0, done.stderr
    block = done.stderr[done.stderr.index("WARNING") :]
    assert "always-on:" in block
    assert "requests never served" in block
    assert "replica starts refused" in block
    assert "thaw sim plan" in block
    fine = sim(tmp_path, "--out", str(tmp_path / "fine"), "--models", "2")
    assert "WARNING" not in fine.stderr
