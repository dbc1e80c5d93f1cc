"""A shortened run of ``bench/soak.py`` (60 s instead of 300): bursts from zero, steady load, a
policy reload, a killed replica, back to zero, a ramp; nothing lost, RSS flat."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from procs import REPO


@pytest.mark.slow
def test_a_short_soak_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--duration-s", "60", "--burst", "300",
         "--json", str(out)],
        capture_output=True, text=True, timeout=400, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    figures = json.loads(out.read_text())
    assert figures["lost"] == 0 and figures["answered"] > 1000, figures
    assert figures["policy_reloaded"] and figures["replica_exits_seen"] >= 1, figures
    assert figures["at_zero_before_second_burst"], figures
    assert figures["rss_end_vs_after_burst"] < 1.5, figures
