"""The emulated GPU's memory ledger (``engine/emulator/gpu_ledger.py``) with real ``thaw emulator``
processes on one ``--gpu-id``: a start that does not fit fails like vLLM's, a wake that does not
fit answers 500 and stays asleep, a sleep gives the memory back, a killed emulator holds nothing,
and the emulators of one GPU must agree on its size."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from procs import child, free_port, thaw_argv, wait_http_ok

from engine.emulator.config import EmulatorConfigError, load_config
from engine.emulator.gpu_ledger import GpuLedger, GpuLedgerError, GpuOutOfMemory

GIB = 2**30
GPU = 80 * GIB


def argv(name: str, port: int, ledger: Path, util: float, memory: int = GPU) -> list[str]:
    return thaw_argv(
        "emulator", "--port", str(port), "--served-model-name", name, "--load-time-s", "0",
        "--sleep-level1-s", "0", "--wake-level1-s", "0", "--gpu-id", "0",
        "--gpu-memory-bytes", str(memory), "--gpu-memory-utilization", str(util),
        "--gpu-ledger-dir", str(ledger),
    )  # fmt: skip


@contextmanager
def emulator(tmp: Path, name: str, util: float) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    with child(argv(name, port, tmp / "ledger", util), log_path=tmp / f"{name}.log") as proc:
        wait_http_ok(f"http://127.0.0.1:{port}/health", 30, proc)
        yield f"http://127.0.0.1:{port}", proc


def held(tmp: Path) -> dict[str, int]:
    ledger = GpuLedger(tmp / "ledger", "0", GPU, name="test", pid=os.getpid())
    return {e.name: e.bytes for e in ledger.entries()}


def start_fails(tmp: Path, name: str, util: float, memory: int = GPU) -> str:
    done = subprocess.run(
        argv(name, free_port(), tmp / "ledger", util, memory),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    return done.stderr


def test_start_sleep_wake_and_stop_keep_the_gpus_account(tmp_path: Path) -> None:
    with ExitStack() as stack:
        a, _ = stack.enter_context(emulator(tmp_path, "a", 0.5))
        stack.enter_context(emulator(tmp_path, "b", 0.5))
        assert held(tmp_path) == {"a": GPU // 2, "b": GPU // 2}
        # A third engine does not fit: its start fails, as vLLM's does on a full GPU.
        err = start_fails(tmp_path, "c", 0.25)
        assert "emulated GPU '0' out of memory: the start of c needs 21474836480 bytes, 0 of" in err
        # Asleep, a gives its memory back; c starts.
        assert httpx.post(f"{a}/sleep", params={"level": 1}).status_code == 200
        assert held(tmp_path) == {"a": 0, "b": GPU // 2}
        c, c_proc = stack.enter_context(emulator(tmp_path, "c", 0.25))
        # Waking a before anything sleeps would overflow the GPU: 500, and a stays asleep.
        resp = httpx.post(f"{a}/wake_up")
        assert resp.status_code == 500
        assert "CUDA out of memory (emulated)" in resp.json()["error"]["message"]
        assert httpx.get(f"{a}/is_sleeping").json() == {"is_sleeping": True}
        assert held(tmp_path) == {"a": 0, "b": GPU // 2, "c": GPU // 4}
        # Sleep before wake: c sleeps, then a wakes.
        assert httpx.post(f"{c}/sleep", params={"level": 2}).status_code == 200
        assert httpx.post(f"{a}/wake_up").status_code == 200
        assert held(tmp_path) == {"a": GPU // 2, "b": GPU // 2, "c": 0}
        # A stopped emulator gives everything back.
        c_proc.send_signal(signal.SIGTERM)
        c_proc.wait(30)
        assert held(tmp_path) == {"a": GPU // 2, "b": GPU // 2}


def test_a_killed_emulator_holds_nothing(tmp_path: Path) -> None:
    with emulator(tmp_path, "a", 0.9) as (_, proc):
        assert held(tmp_path) == {"a": int(GPU * 0.9)}
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while held(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held(tmp_path) == {}
    with emulator(tmp_path, "b", 0.9):
        assert held(tmp_path) == {"b": int(GPU * 0.9)}


def test_emulators_of_one_gpu_agree_on_its_memory(tmp_path: Path) -> None:
    with emulator(tmp_path, "a", 0.1):
        err = start_fails(tmp_path, "b", 0.1, memory=40 * GIB)
        assert f"--gpu-memory-bytes = {40 * GIB}: GPU '0' was declared with {GPU} bytes" in err


def test_the_ledger_refuses_and_keeps_the_old_amount(tmp_path: Path) -> None:
    one = GpuLedger(tmp_path, "g", 100, name="one", pid=os.getpid())
    other = GpuLedger(tmp_path, "g", 100, name="other", pid=os.getppid())
    one.hold(60, "one's start")
    with pytest.raises(GpuOutOfMemory, match=r"other's start needs 50 bytes, 40 of 100 free"):
        other.hold(50, "other's start")
    other.hold(40, "other's start")
    one.hold(0, "sleep")
    assert {e.name: e.bytes for e in one.entries()} == {"one": 0, "other": 40}
    with pytest.raises(GpuLedgerError, match="--gpu-id = 'a b'"):
        GpuLedger(tmp_path, "a b", 100, name="x")


def test_an_emulated_gpu_needs_an_id_and_a_size() -> None:
    with pytest.raises(EmulatorConfigError, match="gpu_id is set but gpu_memory_bytes is not"):
        load_config(None, {"gpu_id": "0"})
    with pytest.raises(EmulatorConfigError, match="gpu_memory_bytes is set but gpu_id is not"):
        load_config(None, {"gpu_memory_bytes": 10})
    config = load_config(
        None, {"gpu_id": "0", "gpu_memory_bytes": 1000, "gpu_memory_utilization": 0.3}
    )
    assert config.gpu_awake_bytes == 300
