"""The one module that reads the real clock.

Everything that needs time takes a :class:`Clock` (or plain ``now`` seconds) as an argument, so
pure cores stay deterministic and tests step virtual time. Adapters get :class:`SystemClock` from
the wiring code; tests get :class:`ManualClock`.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds (for durations and deadlines) and wall seconds (for timestamps)."""

    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to; for tests and the simulator."""

    def __init__(self, start_s: float = 0.0) -> None:
        self._now_s = start_s

    def monotonic(self) -> float:
        return self._now_s

    def wall(self) -> float:
        return self._now_s

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"seconds = {seconds}, must be >= 0")
        self._now_s += seconds
