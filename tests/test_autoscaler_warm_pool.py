"""The warm-pool planner: wake before start, sleep before stop, budgets and time-to-live."""

from __future__ import annotations

import pytest

from autoscaler.policy import WarmPoolConfig
from autoscaler.warm_pool import Actions, PoolReplica, plan_actions

ON = WarmPoolConfig(
    enabled=True, max_sleeping=2, sleep_ttl_s=100, weights_bytes=10, host_ram_budget_bytes=10
)
OFF = WarmPoolConfig()


def ready(i: int, load: float = 0.0) -> PoolReplica:
    return PoolReplica(f"r{i}", "ready", load=load)


def asleep(i: int, since_s: float = 0.0, level: int = 1) -> PoolReplica:
    return PoolReplica(f"s{i}", "sleeping", sleep_level=level, asleep_since_s=since_s)


@pytest.mark.parametrize(
    ("desired", "replicas", "pool", "now_s", "expected"),
    [
        # scale up: sleepers first (level 1 before level 2), then cold starts
        (3, [ready(1), asleep(1, level=2), asleep(2)], ON, 1, Actions(wake=("s2", "s1"))),
        (4, [ready(1), asleep(1)], ON, 1, Actions(wake=("s1",), start=2)),
        (1, [], ON, 0, Actions(start=1)),
        # scale down with the pool off: stop the least loaded
        (1, [ready(1, 5), ready(2, 1)], OFF, 0, Actions(stop=("r2",))),
        # with the pool on: sleep at level 1 while host RAM allows, then level 2
        (0, [ready(1), ready(2, 1)], ON, 0, Actions(sleep=(("r1", 1), ("r2", 2)))),
        # beyond max_sleeping: stop
        (0, [ready(1), asleep(1), asleep(2, level=2)], ON, 0, Actions(stop=("r1",))),
        # a starting replica is stopped, never put to sleep
        (0, [PoolReplica("n", "starting")], ON, 0, Actions(stop=("n",))),
        # a sleeper past its time-to-live is stopped
        (0, [asleep(1, since_s=0)], ON, 100, Actions(stop=("s1",))),
        (0, [asleep(1, since_s=0)], ON, 99, Actions()),
        # the pool off: leftover sleepers are stopped
        (0, [asleep(1)], OFF, 0, Actions(stop=("s1",))),
        # nothing to do
        (1, [ready(1)], ON, 0, Actions()),
    ],
)
def test_plan(
    desired: int,
    replicas: list[PoolReplica],
    pool: WarmPoolConfig,
    now_s: float,
    expected: Actions,
) -> None:
    assert plan_actions(desired, replicas, pool, now_s) == expected


def test_negative_desired_is_refused() -> None:
    with pytest.raises(ValueError, match="desired = -1"):
        plan_actions(-1, [], ON, 0)


def test_describe() -> None:
    a = Actions(wake=("a",), start=2, sleep=(("b", 1),), stop=("c",))
    assert a.describe() == "wake 1, start 2 cold, sleep 1 (level 1), stop 1"
    assert Actions().empty and Actions().describe() == "nothing"
