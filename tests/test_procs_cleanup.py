"""A test run that is SIGTERMed still kills the processes its tests started."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

from procs import PYTHON, REPO, alive, wait_all_gone


def test_sigterm_to_pytest_kills_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            f"""
            import time
            from pathlib import Path
            from procs import child

            def test_hangs():
                with child(["sleep", "3600"]) as p:
                    Path({str(pidfile)!r}).write_text(str(p.pid))
                    time.sleep(3600)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    run = subprocess.Popen(
        [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_inner.py")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists() or not pidfile.read_text():
            assert run.poll() is None, run.stdout.read() if run.stdout else ""
            assert time.monotonic() < deadline, "the inner test never started its child"
            time.sleep(0.1)
        pid = int(pidfile.read_text())
        assert alive(pid)
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)
        assert wait_all_gone([pid], 20.0) == [], "the test's child outlived the SIGTERMed pytest"
    finally:
        try:
            os.killpg(run.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
