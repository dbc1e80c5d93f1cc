"""The engine launcher: spec building, waiting for /health, start failures with logs, stopping,
and no orphans (after stop, after the engine dies abruptly, after the launcher dies by SIGKILL).

Real processes on 127.0.0.1: ``tests/healthy_child.py`` stands in for vLLM (an HTTP server with
child processes that outlive it, as vLLM's EngineCore does), so these tests take seconds. The
real vLLM group is covered in ``test_vllm_e2e.py``. Which processes are alive is read from
``/proc`` here, independently of the launcher's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import textwrap
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from procs import PYTHON, REPO, alive, free_port, kill_all, wait_all_gone

from engine.process import (
    VLLM_DEFAULT_ENV,
    EngineProcess,
    EngineSpec,
    EngineStartError,
    emulator_spec,
    vllm_spec,
)

HELPER = str(Path(__file__).resolve().parent / "healthy_child.py")


def helper_spec(
    port: int,
    *args: str,
    log_path: Path | None = None,
    startup_timeout_s: float = 20.0,
) -> EngineSpec:
    return EngineSpec(
        argv=(PYTHON, HELPER, "--port", str(port), *args),
        env={},
        host="127.0.0.1",
        port=port,
        startup_timeout_s=startup_timeout_s,
        log_path=log_path,
    )


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def engine_pids(base_url: str) -> list[int]:
    """The stand-in engine's own pid and its children's, as it reports them."""
    body = get_json(f"{base_url}/pids")
    children = body["children"]
    assert isinstance(children, list)
    return [int(body["pid"]), *(int(c) for c in children)]  # type: ignore[call-overload]


@pytest.fixture
async def engines() -> AsyncIterator[list[EngineProcess]]:
    """Engines a test starts; whatever a test leaves running is killed with its whole group."""
    started: list[EngineProcess] = []
    yield started
    for engine in started:
        pids = engine.group_pids()
        await engine.stop(grace_s=1.0)
        kill_all(pids)


# -- specs -----------------------------------------------------------------------------------


def test_vllm_spec_argv_and_env() -> None:
    spec = vllm_spec("/m/tiny", port=8123, served_model_name="tiny", python="/py")
    assert spec.argv == (
        "/py", "-m", "vllm.entrypoints.openai.api_server", "--model", "/m/tiny",
        "--served-model-name", "tiny", "--enforce-eager", "--host", "127.0.0.1",
        "--port", "8123", "--max-model-len", "2048",
    )  # fmt: skip
    assert spec.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert spec.env["VLLM_SERVER_DEV_MODE"] == "1"
    assert spec.base_url == "http://127.0.0.1:8123"
    assert spec.startup_timeout_s == 300.0


@pytest.mark.parametrize(
    "extra",
    [["--max-model-len", "512"], ["--max-model-len=512"], ["--max_model_len", "512"]],
)
def test_vllm_spec_keeps_a_given_max_model_len(extra: list[str]) -> None:
    spec = vllm_spec("m", port=1, extra_args=extra)
    assert "2048" not in spec.argv
    assert spec.argv[-len(extra) :] == tuple(extra)


def test_vllm_spec_env_overrides_defaults_and_omits_unset_name() -> None:
    spec = vllm_spec("m", port=1, env={"VLLM_CPU_KVCACHE_SPACE": "4", "X": "y"})
    assert {k: v for k, v in spec.env.items() if k != "PYTHONPATH"} == {
        **VLLM_DEFAULT_ENV,
        "VLLM_CPU_KVCACHE_SPACE": "4",
        "X": "y",
    }
    assert "--served-model-name" not in spec.argv


def test_vllm_spec_puts_the_amx_sitecustomize_first_on_the_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    spec = vllm_spec("m", port=1)
    first, rest = spec.env["PYTHONPATH"].split(os.pathsep, 1)
    assert rest == "/elsewhere"
    assert (Path(first) / "sitecustomize.py").is_file()
    # A Python started with that path holds the AMX permission (where the CPU has AMX).
    probe = (
        "import ctypes, platform\n"
        "if platform.machine() == 'x86_64':\n"
        "    v = ctypes.c_uint64(); ctypes.CDLL(None).syscall(158, 0x1022, ctypes.byref(v))\n"
        "    print(bool(v.value & (1 << 18)))\n"
        "import sitecustomize; print(sitecustomize.__file__)\n"
    )
    out = subprocess.run(
        [PYTHON, "-c", probe],
        env={**os.environ, "PYTHONPATH": spec.env["PYTHONPATH"]},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[-1] == str(Path(first) / "sitecustomize.py")
    if " amx_tile" in Path("/proc/cpuinfo").read_text():
        assert out[0] == "True"


def test_emulator_spec_argv() -> None:
    spec = emulator_spec(
        port=9000, served_model_name="tiny", extra_args=["--load-time-s", "1"], python="/py"
    )
    assert spec.argv == (
        "/py", "-m", "thaw.cli", "emulator", "--host", "127.0.0.1", "--port", "9000",
        "--served-model-name", "tiny", "--load-time-s", "1",
    )  # fmt: skip
    assert spec.startup_timeout_s == 60.0


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:5"),
        ("0.0.0.0", "http://127.0.0.1:5"),
        ("::1", "http://[::1]:5"),
    ],
)
def test_base_url(host: str, url: str) -> None:
    assert vllm_spec("m", port=5, host=host).base_url == url


# -- start -----------------------------------------------------------------------------------


async def test_start_waits_for_health_200(engines: list[EngineProcess]) -> None:
    engine = EngineProcess(helper_spec(free_port(), "--ready-after-s", "0.8"))
    engines.append(engine)
    await engine.start()
    assert engine.running
    assert engine.pid is not None
    # /health answered 503 for 0.8 s: start() must not have returned before it turned 200.
    assert engine.startup_s is not None and engine.startup_s >= 0.8
    assert get_json(f"{engine.base_url}/health") == {"ready": True}


async def test_start_failure_reports_the_last_log_lines(
    engines: list[EngineProcess], tmp_path: Path
) -> None:
    log = tmp_path / "engine.log"
    log.write_text("an older run's line\n")
    spec = helper_spec(
        free_port(),
        "--ready-after-s", "1000", "--log-lines", "60", "--exit-after-s", "0.3",
        "--exit-code", "3", "--children", "2",
        log_path=log,
    )  # fmt: skip
    engine = EngineProcess(spec)
    engines.append(engine)
    with pytest.raises(EngineStartError) as info:
        await engine.start()
    message = str(info.value)
    assert "status 3" in message
    assert "exiting with 3 as asked" in message
    assert "healthy_child log line 59" in message
    assert "healthy_child log line 19\n" not in message  # only the last 40 lines
    assert "an older run's line" not in message  # the log is appended to; the tail is this run's
    assert not engine.running
    assert engine.returncode == 3
    assert engine.group_pids() == []
    assert log.read_text().startswith("an older run's line\n")


async def test_start_timeout_kills_the_group(engines: list[EngineProcess]) -> None:
    engine = EngineProcess(
        helper_spec(
            free_port(), "--ready-after-s", "1000", "--children", "2", startup_timeout_s=1.0
        )
    )
    engines.append(engine)
    with pytest.raises(EngineStartError, match="did not answer 200 within startup_timeout_s = 1"):
        await engine.start()
    assert not engine.running
    assert wait_all_gone(engine.group_pids(), 5.0) == []


async def test_start_of_a_missing_program_fails_with_its_error(
    engines: list[EngineProcess], tmp_path: Path
) -> None:
    port = free_port()
    spec = EngineSpec(
        argv=("/nonexistent/engine", "--port", str(port)),
        env={},
        host="127.0.0.1",
        port=port,
        startup_timeout_s=20.0,
        log_path=tmp_path / "engine.log",
    )
    engine = EngineProcess(spec)
    engines.append(engine)
    with pytest.raises(EngineStartError, match="/nonexistent/engine"):
        await engine.start()


async def test_cancelled_start_kills_the_group(engines: list[EngineProcess]) -> None:
    engine = EngineProcess(helper_spec(free_port(), "--ready-after-s", "1000", "--children", "1"))
    engines.append(engine)
    task = asyncio.ensure_future(engine.start())
    await asyncio.sleep(1.0)
    pids = engine.group_pids()
    assert len(pids) == 3  # supervisor, stand-in engine, its child
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert wait_all_gone(pids, 5.0) == []


async def test_start_twice_is_refused(engines: list[EngineProcess]) -> None:
    engine = EngineProcess(helper_spec(free_port()))
    engines.append(engine)
    await engine.start()
    with pytest.raises(RuntimeError, match="already called"):
        await engine.start()


# -- stop ------------------------------------------------------------------------------------


async def test_stop_terminates_the_whole_group_and_is_idempotent(
    engines: list[EngineProcess],
) -> None:
    engine = EngineProcess(helper_spec(free_port(), "--children", "2"))
    engines.append(engine)
    await engine.start()
    pids = [engine.pid or 0, *engine_pids(engine.base_url)]
    assert all(alive(p) for p in pids)
    assert await engine.stop(grace_s=5.0) == 0  # SIGTERM: the stand-in exits 0
    assert not engine.running
    assert wait_all_gone(pids, 2.0) == []
    assert await engine.stop() == 0


async def test_stop_escalates_to_sigkill(engines: list[EngineProcess]) -> None:
    engine = EngineProcess(helper_spec(free_port(), "--children", "2", "--ignore-sigterm"))
    engines.append(engine)
    await engine.start()
    pids = engine_pids(engine.base_url)
    code = await engine.stop(grace_s=0.5)
    assert code == -signal.SIGKILL
    assert wait_all_gone(pids, 2.0) == []


async def test_concurrent_stops_agree(engines: list[EngineProcess]) -> None:
    engine = EngineProcess(helper_spec(free_port(), "--children", "1"))
    engines.append(engine)
    await engine.start()
    codes = await asyncio.gather(engine.stop(2.0), engine.stop(2.0), engine.stop(2.0))
    assert list(codes) == [0, 0, 0]


async def test_stop_before_start_returns_none() -> None:
    assert await EngineProcess(helper_spec(free_port())).stop() is None


async def test_context_manager_stops_the_group() -> None:
    async with EngineProcess(helper_spec(free_port(), "--children", "1")) as engine:
        pids = engine_pids(engine.base_url)
        assert engine.running
    assert not engine.running
    assert wait_all_gone(pids, 2.0) == []


# -- no orphans ------------------------------------------------------------------------------


async def test_engine_killed_alone_leaves_no_orphans(engines: list[EngineProcess]) -> None:
    """vLLM's API server dying by SIGKILL leaves its EngineCore behind; the supervisor must not."""
    engine = EngineProcess(helper_spec(free_port(), "--children", "2"))
    engines.append(engine)
    await engine.start()
    server_pid, *children = engine_pids(engine.base_url)
    os.kill(server_pid, signal.SIGKILL)
    assert wait_all_gone([server_pid, *children, engine.pid or 0], 10.0) == []
    assert engine.returncode == -signal.SIGKILL  # the supervisor reports the engine's death


