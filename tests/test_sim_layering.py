"""The simulator imports the autoscaler's pure core (decider, policy, warm pool), never its
adapters, and does no I/O below its thin loaders; it calls the real decider, not a copy."""

from __future__ import annotations

import ast
from pathlib import Path

from procs import REPO

#: Modules of the simulator (the loaders in sim.traces / sim.fleet read files with pathlib only).
SIM = ("sim.core", "sim.runner", "sim.traces", "sim.fleet", "engine.perf_model", "sim.predictive")
AUTOSCALER_CORE = {
    "autoscaler.decider",
    "autoscaler.policy",
    "autoscaler.warm_pool",
    "autoscaler.forecast",
    "autoscaler.placement",
}
FORBIDDEN_LIBS = {
    "aiohttp",
    "asyncio",
    "fastapi",
    "uvicorn",
    "httpx",
    "boto3",
    "kubernetes",
    "prometheus_client",
    "subprocess",
    "socket",
    "threading",
    "time",
    "os",
    "kernel.clock",
    "matplotlib",
    "tqdm",
}


def imports_of(module: str) -> set[str]:
    path = REPO / Path(*module.split(".")).with_suffix(".py")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def closure(roots: tuple[str, ...]) -> set[str]:
    """Every module the roots import, following the project's own modules."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        for imp in imports_of(todo.pop()):
            if imp in seen:
                continue
            seen.add(imp)
            own = imp.split(".")[0] in ("sim", "autoscaler", "thaw")
            if own and (REPO / Path(*imp.split(".")).with_suffix(".py")).exists():
                todo.append(imp)
    return seen


def test_sim_reaches_only_the_autoscalers_core() -> None:
    reached = closure(SIM)
    autoscaler = {m for m in reached if m.split(".")[0] == "autoscaler"}
    assert autoscaler == AUTOSCALER_CORE
    assert not {m for m in reached if m.split(".")[0] in FORBIDDEN_LIBS or m in FORBIDDEN_LIBS}


def test_the_simulator_calls_the_real_decider_and_warm_pool_planner() -> None:
    import autoscaler.decider
    import autoscaler.warm_pool
    import sim.core

    assert getattr(sim.core, "decide") is autoscaler.decider.decide  # noqa: B009
    assert getattr(sim.core, "plan_actions") is autoscaler.warm_pool.plan_actions  # noqa: B009
