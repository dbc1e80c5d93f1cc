"""Thaw's engine guard (``engine/vllm_site/thaw_engine_guard.py``) on a real ``thaw emulator``
process: every control path refused through the public port without Thaw's credential and
accepted with it, readiness 503 while asleep and 200 after the wake, a rotated credential taking
effect, a missing one refusing everything; which paths are control paths; and (marked ``vllm``)
that every endpoint vLLM 0.32 adds in dev mode is one of them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

import httpx
import pytest
from procs import REPO, child, free_port, thaw_argv, wait_http_ok

from engine.vllm_site.thaw_engine_guard import (
    CONTROL_PATHS,
    CREDENTIAL_FILE_ENV,
    CREDENTIAL_HEADER,
    READY_PATH,
    is_control_path,
    normalize_path,
)

MODEL = "guarded"
CREDENTIAL = "s3cr3t-credential"
THAW = {CREDENTIAL_HEADER: CREDENTIAL}

#: (method, path, body) of control requests the emulator answers, and what each answers with
#: the credential.
CONTROL = [
    ("GET", "/is_sleeping", None, 200),
    ("POST", "/collective_rpc", {"method": "reload_weights"}, 200),
    ("POST", "/reset_prefix_cache", None, 200),
    ("POST", "/sleep?level=1", None, 200),
    ("POST", "/wake_up", None, 200),
]
#: Control paths the emulator has no route for: refused without the credential all the same.
UNROUTED = [
    "/server_info",
    "/pause",
    "/update_weights",
    "/start_profile",
    "/v1/load_lora_adapter",
    "/fault_tolerance/apply",
    "/inference/v1/abort_requests",
]
#: Other spellings of control paths that routing would take to them (or redirect to them).
SPELLINGS = ["//sleep", "/sleep/", "/wake_up/", "///collective_rpc"]


@contextmanager
def guarded_emulator(tmp_path: Path, credential: str | None) -> Iterator[tuple[str, Path]]:
    port = free_port()
    cred = tmp_path / "credential"
    if credential is not None:
        cred.write_text(credential + "\n")
    argv = thaw_argv(
        "emulator", "--port", str(port), "--served-model-name", MODEL, "--load-time-s", "0",
        "--sleep-level1-s", "0.05", "--wake-level1-s", "0.05",
    )  # fmt: skip
    env = {CREDENTIAL_FILE_ENV: str(cred)}
    base = f"http://127.0.0.1:{port}"
    with child(argv, env=env, log_path=tmp_path / "emulator.log") as proc:
        wait_http_ok(f"{base}/health", 30, proc)
        yield base, cred


def test_control_requests_are_refused_on_the_public_port_and_accepted_with_the_credential(
    tmp_path: Path,
) -> None:
    with guarded_emulator(tmp_path, CREDENTIAL) as (base, _):
        with httpx.Client(base_url=base, timeout=10) as http:
            for method, path, body, _ in CONTROL:
                for headers in ({}, {CREDENTIAL_HEADER: "guess"}, {"authorization": CREDENTIAL}):
                    resp = http.request(method, path, json=body, headers=headers)
                    assert resp.status_code == 403, (path, headers)
                    error = resp.json()["error"]
                    assert error["code"] == 403 and error["type"] == "PermissionDenied"
                    assert f"{CREDENTIAL_HEADER} header" in error["message"]
            for path in UNROUTED:  # full URLs: httpx would read "//sleep" as a host
                assert http.post(base + path).status_code == 403, path
                assert http.post(base + path, headers=THAW).status_code in (404, 405), path
            for path in SPELLINGS:
                assert http.post(base + path).status_code == 403, path
            assert http.get(f"{READY_PATH}").status_code == 200  # nothing was put to sleep
            # The public surface is untouched.
            assert http.get("/health").status_code == 200
            assert http.get("/metrics").status_code == 200
            assert http.get("/v1/models").json()["data"][0]["id"] == MODEL
            done = http.post(
                "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}
            )
            assert done.status_code == 200
            for method, path, body, status in CONTROL:
                resp = http.request(method, path, json=body, headers=THAW)
                assert resp.status_code == status, (path, resp.text)


def test_readiness_fails_while_asleep_and_passes_after_the_wake(tmp_path: Path) -> None:
    with guarded_emulator(tmp_path, CREDENTIAL) as (base, _):
        with httpx.Client(base_url=base, timeout=10) as http:
            assert (http.get(READY_PATH).status_code, http.get(READY_PATH).json()) == (
                200,
                {"ready": True},
            )
            assert http.post("/sleep", params={"level": 2}, headers=THAW).status_code == 200
            ready = http.get(READY_PATH)
            assert (ready.status_code, ready.json()) == (503, {"ready": False, "reason": "asleep"})
            assert http.head(READY_PATH).status_code == 503
            assert http.get("/health").status_code == 200  # alive, only not ready
            assert http.post("/wake_up", headers=THAW).status_code == 200
            assert http.get(READY_PATH).status_code == 200


def test_a_rotated_credential_takes_effect_without_a_restart(tmp_path: Path) -> None:
    with guarded_emulator(tmp_path, CREDENTIAL) as (base, cred):
        cred.write_text("rotated")
        with httpx.Client(base_url=base, timeout=10) as http:
            assert http.get("/is_sleeping", headers=THAW).status_code == 403
            assert (
                http.get("/is_sleeping", headers={CREDENTIAL_HEADER: "rotated"}).status_code == 200
            )


def test_without_a_readable_credential_every_control_request_is_refused(tmp_path: Path) -> None:
    with guarded_emulator(tmp_path, None) as (base, _):
        with httpx.Client(base_url=base, timeout=10) as http:
            assert http.get("/is_sleeping", headers=THAW).status_code == 403
            assert http.get("/is_sleeping", headers={CREDENTIAL_HEADER: ""}).status_code == 403
            assert http.get(READY_PATH).status_code == 200
    assert (
        "every control request (/sleep, /wake_up, ...) will be refused"
        in (tmp_path / "emulator.log").read_text()
    )


@pytest.mark.parametrize(
    ("path", "control"),
    [
        ("/sleep", True),
        ("/sleep/", True),
        ("//wake_up", True),
        ("/collective_rpc", True),
        ("/fault_tolerance/status", True),
        ("/v1/load_lora_adapter", True),
        ("/v1/completions", False),
        ("/v1/chat/completions", False),
        ("/health", False),
        ("/metrics", False),
        ("/sleeping", False),
        (READY_PATH, False),
    ],
)
def test_control_paths(path: str, control: bool) -> None:
    assert is_control_path(path) is control


def test_normalize_path() -> None:
    assert normalize_path("//a///b/") == "/a/b"
    assert normalize_path("/") == "/"
    assert normalize_path("") == "/"


_ROUTES = """
import json, os, sys
if sys.argv[1] == "dev":
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"
from vllm.entrypoints.launchers.app import build_app
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", "unused"])
print(json.dumps(sorted({r.path for r in build_app(args, ("generate",)).routes})))
"""


@pytest.mark.vllm
@pytest.mark.skipif(find_spec("vllm") is None, reason="vLLM is not installed (setup.sh)")
def test_every_endpoint_vllm_adds_in_dev_mode_is_a_control_path() -> None:
    """vLLM's own app (no engine started), built as its API server builds it, with and without
    VLLM_SERVER_DEV_MODE: whatever dev mode adds must be refused without Thaw's credential (a
    newer vLLM with a new dev endpoint fails here until the guard knows it)."""

    def routes(mode: str) -> set[str]:
        done = subprocess.run(
            [sys.executable, "-c", _ROUTES, mode],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return set(json.loads(done.stdout.strip().splitlines()[-1]))

    plain, dev = routes("plain"), routes("dev")
    added = dev - plain
    assert {"/sleep", "/wake_up", "/collective_rpc", "/reset_prefix_cache"} <= added
    assert sorted(p for p in added if not is_control_path(p)) == []
    # and the guard's own list names no path vLLM serves to clients
    assert not CONTROL_PATHS & {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health"}
