"""The simulator calls the real decider and warm-pool planner, not copies. (What it may import is
the import-linter contracts' job: pyproject.toml, run by `lint-imports` in CI.)"""

from __future__ import annotations


def test_the_simulator_calls_the_real_decider_and_warm_pool_planner() -> None:
    import autoscaler.decider
    import autoscaler.warm_pool
    import sim.core

    assert getattr(sim.core, "decide") is autoscaler.decider.decide  # noqa: B009
    assert getattr(sim.core, "plan_actions") is autoscaler.warm_pool.plan_actions  # noqa: B009
