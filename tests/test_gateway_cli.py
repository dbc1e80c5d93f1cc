"""`thaw knative gateway`'s flags: the help teaches, bad values exit 2 naming the flag, and
--print-bootstrap is the bootstrap the gateway runs (the one manifests/gateway.yaml ships)."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
from knative_world import write_kubeconfig
from procs import thaw_argv

from knative.gateway_envoy import BootstrapOptions, bootstrap


def thaw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(thaw_argv(*args), capture_output=True, text=True, timeout=60)


def test_help_teaches_the_path_and_the_flags() -> None:
    out = thaw("knative", "gateway", "--help").stdout
    for needle in (
        "json_to_metadata",
        "least",
        "Knative-Serving-Revision",
        "model_not_found",
        "--xds-url",
        "--drain-s",
        "--print-bootstrap",
        "examples:",
    ):
        assert needle in out, needle
    assert "gateway" in thaw("knative", "--help").stdout
    assert "activator" not in thaw("knative", "--help").stdout.split("subcommands:")[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--xds-url", "grpc://x:1"], "--xds-url = 'grpc://x:1', must be http://HOST[:PORT]"),
        (["--port", "0"], "--port = 0, must be in [1, 65535]"),
        (["--max-request-bytes", "10"], "--max-request-bytes = 10, must be >= 1024"),
        (["--drain-s", "-1"], "--drain-s = -1.0, must be >= 0"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(args: list[str], message: str) -> None:
    done = thaw("knative", "gateway", *args)
    assert done.returncode == 2
    assert message in done.stderr


def test_print_bootstrap_is_the_gateways_bootstrap() -> None:
    done = thaw(
        "knative", "gateway", "--print-bootstrap", "--xds-url", "http://ctl.example:18001",
        "--host", "0.0.0.0", "--port", "9000", "--node-id", "gw-7",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == bootstrap(
        BootstrapOptions(
            xds_host="ctl.example",
            xds_port=18001,
            listen_host="0.0.0.0",
            listen_port=9000,
            node_id="gw-7",
        )
    )


def test_the_controller_says_when_it_cannot_serve_the_gateway(tmp_path: Path) -> None:
    """A busy --xds-port is an error naming the flag (exit 2), not a traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9")
        done = thaw(
            "knative", "controller", "--kubeconfig", str(kubeconfig),
            "--xds-host", "127.0.0.1", "--xds-port", str(port),
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"--xds-port {port}: cannot listen" in done.stderr
