"""Debian's ``prometheus`` started by a test on 127.0.0.1: a temp config, a temp TSDB, a free
port, gone when the test ends."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from procs import child, free_port, wait_http_ok

PROMETHEUS = "/usr/bin/prometheus"


def prometheus_binary() -> str:
    """The Prometheus binary (Debian's package), or skip the test saying how to install it."""
    found = shutil.which("prometheus") or (PROMETHEUS if Path(PROMETHEUS).exists() else None)
    if found is None:
        pytest.skip("prometheus is not installed (apt-get install -y prometheus)")
    return found


@contextmanager
def prometheus(
    tmp_path: Path, targets: Sequence[str], scrape_interval_s: float = 1.0
) -> Iterator[str]:
    """Prometheus scraping ``targets`` (``host:port``, each on /metrics) every
    ``scrape_interval_s``; yields its base URL once it is ready."""
    binary = prometheus_binary()
    port = free_port()
    interval = f"{int(scrape_interval_s * 1000)}ms"
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": "engines",
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "static_configs": [{"targets": list(targets)}],
            }
        ],
    }
    work = tmp_path / "prometheus"
    work.mkdir()
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    argv = [
        binary,
        f"--config.file={work / 'prometheus.yml'}",
        f"--storage.tsdb.path={work / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--log.level=warn",
    ]
    base = f"http://127.0.0.1:{port}"
    with child(argv, log_path=work / "prometheus.log") as proc:
        wait_http_ok(f"{base}/-/ready", 60, proc)
        yield base


def wait_scraped(base: str, job: str, timeout_s: float = 30.0) -> None:
    """Wait until every target of ``job`` has been scraped successfully at least once."""
    deadline = time.monotonic() + timeout_s
    query = f"{base}/api/v1/query?query=up%7Bjob%3D%22{job}%22%7D"
    while time.monotonic() < deadline:
        with urllib.request.urlopen(query, timeout=5) as r:
            result = json.load(r)["data"]["result"]
        if result and all(s["value"][1] == "1" for s in result):
            return
        time.sleep(0.2)
    raise TimeoutError(f"Prometheus at {base}: job {job!r} not scraped within {timeout_s} s")
