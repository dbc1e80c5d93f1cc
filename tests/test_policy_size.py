"""Config files of any size: over the limit refused unread with a clear error, under it parsed
in time linear in the size (one libyaml pass; duplicate and unknown-pool checks by hash), deep
nesting refused as an error rather than a crash. The policy file above all; the fleet file and the
emulator's file get the same limit and parse (:func:`kernel.config_errors.read_yaml`)."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest
from procs import REPO, thaw_argv

from engine.emulator.config import EmulatorConfigError, load_config
from kernel.config_errors import ConfigFileError, read_yaml
from policy_file.load import MAX_POLICY_BYTES, PolicyError, load_policy, parse_policy
from policy_file.watch import PolicyWatcher
from sim.fleet import FleetError, load_fleet, parse_fleet


def pools_policy(n: int) -> str:
    """One model that names every pool, and ``n`` pools: the shape the pool checks scale with."""
    names = ", ".join(f"p{i}" for i in range(n))
    lines = [
        "models:",
        f"  - {{name: m, engine: {{kind: emulator}}, pools: [{names}]}}",
        "cluster:",
        "  pools:",
    ]
    lines += [
        f"    - {{name: p{i}, gpu_type: L4, gpu_memory_bytes: 24000000000, "
        "cost_per_hour_usd: 1.0, max_replicas: 4}"
        for i in range(n)
    ]
    return "\n".join(lines) + "\n"


def test_a_file_over_the_limit_is_refused_unread(tmp_path: Path) -> None:
    """Before: a 10 MB file took `thaw policy check` 205 s and 2 GB."""
    path = tmp_path / "huge.yaml"
    path.write_text("models: []\n" + "#" * (10 * 2**20) + "\n")
    with pytest.raises(PolicyError) as e:
        load_policy(path)
    message = str(e.value)
    assert f"{path}: 1 error" in message
    assert f"at most {MAX_POLICY_BYTES:,} bytes" in message and "10,485,772 bytes" in message
    with pytest.raises(PolicyError, match="at most 1,048,576 bytes"):
        parse_policy(path.read_text())
    done = subprocess.run(
        thaw_argv("policy", "check", str(path)), cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 1 and "at most 1,048,576 bytes" in done.stderr, done.stderr


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    text = "models: " + "[" * 20_000 + "]" * 20_000 + "\n"
    with pytest.raises(PolicyError):
        parse_policy(text)


def test_parsing_is_linear_in_the_file_size() -> None:
    """Four times the pools cost about four times the work (a quadratic check cost sixteen):
    the work is counted as function calls (Python and C), which, unlike a timer, does not move
    with the machine's load."""
    small, large = pools_policy(2000), pools_policy(8000)
    assert len(large) < MAX_POLICY_BYTES

    def calls(text: str) -> int:
        count = 0

        def tally(frame: object, event: str, arg: object) -> None:
            nonlocal count
            if event in ("call", "c_call"):
                count += 1

        sys.setprofile(tally)
        try:
            parse_policy(text)
        finally:
            sys.setprofile(None)
        return count

    ratio = calls(large) / calls(small)
    assert 3 < ratio < 6, ratio


def test_no_garbage_collection_runs_while_the_yaml_tree_is_built() -> None:
    """What made the parse superlinear on a large file: the cyclic collector, triggered by the
    parse's own allocations, traversing a heap that grows with the file (16,000 pools took 9x
    4,000's time; not a call count, so the test above cannot see it). Counted, not timed."""
    text = pools_policy(8000)
    collections: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    # Start with no collection due: one the rest of the suite's allocations had made due could
    # otherwise run at read_yaml's first allocation, before the tree is started.
    gc.collect()
    gc.callbacks.append(seen)
    try:
        read_yaml(text, "policy.yaml")
    finally:
        gc.callbacks.remove(seen)
    # a young-generation pass before the tree is started may happen (it is cheap: young objects
    # only); none that traverses the older generations, which hold the growing tree.
    assert [g for g in collections if g > 0] == []
    assert gc.isenabled()


# -- every config file: the limit and the parse live in the kernel's read_yaml -----------------


def test_the_fleet_file_and_the_emulators_file_get_the_same_limit(tmp_path: Path) -> None:
    big = "pools: []\n" + "#" * (2 * 2**20) + "\n"
    with pytest.raises(FleetError, match="at most 1,048,576 bytes"):
        parse_fleet(big, "fleet.yaml")
    path = tmp_path / "fleet.yaml"
    path.write_text(big)
    with pytest.raises(FleetError) as fleet:
        load_fleet(path)
    assert f"{path}: 1 error" in str(fleet.value) and "2,097,163 bytes" in str(fleet.value)
    path = tmp_path / "emulator.yaml"
    path.write_text("max_num_seqs: 8\n" + "#" * (2 * 2**20) + "\n")
    with pytest.raises(EmulatorConfigError, match="at most 1,048,576 bytes"):
        load_config(path)


def test_deep_nesting_is_an_error_in_every_config_file() -> None:
    with pytest.raises(FleetError):  # libyaml: a syntax error; pure Python: "nests too deeply"
        parse_fleet("pools: " + "[" * 20_000 + "]" * 20_000 + "\n")


def test_syntax_errors_keep_the_pure_python_parsers_words() -> None:
    # libyaml parses; its error is reworded as the pure-Python parser says it
    with pytest.raises(ConfigFileError) as e:
        read_yaml("a: [1, 2\nb: 3\n", "x.yaml")
    assert e.value.errors == (
        "YAML syntax (line 2, column 2): expected ',' or ']', but got ':' (while parsing a flow "
        "sequence that starts on line 1)",
    )


def test_the_watcher_refuses_a_file_over_the_limit_unread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("models:\n  - name: m\n")
    watcher = PolicyWatcher(path, load_policy(path))
    path.write_text("models:\n  - name: n\n" + "#" * (2 * 2**20) + "\n")  # valid, but too large
    with caplog.at_level("WARNING", logger="policy_file.watch"):
        assert watcher.poll() is None
    assert watcher.config.models[0].name == "m"
    (record,) = caplog.records
    assert record.getMessage() == (
        f"policy file rejected: {path}: 2,097,173 bytes, over the 1,048,576-byte limit of a "
        "policy file; keeping the policy in force"
    )
