"""The activator's OpenAPI document, fuzzed by schemathesis with every check it has, against
``thaw up`` serving a real emulator replica: no request gives a 500, every status and body is
the one documented (Retry-After included), invalid requests are refused with a 4xx and valid
ones accepted, unsupported methods get a 405 with Allow. Kept short: a bounded number of
examples per operation."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from procs import REPO, child, free_port, thaw_argv, wait_http_ok

MAX_EXAMPLES = 25


def schemathesis_bin() -> str:
    import shutil
    import sys

    here = Path(sys.executable).parent / "schemathesis"
    found = str(here) if here.exists() else shutil.which("schemathesis")
    if found is None:
        pytest.skip("schemathesis is not installed (pip install schemathesis: the dev extra)")
    return found


def test_the_openapi_document_holds_under_schemathesis(tmp_path: Path) -> None:
    st = schemathesis_bin()
    port, model = free_port(), f"api-{uuid.uuid4().hex[:6]}"
    cfg = tmp_path / "thaw.yaml"
    cfg.write_text(
        f"""
listen: {{host: 127.0.0.1, port: {port}}}
tick_s: 0.25
models:
  - name: {model}
    engine:
      kind: emulator
      emulator: {{load_time_s: 0.2, decode_base_s: 0.001, max_num_seqs: 64,
                 max_model_len_tokens: 1000000, kv_capacity_tokens: 100000000}}
    autoscaling: {{min_replicas: 1, max_replicas: 1}}
"""
    )
    base = f"http://127.0.0.1:{port}"
    with child(
        thaw_argv("up", "--config", str(cfg), "--work-dir", str(tmp_path / "w")),
        log_path=tmp_path / "up.log",
    ) as proc:
        wait_http_ok(f"{base}/health", 30, proc)
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"{base}/v1/models", timeout=5) as resp:
                if json.loads(resp.read())["data"][0]["ready_replicas"] == 1:
                    break
            assert time.monotonic() < deadline, "the replica did not come up"
            time.sleep(0.1)
        done = subprocess.run(
            [
                st, "run", f"{base}/openapi.json",
                "--checks", "all",
                "--max-examples", str(MAX_EXAMPLES),
                "--seed", "15",
                "--request-timeout", "30",
                "--no-color",
                "--continue-on-failure",
            ],
            env={
                **os.environ,
                "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
                "PYTHONPATH": os.pathsep.join(
                    [str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
                ),
            },
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,  # its .schemathesis/ cache stays out of the checkout
        )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-12000:]
    assert "Tested: 5" in out and "No issues found" in out, out[-3000:]
