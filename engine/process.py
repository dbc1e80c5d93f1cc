"""The engine launcher: one inference engine (real vLLM or ``thaw emulator``) as a child process.

It owns how an engine is started, declared ready and stopped; the CLI (``thaw engine``), the
local actuator and the tests share it. What to run is an :class:`EngineSpec` (argv, environment,
address, start-up timeout, log file), built by :func:`vllm_spec` or :func:`emulator_spec`.
:class:`EngineProcess` runs a spec:

- ``start()`` spawns the engine under :mod:`engine.supervisor`, as the leader of a new
  process group (``start_new_session=True``, ``PR_SET_PDEATHSIG`` set in ``preexec_fn``), then
  polls ``GET /health`` until it answers 200. If the engine exits first, or
  ``startup_timeout_s`` passes, the group is killed and :class:`EngineStartError` carries the
  last lines of the engine's log.
- ``stop(grace_s)`` sends SIGTERM to the whole group (vLLM's API server, its EngineCore and
  workers; all but the supervisor, which would pass it on twice), waits ``grace_s``, then
  SIGKILLs the group. Idempotent.
- No orphans: if this process dies, even by SIGKILL, the supervisor notices (a pipe only we hold
  reaches end-of-file; ``PR_SET_PDEATHSIG``) and stops the group; see the supervisor's docstring
  for why vLLM needs one.

The process's stdout and stderr go to ``spec.log_path`` (appended) or nowhere. Call ``start()``
from a thread that outlives the engine (normally the main thread): ``PR_SET_PDEATHSIG`` fires when
the *thread* that spawned the supervisor ends, and the supervisor then stops the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from engine.supervisor import PR_SET_PDEATHSIG, group_pids, prctl_setter
from engine.vllm_site import SITE_DIR
from engine.vllm_site.thaw_engine_guard import CREDENTIAL_FILE_ENV, VLLM_MIDDLEWARE
from kernel.clock import Clock, SystemClock
from kernel.errors import ThawError

#: Environment vLLM CPU gets unless the caller overrides it: 1 GiB of KV cache (the default, 4 GiB,
#: is wasted on a tiny model), the dev endpoints (/sleep, /wake_up, /is_sleeping), no usage stats.
VLLM_DEFAULT_ENV: Mapping[str, str] = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_SERVER_DEV_MODE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
#: The tiny model's context; vLLM would otherwise size its KV cache for the config's maximum.
VLLM_DEFAULT_MAX_MODEL_LEN = 2048
HEALTH_POLL_S = 0.25
HEALTH_REQUEST_TIMEOUT_S = 2.0
#: After SIGKILL, how long to wait for the group leader to be reaped before giving up.
KILL_WAIT_S = 5.0
#: What the supervisor waits between SIGTERM and SIGKILL when it stops the engine on its own
#: (our death, or a signal sent to it alone).
SUPERVISOR_GRACE_S = 10.0
LOG_TAIL_LINES = 40


class EngineStartError(ThawError):
    """The engine exited, or did not answer ``/health`` with 200, before its start-up deadline."""


@dataclass(frozen=True)
class EngineSpec:
    """What to run and where it will listen.

    ``env`` is added to (and overrides) this process's environment. ``host`` and ``port`` must
    match what ``argv`` makes the engine listen on; ``base_url`` is derived from them.
    """

    argv: tuple[str, ...]
    env: Mapping[str, str]
    host: str
    port: int
    startup_timeout_s: float
    log_path: Path | None

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` to reach the engine (a wildcard address is reached on loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


def _has_flag(args: Sequence[str], flag: str) -> bool:
    """Whether ``args`` sets ``flag`` (``--a-b``, ``--a-b=V``, or vLLM's ``--a_b`` spelling)."""
    spellings = (flag, flag.replace("-", "_").replace("__", "--", 1))
    return any(a in spellings or a.startswith(tuple(s + "=" for s in spellings)) for a in args)


def vllm_spec(
    model: str,
    *,
    port: int,
    served_model_name: str | None = None,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    startup_timeout_s: float = 300.0,
    log_path: Path | None = None,
    python: str = sys.executable,
    credential_file: str | None = None,
) -> EngineSpec:
    """vLLM's OpenAI server on ``model`` (a directory or a Hugging Face id).

    ``--enforce-eager`` always (no compilation: a faster start on CPU); ``--max-model-len 2048``
    unless ``extra_args`` sets it; :data:`VLLM_DEFAULT_ENV` under ``env``, and
    :mod:`engine.vllm_site` first on ``PYTHONPATH`` (without it, vLLM CPU 0.32 dies of SIGILL
    on AMX machines when the first prompt is a token or two long). ``credential_file``: Thaw's
    engine guard (:mod:`engine.vllm_site.thaw_engine_guard`) is loaded with ``--middleware`` and
    only a request carrying the credential in that file may sleep, wake or reconfigure vLLM.
    """
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    if served_model_name is not None:
        argv += ["--served-model-name", served_model_name]
    argv += ["--enforce-eager", "--host", host, "--port", str(port)]
    if not _has_flag(extra_args, "--max-model-len"):
        argv += ["--max-model-len", str(VLLM_DEFAULT_MAX_MODEL_LEN)]
    if credential_file is not None and VLLM_MIDDLEWARE not in extra_args:
        argv += ["--middleware", VLLM_MIDDLEWARE]
    argv += list(extra_args)
    # Our sitecustomize first on the path: it lets vLLM's processes use AMX (see its docstring);
    # the engine guard is imported from the same directory.
    python_path = os.pathsep.join(p for p in (str(SITE_DIR), os.environ.get("PYTHONPATH")) if p)
    guard_env = {CREDENTIAL_FILE_ENV: credential_file} if credential_file is not None else {}
    return EngineSpec(
        argv=tuple(argv),
        env={**VLLM_DEFAULT_ENV, "PYTHONPATH": python_path, **guard_env, **(env or {})},
        host=host,
        port=port,
        startup_timeout_s=startup_timeout_s,
        log_path=log_path,
    )


def emulator_spec(
    *,
    port: int,
    served_model_name: str,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    startup_timeout_s: float = 60.0,
    log_path: Path | None = None,
    python: str = sys.executable,
    credential_file: str | None = None,
) -> EngineSpec:
    """``thaw emulator`` answering to ``served_model_name``; ``extra_args`` are its flags.
    ``credential_file``: Thaw's engine guard is on, as with :func:`vllm_spec`."""
    argv = [python, "-m", "thaw.cli", "emulator", "--host", host, "--port", str(port)]
    argv += ["--served-model-name", served_model_name, *extra_args]
    guard_env = {CREDENTIAL_FILE_ENV: credential_file} if credential_file is not None else {}
    return EngineSpec(
        argv=tuple(argv),
        env={**guard_env, **(env or {})},
        host=host,
        port=port,
        startup_timeout_s=startup_timeout_s,
        log_path=log_path,
    )


def process_rss_bytes(pid: int) -> int:
    """Resident memory of one process (``VmRSS``), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class EngineProcess:
    """One engine child process group; see the module docstring. Use once: start, then stop."""

    def __init__(
        self,
        spec: EngineSpec,
        *,
        clock: Clock | None = None,
        supervisor_grace_s: float = SUPERVISOR_GRACE_S,
    ) -> None:
        """``supervisor_grace_s``: SIGTERM to SIGKILL when the supervisor stops the engine on
        its own, after this process died."""
        self.spec = spec
        self._supervisor_grace_s = supervisor_grace_s
        self._clock: Clock = clock or SystemClock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._notify_fd: int | None = None
        self._log: IO[bytes] | None = None
        self._log_offset = 0
        self._stop_lock = asyncio.Lock()
        self.started_at_s: float | None = None
        self.ready_at_s: float | None = None

    # -- views -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.spec.base_url

    @property
    def pid(self) -> int | None:
        """The process group's leader (the supervisor); also the group id. None before start."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The engine's exit status once it has exited (negative: killed by that signal)."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def startup_s(self) -> float | None:
        """Seconds from ``start()`` to the first 200 from ``/health``; None until then."""
        if self.started_at_s is None or self.ready_at_s is None:
            return None
        return self.ready_at_s - self.started_at_s

    def group_pids(self) -> list[int]:
        """Live processes of the engine's group (supervisor, engine, its children)."""
        return group_pids(self._proc.pid) if self._proc is not None else []

    def rss_bytes(self) -> int:
        """Sum of the resident memory of the group's processes (shared pages counted twice)."""
        return sum(process_rss_bytes(pid) for pid in self.group_pids())

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the engine and wait until ``/health`` answers 200.

        Raises :class:`EngineStartError` (with the log's last lines) if the engine exits first
        or ``startup_timeout_s`` passes; the group is stopped either way. If the caller is
        cancelled meanwhile, the group is killed before the cancellation propagates.
        """
        if self._proc is not None:
            raise RuntimeError("EngineProcess.start() was already called; use a new instance")
        self._spawn()
        try:
            await self._wait_healthy()
        except EngineStartError:
            raise
        except BaseException:
            self._signal_group(signal.SIGKILL)
            raise

    def _spawn(self) -> None:
        spec = self.spec
        if spec.log_path is not None:
            spec.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(spec.log_path, "ab")  # closed in stop()
            self._log_offset = self._log.tell()
        read_fd, write_fd = os.pipe()
        argv = [
            sys.executable,
            "-m",
            "engine.supervisor",
            "--notify-fd",
            str(read_fd),
            "--grace-s",
            str(self._supervisor_grace_s),
            "--",
            *spec.argv,
        ]
        self.started_at_s = self._clock.monotonic()
        try:
            self._proc = subprocess.Popen(
                argv,
                env={**os.environ, **spec.env},
                stdin=subprocess.DEVNULL,
                stdout=self._log if self._log is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(read_fd,),
                # SIGTERM, not SIGKILL: the supervisor must live to stop the engine's group.
                preexec_fn=prctl_setter(PR_SET_PDEATHSIG, signal.SIGTERM),
            )
        except BaseException:
            os.close(write_fd)
            self._close_log()
            raise
        finally:
            os.close(read_fd)
        self._notify_fd = write_fd

    async def _wait_healthy(self) -> None:
        import aiohttp

        proc = self._proc
        assert proc is not None and self.started_at_s is not None
        url = f"{self.base_url}/health"
        deadline_s = self.started_at_s + self.spec.startup_timeout_s
        last_error = "no answer yet"
        async with aiohttp.ClientSession() as session:
            while True:
                code = proc.poll()
                if code is not None:
                    await self.stop(grace_s=0.0)
                    raise EngineStartError(
                        f"the engine exited with status {code} before {url} answered 200"
                        + self._log_tail()
                    )
                remaining_s = deadline_s - self._clock.monotonic()
                if remaining_s <= 0:
                    await self.stop(grace_s=2.0)
                    raise EngineStartError(
                        f"{url} did not answer 200 within startup_timeout_s = "
                        f"{self.spec.startup_timeout_s:g} (last: {last_error}); the engine was "
                        "killed" + self._log_tail()
                    )
                timeout = aiohttp.ClientTimeout(total=min(HEALTH_REQUEST_TIMEOUT_S, remaining_s))
                try:
                    async with session.get(url, timeout=timeout) as resp:
                        if resp.status == 200:
                            self.ready_at_s = self._clock.monotonic()
                            return
                        last_error = f"status {resp.status}"
                except (aiohttp.ClientError, TimeoutError) as e:
                    last_error = f"{type(e).__name__}: {e}"
                await asyncio.sleep(min(HEALTH_POLL_S, max(remaining_s, 0.0)))

    async def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM the engine's group, wait ``grace_s``, SIGKILL it; return the exit status.

        None if never started. Safe to call more than once, and concurrently.
        """
        async with self._stop_lock:
            proc = self._proc
            if proc is None:
                return None
            if proc.poll() is None:
                self._terminate_engine()
                if not await self._wait_exit(grace_s):
                    self._signal_group(signal.SIGKILL)
                    await self._wait_exit(KILL_WAIT_S)
            if group_pids(proc.pid):  # normally empty: the supervisor reaps before exiting
                self._signal_group(signal.SIGKILL)
            if self._notify_fd is not None:
                os.close(self._notify_fd)
                self._notify_fd = None
            self._close_log()
            return proc.poll()

    async def _wait_exit(self, timeout_s: float) -> bool:
        assert self._proc is not None
        deadline_s = self._clock.monotonic() + timeout_s
        while self._proc.poll() is None:
            if self._clock.monotonic() >= deadline_s:
                return False
            await asyncio.sleep(0.05)
        return True

    def _terminate_engine(self) -> None:
        """SIGTERM every process of the group except the supervisor: it would pass the signal
        on to the engine a second time, and a second SIGTERM that lands while a Python engine is
        finalizing kills it (default handlers are back) instead of letting it exit 0. Anything
        forked after this scan is stopped by the supervisor once the engine has exited."""
        assert self._proc is not None
        others = [pid for pid in group_pids(self._proc.pid) if pid != self._proc.pid]
        # Right after spawn the supervisor may not have started the engine yet: tell it instead.
        for pid in others or [self._proc.pid]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)

    def _signal_group(self, sig: int) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self) -> str:
        path = self.spec.log_path
        if path is None:
            return " (no log: the spec has no log_path)"
        try:
            with open(path, "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode("utf-8", errors="replace")
        except OSError as e:
            return f" (log {path} unreadable: {e})"
        lines = text.rstrip().splitlines()[-LOG_TAIL_LINES:]
        if not lines:
            return f"; its log {path} is empty"
        return f"; last {len(lines)} lines of {path}:\n" + "\n".join(lines)

    # -- context manager ---------------------------------------------------------------------

    async def __aenter__(self) -> EngineProcess:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exit {self.returncode}"
        return f"EngineProcess({self.base_url}, pid {self.pid}, {state})"
