"""The warm pool: turn the decider's replica count into actions — wake, start, sleep, stop.

Pure: replicas and policy in, :class:`Actions` out. Scaling up wakes sleepers before it starts
cold replicas (level-1 sleepers first: their weights are already in host RAM). Scaling down puts
surplus ready replicas to sleep within the host-RAM budget for level-1 sleepers, falls back to
level 2, then to stopping; replicas still starting are stopped (they hold no warm state yet).
Sleepers past their time-to-live or beyond ``max_sleeping`` are stopped, oldest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autoscaler.policy import WarmPoolConfig
from kernel.vocab import LIVE_STATES, ReplicaState


@dataclass(frozen=True)
class PoolReplica:
    """One replica as the warm pool sees it."""

    replica_id: str
    state: ReplicaState
    load: float = 0.0  # running + waiting at the engine (ready replicas)
    sleep_level: int | None = None
    asleep_since_s: float | None = None
    started_at_s: float = 0.0


@dataclass(frozen=True)
class Actions:
    """What to do to one model's replicas now."""

    wake: tuple[str, ...] = ()
    start: int = 0
    sleep: tuple[tuple[str, int], ...] = ()  # (replica id, level)
    stop: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.wake or self.start or self.sleep or self.stop)

    def describe(self) -> str:
        parts = []
        if self.wake:
            parts.append(f"wake {len(self.wake)}")
        if self.start:
            parts.append(f"start {self.start} cold")
        if self.sleep:
            levels = ",".join(str(level) for _, level in self.sleep)
            parts.append(f"sleep {len(self.sleep)} (level {levels})")
        if self.stop:
            parts.append(f"stop {len(self.stop)}")
        return ", ".join(parts) or "nothing"


def plan_actions(
    desired: int,
    replicas: Sequence[PoolReplica],
    pool: WarmPoolConfig,
    now_s: float,
) -> Actions:
    """Actions that bring live (starting + ready) replicas to ``desired``."""
    if desired < 0:
        raise ValueError(f"desired = {desired}, must be >= 0")
    live = [r for r in replicas if r.state in LIVE_STATES]
    sleepers = sorted(
        (r for r in replicas if r.state == "sleeping"),
        key=lambda r: (r.sleep_level or 1, -(r.asleep_since_s or 0.0)),
    )
    wake: list[str] = []
    start = 0
    sleep: list[tuple[str, int]] = []
    stop: list[str] = []

    if desired > len(live):
        need = desired - len(live)
        wake = [r.replica_id for r in sleepers[:need]]
        start = need - len(wake)
        sleepers = sleepers[len(wake) :]
    elif desired < len(live):
        surplus = len(live) - desired
        starting = sorted((r for r in live if r.state == "starting"), key=lambda r: -r.started_at_s)
        ready = sorted((r for r in live if r.state == "ready"), key=lambda r: r.load)
        level1 = sum(1 for r in sleepers if (r.sleep_level or 1) == 1)
        kept = len(sleepers)
        for r in [*starting, *ready][:surplus]:
            if r.state == "starting" or not pool.enabled or kept >= pool.max_sleeping:
                stop.append(r.replica_id)
                continue
            fits_l1 = (level1 + 1) * pool.weights_bytes <= pool.host_ram_budget_bytes
            if pool.sleep_level == 1 and fits_l1:
                sleep.append((r.replica_id, 1))
                level1 += 1
            else:
                sleep.append((r.replica_id, 2))
            kept += 1

    # Sleepers past their TTL, or more than allowed, are stopped (oldest first).
    keep_budget = max(0, pool.max_sleeping - len(sleep)) if pool.enabled else 0
    by_age = sorted(sleepers, key=lambda r: r.asleep_since_s or 0.0, reverse=True)
    for i, r in enumerate(by_age):
        expired = r.asleep_since_s is not None and now_s - r.asleep_since_s >= pool.sleep_ttl_s
        if expired or i >= keep_budget:
            stop.append(r.replica_id)
    return Actions(wake=tuple(wake), start=start, sleep=tuple(sleep), stop=tuple(stop))
