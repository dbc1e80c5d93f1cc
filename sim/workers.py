"""The planner's probes in a process pool: the simulation is pure CPU, one process a core.

The adapter around :func:`sim.plan.run_probe`: each worker gets the :class:`~sim.plan.PlanJob`
once (its initializer) and runs the probes it is handed; results come back in the batch's
order, so the search, and the plan, are the same whatever the worker count. ``workers=1`` runs
in this process.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from types import TracebackType

from sim.plan import Outcome, PlanJob, Probe, run_probe

_JOB: PlanJob | None = None


def _init(job: PlanJob) -> None:
    """A worker's start: keep the job for its probes (this process's own state), out of the
    garbage collector's scans (it lives as long as the worker)."""
    global _JOB
    _JOB = job
    gc.collect()
    gc.freeze()


def _run(probe: Probe) -> Outcome:
    assert _JOB is not None
    return run_probe(_JOB, probe)


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class ProbePool:
    """``with ProbePool(job, workers) as pool: pool.evaluate(probes)``."""

    def __init__(self, job: PlanJob, workers: int) -> None:
        self.job = job
        self.workers = max(1, workers)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> ProbePool:
        if self.workers > 1:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, initializer=_init, initargs=(self.job,)
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def evaluate(self, probes: Sequence[Probe]) -> list[Outcome]:
        """Run ``probes``; outcomes in their order."""
        if self._pool is None:
            return [run_probe(self.job, p) for p in probes]
        return list(self._pool.map(_run, probes))
