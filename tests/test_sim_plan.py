"""The capacity planner: fleets sized holding the file's mix, always-on filled by load, the
bracket-and-bisect search, and `thaw sim plan` end to end (a found fleet reaches the target and
one GPU fewer does not; the same plan whatever the worker count)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from procs import thaw_argv
from test_sim_core import FLEET, thaw_config

from sim.core import PolicyName
from sim.fleet import parse_fleet
from sim.plan import (
    Outcome,
    PlanJob,
    Probe,
    allowed_misses,
    equal_slo_table,
    run_probe,
    search,
)
from sim.sizing import fill_always_on, scaled_fleet, sized_gpus
from sim.traces import Request, bursty, load_trace, spread_zipf
from sim.workers import ProbePool
from thaw.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_scaled_fleets_hold_the_mix_and_grow_one_gpu_at_a_time() -> None:
    fleet = parse_fleet(FLEET.replace("count: 8", "count: 4", 1))  # big 4, small 8
    previous = {"big": 0, "small": 0}
    for n in range(1, 40):
        sized = scaled_fleet(fleet, n)
        counts = {p.name: p.count for p in sized.pools}
        assert sum(counts.values()) == n
        assert all(counts[k] >= previous[k] for k in counts)  # one more never takes one away
        assert abs(counts["small"] - 2 * counts["big"]) <= 2  # the file's 1:2 mix
        previous = counts
    only_big = scaled_fleet(fleet, 10, ["big"])
    assert {p.name: p.count for p in only_big.pools} == {"big": 10, "small": 8}
    assert sized_gpus(only_big, ["big"]) == 10


def test_always_on_takes_one_replica_per_model_then_the_rest_by_load() -> None:
    fleet = scaled_fleet(parse_fleet(FLEET), 5, ["big"])
    spec = fleet.models[0]
    specs = {n: spec for n in ("a", "b", "c")}
    order = fill_always_on({"a": 3.0, "b": 1.0, "c": 0.1}, specs, fleet)
    assert order == ("a", "b", "c", "a", "a")  # a: 3.0/1, then 3.0/2 > b's 1.0
    short = fill_always_on({"a": 3.0, "b": 1.0, "c": 0.1}, specs, scaled_fleet(fleet, 2, ["big"]))
    assert short == ("a", "b")  # too few GPUs: the busiest first


def fake(threshold: dict[str, int], log: list[Probe]) -> object:
    def evaluate(probes: Sequence[Probe]) -> list[Outcome]:
        log.extend(probes)
        return [Outcome(p, 1.0 if p.gpus >= threshold[p.policy] else 0.5, False) for p in probes]

    return evaluate


@pytest.mark.parametrize("start", [1, 7, 16, 100])
def test_the_search_finds_the_boundary_from_any_start(start: int) -> None:
    threshold = {"thaw": 5, "kpa": 13, "always-on": 40}
    log: list[Probe] = []
    policies: list[PolicyName] = ["thaw", "kpa", "always-on"]
    found = search(policies, start, 512, 0.99, fake(threshold, log))  # type: ignore[arg-type]
    for f in found:
        assert f.gpus == threshold[f.policy]
        sizes = {o.probe.gpus for o in f.probes}
        assert f.gpus in sizes
        assert f.gpus - 1 in sizes or f.gpus == 1
        assert len(f.probes) <= 2 * 10
    again: list[Probe] = []
    search(policies, start, 512, 0.99, fake(threshold, again))  # type: ignore[arg-type]
    assert again == log


def test_a_target_not_reached_within_max_gpus_is_reported_with_how_close_it_came() -> None:
    log: list[Probe] = []
    (f,) = search(["kpa"], 4, 50, 0.99, fake({"kpa": 1000}, log))  # type: ignore[arg-type]
    assert f.gpus is None
    assert max(p.gpus for p in log) == 50
    assert log[-1] == Probe("kpa", 50, stop_early=False)  # the largest size, to the end
    assert f.outcome is not None and f.outcome.probe == log[-1]
    (row,) = equal_slo_table([f], 0.99)
    assert row["reached"] is False and row["max_gpus_tried"] == 50


def sparse_models() -> tuple[Request, ...]:
    """6 models, bursts: scale to zero frees GPUs between a model's bursts."""
    return spread_zipf(bursty(3.0, 20.0, 150.0, 900.0, 7, 200, 32), 6, 0.5, 7)