DRIVER = textwrap.dedent(
    """
    import asyncio, json, sys
    from engine.process import EngineProcess, EngineSpec

    async def main() -> None:
        spec = EngineSpec(argv=tuple(sys.argv[1:]), env={}, host="127.0.0.1",
                          port=int(sys.argv[sys.argv.index("--port") + 1]),
                          startup_timeout_s=20.0, log_path=None)
        engine = EngineProcess(spec, supervisor_grace_s=1.0)
        await engine.start()
        print(json.dumps({"supervisor": engine.pid, "url": engine.base_url}), flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def start_driver(engine_argv: Sequence[str]) -> tuple[subprocess.Popen[str], dict[str, object]]:
    driver = subprocess.Popen(
        [PYTHON, "-c", DRIVER, *engine_argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert driver.stdout is not None
    line = driver.stdout.readline()
    if not line:
        driver.kill()
        pytest.fail(f"the driver exited with {driver.wait()} before starting the engine")
    return driver, json.loads(line)


@pytest.mark.parametrize("ignore_sigterm", [False, True])
def test_launcher_killed_by_sigkill_leaves_no_orphans(ignore_sigterm: bool) -> None:
    """SIGKILL the process holding an EngineProcess: its engine group goes within seconds."""
    port = free_port()
    argv = [PYTHON, HELPER, "--port", str(port), "--children", "2"]
    if ignore_sigterm:  # the supervisor must escalate to SIGKILL on its own
        argv.append("--ignore-sigterm")
    driver, info = start_driver(argv)
    pids = [int(info["supervisor"]), *engine_pids(str(info["url"]))]  # type: ignore[call-overload]
    try:
        assert all(alive(p) for p in pids)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=5)
        # SIGTERM at once; SIGKILL after the supervisor's 1 s grace if SIGTERM is ignored.
        assert wait_all_gone(pids, 6.0) == []
    finally:
        kill_all([driver.pid, *pids])
        driver.wait(timeout=5)
        if driver.stdout is not None:
            driver.stdout.close()


def test_helper_children_do_outlive_it_without_the_supervisor() -> None:
    """The control: without the launcher, killing the stand-in engine orphans its children (the
    vLLM behaviour the supervisor exists for), so the tests above can fail."""
    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, HELPER, "--port", str(port), "--children", "1"], start_new_session=True
    )
    children: list[int] = []
    try:
        from procs import wait_http_ok

        wait_http_ok(f"http://127.0.0.1:{port}/health", 10.0, proc)
        _, *children = engine_pids(f"http://127.0.0.1:{port}")
        proc.kill()
        proc.wait(timeout=5)
        time.sleep(0.5)
        assert all(alive(c) for c in children)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        kill_all(children)
        proc.wait(timeout=5)


async def test_stop_right_after_spawn_is_prompt(engines: list[EngineProcess]) -> None:
    """stop() before the supervisor has started the engine must not wait out the whole grace."""
    engine = EngineProcess(helper_spec(free_port(), "--ready-after-s", "1000"))
    engines.append(engine)
    task = asyncio.ensure_future(engine.start())
    await asyncio.sleep(0)  # spawned; the supervisor is still importing
    code = await engine.stop(grace_s=30.0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # SIGTERM reached the supervisor (before or after its handler was in place), not the
    # SIGKILL that ends the grace period.
    assert code in (0, -signal.SIGTERM)
    assert not engine.running


def test_thaw_engine_help_teaches() -> None:
    from procs import thaw_argv

    out = subprocess.run(thaw_argv("engine", "--help"), cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for words in ("--model", "--port", "VLLM_CPU_KVCACHE_SPACE=1", "examples:", "-- VLLM_ARGS"):
        assert words in out.stdout


async def test_start_works_while_the_launcher_holds_over_1024_descriptors(
    engines: list[EngineProcess],
) -> None:
    """A front door with thousands of client sockets still starts engines: the supervisor's
    pipe then has a descriptor above 1,024, which select() refused (ValueError: the supervisor
    died and /health never came) and poll() takes."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard open-files limit ({hard}) is below 1,200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held: list[int] = []
    try:
        while not held or held[-1] < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        engine = EngineProcess(helper_spec(free_port()))
        engines.append(engine)
        await engine.start()  # before: the supervisor died of select() and /health never came
        assert engine.running
        pids = [engine.pid or 0, *engine_pids(engine.base_url)]
        assert await engine.stop(grace_s=5.0) == 0
        assert wait_all_gone(pids, 2.0) == []
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
