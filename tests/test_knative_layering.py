"""Render and the history arithmetic are pure: importing them (in a fresh interpreter) loads no
HTTP, Kubernetes or process library; the history reader loads prometheus-api-client only when a
:class:`PrometheusHistory` is built."""

from __future__ import annotations

import json
import subprocess

import pytest
from procs import PYTHON, REPO

IO_LIBS = (
    "aiohttp",
    "kubernetes",
    "prometheus_api_client",
    "requests",
    "urllib3",
    "httpx",
    "boto3",
    "subprocess",
    "uvicorn",
    "fastapi",
    "kernel.clock",
)


def loaded_after(code: str) -> set[str]:
    probe = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [PYTHON, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("module", ["knative.render", "knative.history"])
def test_pure_modules_load_no_io_library(module: str) -> None:
    loaded = loaded_after(f"import {module}")
    assert module in loaded
    assert sorted(m for m in IO_LIBS if m in loaded) == []


def test_the_probe_sees_an_adapter_load_its_libraries() -> None:
    loaded = loaded_after(
        "from knative.history import PrometheusHistory\nPrometheusHistory('http://127.0.0.1:9')"
    )
    assert "prometheus_api_client" in loaded and "requests" in loaded
    assert "aiohttp" in loaded_after("import events.sink")