@pytest.mark.slow
def test_plan_end_to_end_found_fleets_reach_the_target_and_one_gpu_fewer_does_not(
    tmp_path: Path,
) -> None:
    reqs = sparse_models()
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(FLEET + "slo: {ttft_base_s: 30, ttft_per_prompt_token_s: 0}\n")
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for r in reqs:
        whole = int(r.arrival_s)
        frac = f"{r.arrival_s - whole:.7f}"[2:]
        lines.append(
            f"2023-11-16 {18 + whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}.{frac},"
            f"{r.prompt_tokens},{r.output_tokens}"
        )
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "models: [{name: any, engine: {kind: emulator}, autoscaling: "
        "{max_replicas: 2, stable_window_s: 10, scale_to_zero_grace_s: 5}}]\n"
    )

    def plan(out: str, workers: int) -> subprocess.CompletedProcess[str]:
        argv = thaw_argv(
            "sim",
            "plan",
            "--trace",
            str(tmp_path / "t.csv"),
            "--models",
            "6",
            "--zipf",
            "0.5",
            "--seed",
            "7",
            "--fleet",
            str(fleet_file),
            "--config",
            str(policy),
            "--pools",
            "big",
            "--slo-target",
            "0.95",
            "--warmup-s",
            "0",
            "--workers",
            str(workers),
            "--no-progress",
            "--out",
            str(tmp_path / out),
        )
        return subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT)

    one = plan("one", 1)
    assert one.returncode == 0, one.stderr
    assert one.stdout.splitlines()[0].startswith("Equal SLO")
    assert one.stdout.splitlines()[1].split()[:2] == ["policy", "GPUs"]
    text = (tmp_path / "one" / "report.json").read_text()
    report = json.loads(text)
    assert next(iter(report)) == "equal_slo"  # the first table
    rows = {r["policy"]: r for r in report["equal_slo"]}
    assert set(rows) == {"thaw", "kpa", "always-on"}
    assert (tmp_path / "one" / "plan.png").exists()
    two = plan("two", 2)
    assert two.returncode == 0, two.stderr
    assert (tmp_path / "two" / "report.json").read_text() == text  # whatever the worker count

    # Check the claim independently: each found fleet reaches 0.95, one GPU fewer does not.
    fleet = parse_fleet(fleet_file.read_text())
    job = PlanJob(
        spread_zipf(load_trace(tmp_path / "t.csv"), 6, 0.5, 7),  # what the CLI read
        fleet,
        thaw_config(max_replicas=2, stable_window_s=10.0, scale_to_zero_grace_s=5.0),
        0.95,
        ("big",),
    )
    for name, row in rows.items():
        assert row["reached"], row
        n = row["gpus"]
        at = run_probe(job, Probe(name, n))  # type: ignore[arg-type]
        assert at.reaches(0.95) and at.attainment_ratio == row["slo_attainment_ratio"]
        fewer = run_probe(job, Probe(name, n - 1))  # type: ignore[arg-type]
        assert not fewer.reaches(0.95)


def staggered() -> tuple[Request, ...]:
    """6 models, each a 20 s burst every 300 s, one after another: at most two busy at once."""
    out = []
    for i in range(6):
        for r in bursty(
            3.0, 20.0, 280.0, 1500.0, seed=i, mean_prompt_tokens=200, mean_output_tokens=32
        ):
            out.append(Request(r.arrival_s + 50.0 * i, r.prompt_tokens, r.output_tokens, f"m{i}"))
    return tuple(sorted(out, key=lambda r: r.arrival_s))


def test_scale_to_zero_shares_gpus_at_equal_slo() -> None:
    fleet = parse_fleet(FLEET + "slo: {ttft_base_s: 30, ttft_per_prompt_token_s: 0}\n")
    job = PlanJob(
        staggered(),
        fleet,
        thaw_config(max_replicas=2, stable_window_s=10.0, scale_to_zero_grace_s=5.0),
        0.95,
        ("big",),
    )
    with ProbePool(job, 1) as pool:
        found = {f.policy: f for f in search(["thaw", "always-on"], 8, 64, 0.95, pool.evaluate)}
    thaw, always = found["thaw"], found["always-on"]
    assert thaw.gpus is not None and always.gpus is not None
    assert always.gpus == 6  # one replica a model
    assert thaw.gpus < always.gpus  # models idle at different times share GPUs
    rows = {r["policy"]: r for r in equal_slo_table(list(found.values()), 0.95)}
    assert rows["thaw"]["gpu_hours_vs_always_on"] < 0.5
    assert rows["always-on"]["gpu_hours_vs_always_on"] == 1.0
    assert allowed_misses(len(job.requests), 0.95) == int(len(job.requests) * 0.05)


def test_size_for_slo_is_the_same_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for r in bursty(2.0, 20.0, 100.0, 400.0, 3, 200, 16):
        whole = int(r.arrival_s)
        lines.append(
            f"2023-11-16 18:{whole // 60:02d}:{whole % 60:02d}.{f'{r.arrival_s - whole:.7f}'[2:]},"
            f"{r.prompt_tokens},{r.output_tokens}"
        )
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "fleet.yaml").write_text(FLEET)
    common = ["--trace", str(tmp_path / "t.csv"), "--fleet", str(tmp_path / "fleet.yaml"),
              "--models", "3", "--warmup-s", "0", "--pools", "big", "--workers", "1",
              "--no-progress"]  # fmt: skip
    assert main(["sim", *common, "--size-for-slo", "0.9", "--compare", "kpa",
                 "--out", str(tmp_path / "a")]) == 0  # fmt: skip
    first = capsys.readouterr().out
    assert main(["sim", "plan", *common, "--slo-target", "0.9", "--policies", "thaw,kpa",
                 "--out", str(tmp_path / "b")]) == 0  # fmt: skip
    assert capsys.readouterr().out.splitlines()[:5] == first.splitlines()[:5]
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    b = json.loads((tmp_path / "b" / "report.json").read_text())
    assert a["equal_slo"] == b["equal_slo"]
    assert [r["policy"] for r in a["equal_slo"]] == ["thaw", "kpa", "always-on"]
    assert main(["sim", "plan", *common, "--slo-target", "1.5", "--out", "x"]) == 2
    assert "--slo-target = 1.5: must be in (0, 1]" in capsys.readouterr().err
    assert main(["sim", "plan", *common, "--pools", "h200", "--out", "x"]) == 2
    assert "--pools 'h200': must be pools of the fleet file: big, small" in (
        capsys.readouterr().err
    )
