"""The engine supervisor: a small process between the launcher and an engine that never leaves
orphans.

Why it exists: vLLM's API server forks an ``EngineCore`` process, which forks a worker. If the API
server dies by SIGKILL, both stay alive (about 2 GB on CPU) — nothing in vLLM watches for it. A
``PR_SET_PDEATHSIG`` on the API server does not help the grandchildren. So
:class:`engine.process.EngineProcess` starts this supervisor as the leader of a new
process group, and the supervisor runs the engine inside that group:

- it makes itself a child subreaper, so the engine's orphaned descendants are re-parented to it
  and it can reap them;
- it learns that the launcher died from two independent signs: end-of-file on a pipe whose write
  end only the launcher holds (``--notify-fd``), and ``PR_SET_PDEATHSIG`` = SIGTERM;
- on SIGTERM/SIGINT/SIGHUP sent to it, or the launcher's death, it passes SIGTERM to the engine
  (once), waits ``--grace-s``, then SIGKILLs the whole group, itself included. (The launcher's
  own ``stop()`` signals the engine's processes directly and leaves the supervisor alone, so
  that no engine process gets SIGTERM twice.);
- when the engine exits, it stops whatever the engine left behind in the group, reaps it, and exits
  with the engine's status (the same exit code, or the same signal re-raised).

The engine itself gets ``PR_SET_PDEATHSIG`` = SIGKILL, in case the supervisor is killed alone.
Stdlib (and :mod:`kernel.clock`) only, so that it starts in milliseconds:
``python -m engine.supervisor --notify-fd N --grace-s S -- ENGINE ARGV...``.
Linux only (``prctl``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from kernel.clock import SystemClock

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
POLL_S = 0.1
#: After the engine exits, how long what it left behind gets between SIGTERM and SIGKILL.
LEFTOVER_GRACE_S = 5.0


def prctl_setter(option: int, value: int) -> Callable[[], None]:
    """A no-argument callable doing ``prctl(option, value)``; libc is resolved now, in the parent,
    so that the callable is safe to run between fork and exec (``preexec_fn``)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl

    def call() -> None:
        if prctl(option, value, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")

    return call


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``, read from ``/proc``."""
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def _reap(engine_pid: int) -> int | None:
    """Collect every exited child (the engine's re-parented orphans included); return the
    engine's exit status (negative: the signal) if it was among them."""
    engine_status: int | None = None
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return engine_status
        if pid == 0:
            return engine_status
        if pid == engine_pid:
            engine_status = os.waitstatus_to_exitcode(wait_status)


def _kill_others(sig: int) -> int:
    """Send ``sig`` to every other live member of our group; return how many there were."""
    me = os.getpid()
    others = [p for p in group_pids(os.getpgrp()) if p != me]
    for pid in others:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return len(others)


def _exit_like(status: int) -> None:
    """Exit with the engine's status: its exit code, or die by the signal that killed it."""
    sys.stdout.flush()
    if status < 0:
        with contextlib.suppress(OSError, ValueError):  # SIGKILL's handler cannot be set
            signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        time.sleep(1.0)
    os._exit(status if status >= 0 else 128 - status)


def supervise(argv: Sequence[str], notify_fd: int | None, grace_s: float) -> None:
    """Run ``argv`` as described in the module docstring; does not return."""
    clock = SystemClock()
    prctl_setter(PR_SET_CHILD_SUBREAPER, 1)()
    stop_requested: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        stop_requested.append(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    prctl_setter(PR_SET_PDEATHSIG, signal.SIGTERM)()

    engine = subprocess.Popen(list(argv), preexec_fn=prctl_setter(PR_SET_PDEATHSIG, signal.SIGKILL))
    status: int | None = None
    kill_at: float | None = None
    # poll(), not select(): select() refuses a descriptor above FD_SETSIZE (1024), and the
    # launcher's pipe is numbered above that whenever the launcher holds over 1,024 sockets.
    watcher = select.poll()
    if notify_fd is not None:
        watcher.register(notify_fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while status is None:
        if notify_fd is not None:
            if watcher.poll(POLL_S * 1000) and not os.read(notify_fd, 64):  # EOF: launcher gone
                watcher.unregister(notify_fd)
                os.close(notify_fd)
                notify_fd = None
                stop_requested.append("launcher gone")
        else:
            time.sleep(POLL_S)
        if stop_requested and kill_at is None:
            print(
                f"engine supervisor: stopping the engine ({stop_requested[0]}); "
                f"SIGKILL in {grace_s:g} s",
                file=sys.stderr,
                flush=True,
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(engine.pid, signal.SIGTERM)
            kill_at = clock.monotonic() + grace_s
        if kill_at is not None and clock.monotonic() >= kill_at:
            os.killpg(os.getpgrp(), signal.SIGKILL)  # the whole group, this process included
        status = _reap(engine.pid)
    engine.returncode = status  # reaped here, not by Popen
    # What the engine left behind (vLLM's EngineCore and workers if it died abruptly).
    if _kill_others(signal.SIGTERM):
        leftover_deadline = clock.monotonic() + LEFTOVER_GRACE_S
        while clock.monotonic() < leftover_deadline and len(group_pids(os.getpgrp())) > 1:
            _reap(engine.pid)
            time.sleep(POLL_S / 5)
        _kill_others(signal.SIGKILL)
        while len(group_pids(os.getpgrp())) > 1:  # SIGKILL cannot be ignored: soon empty
            _reap(engine.pid)
            time.sleep(POLL_S / 10)
    _reap(engine.pid)
    _exit_like(status)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m engine.supervisor",
        description="Run an engine command so that it and everything it starts stop together.",
    )
    parser.add_argument("--notify-fd", type=int, default=None, help="EOF here: launcher gone")
    parser.add_argument("--grace-s", type=float, default=10.0, help="SIGTERM to SIGKILL, s")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the engine's argv")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("the engine's argv is missing (after --)")
    supervise(command, args.notify_fd, args.grace_s)


if __name__ == "__main__":
    main()
