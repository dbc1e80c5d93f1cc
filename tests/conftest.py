"""Shared pytest configuration.

- The tests directory is importable (``from procs import ...``).
- SIGTERM to pytest (CI's timeout, a supervisor) becomes KeyboardInterrupt, so every ``finally``
  and fixture teardown still runs: :func:`procs.child` kills its process group there, and so no
  engine, emulator or server started by a test outlives a terminated test run.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


signal.signal(signal.SIGTERM, _interrupt)
