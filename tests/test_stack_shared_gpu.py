"""``thaw up`` with two models on one emulated GPU that holds one of them awake at a time: the
GPU-memory arbiter decides, the actuator puts one model to sleep before it wakes or starts the
other, and the emulators' GPU ledger (which refuses a start or wake that would not fit, as a real
GPU would run out of memory) never refuses a plan the arbiter made."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path

import aiohttp
from metrics_text import get_metrics, metric
from procs import child, free_port, thaw_argv, wait_http_ok
from test_stack_up import _tail, chat, engine_pids, wait_for

GIB = 2**30


def write_config(path: Path, port: int, models: list[str], memory_bytes: int) -> None:
    blocks = "".join(
        f"""
  - name: {m}
    engine:
      kind: emulator
      startup_timeout_s: 30
      gpu_memory_utilization: 0.6
      emulator: {{load_time_s: 1.0, sleep_level1_s: 0.2, wake_level1_s: 0.1}}
    autoscaling: {{min_replicas: 0, max_replicas: 1, stable_window_s: 6,
                   scale_to_zero_grace_s: 600, metrics_stale_after_s: 5}}
    activator: {{buffer_size: 50, wait_timeout_s: 60}}
    warm_pool: {{enabled: true, sleep_level: 1, max_sleeping: 1, weights_bytes: {GIB}}}
"""
        for m in models
    )
    path.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\ntick_s: 0.5\n"
        f"gpu: {{memory_bytes: {memory_bytes}, host_ram_budget_bytes: {4 * GIB}}}\n"
        f"models:{blocks}"
    )


def test_a_wake_on_a_full_gpu_first_sleeps_the_other_model(tmp_path: Path) -> None:
    port = free_port()
    tag = uuid.uuid4().hex[:6]
    a, b = f"gpu-a-{tag}", f"gpu-b-{tag}"
    cfg = tmp_path / "thaw.yaml"
    write_config(cfg, port, [a, b], 80 * GIB)  # 0.6 of it each: one model awake at a time
    work = tmp_path / "w"
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "up.log"

    async def state(model: str, s: str) -> float:
        return metric(await get_metrics(base), "thaw_model_replicas", model=model, state=s)

    async def go() -> None:
        timeout = aiohttp.ClientTimeout(total=90)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await chat(session, base, a, 4)  # a: cold start on an empty GPU
            a_pids = engine_pids(a)
            # b's request finds the GPU full of a, idle but still wanted (a long grace): a sleeps
            # first, then b starts.
            await chat(session, base, b, 4)

            async def a_asleep() -> bool:  # the gauges are exported once a tick
                return await state(a, "sleeping") == 1 and await state(b, "ready") == 1

            await wait_for(a_asleep, 10, f"a asleep and b awake:\n{_tail(log, 4000)}")
            # a again: b sleeps, then a wakes (from level 1, not a cold start).
            await chat(session, base, a, 4)

            async def b_asleep() -> bool:
                return await state(b, "sleeping") == 1 and await state(a, "ready") == 1

            await wait_for(b_asleep, 30, f"b asleep and a awake:\n{_tail(log, 4000)}")
            t = await get_metrics(base)
            assert metric(t, "thaw_cold_starts_total", model=a, tier="wake") == 1
            assert metric(t, "thaw_cold_starts_total", model=a, tier="local_disk") == 1
            assert metric(t, "thaw_cold_starts_total", model=b, tier="local_disk") == 1
            assert engine_pids(a) == a_pids and engine_pids(b)  # a's process was never replaced
            ledger = json.loads((work / "gpu-ledger" / "gpu-local.json").read_text())
            held = {e["name"]: e["bytes"] for e in ledger["engines"].values()}
            assert held == {a: int(80 * GIB * 0.6), b: 0}

    argv = thaw_argv("up", "--config", str(cfg), "--work-dir", str(work))
    with child(argv, log_path=log) as proc:
        wait_http_ok(f"{base}/health", 30, proc)
        asyncio.run(go())
    text = log.read_text()
    # The start line says what sleeping saves here.
    assert "the models share one GPU of 86 GB" in text
    # Sleep before wake, in one plan each time.
    room = r"at level 1 \(idle; makes room for {} \(\d+ waiting\)\)"
    first = rf"GPU: sleep {a}-\d+ {room.format(b)}; start a new {b} engine"
    assert re.search(first, text), _tail(log, 6000)
    second = rf"GPU: sleep {b}-\d+ {room.format(a)}; wake {a}-\d+"
    assert re.search(second, text), _tail(log, 6000)
    # The ledger never refused a plan: no engine failed to start or to wake.
    engine_logs = "".join(p.read_text() for p in (work / "logs").glob("*.log"))
    assert "gpu ledger: refused" not in engine_logs
    assert "failed to start" not in text and "wake failed" not in text
    # A model waiting for memory is said once, not at every tick.
    assert text.count(f"model {a}: 1 engine(s) wait for GPU memory") <= 2, _tail(log, 6000)


def test_the_readmes_shared_gpu_example_is_a_valid_policy() -> None:
    from procs import REPO

    from policy_file.load import parse_policy

    readme = (REPO / "README.md").read_text()
    block = readme.split("wake, never more awake than the GPU holds", 1)[1]
    example = block.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse_policy(example, "README.md")
    assert config.gpu is not None and config.gpu.memory_bytes == 80 * GIB
    (model,) = config.models
    assert model.engine.utilization() == 0.45 and model.warm_pool.enabled


def test_a_changed_gpu_section_needs_a_restart(tmp_path: Path) -> None:
    """The GPU's memory is fixed while thaw up runs: its emulators declared it to their ledger
    and the arbiter plans within it. Before: a reload that changed gpu.memory_bytes was applied,
    so the next engine started with a size the ledger refused (and the arbiter planned for a GPU
    that was not there); now it is named as needing a restart and the old value is kept."""
    port = free_port()
    tag = uuid.uuid4().hex[:6]
    a, b = f"gpu-a-{tag}", f"gpu-b-{tag}"
    cfg = tmp_path / "thaw.yaml"
    write_config(cfg, port, [a, b], 80 * GIB)
    work = tmp_path / "w"
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "up.log"

    async def go() -> None:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await chat(session, base, a, 4)
            write_config(cfg, port, [a, b], 40 * GIB)

            async def reloaded() -> bool:
                return "policy reloaded" in log.read_text()

            await wait_for(reloaded, 20, f"the reload:\n{_tail(log, 4000)}")
            await chat(session, base, b, 4)  # a sleeps first, b starts on the same 80 GiB GPU

    argv = thaw_argv("up", "--config", str(cfg), "--work-dir", str(work))
    with child(argv, log_path=log) as proc:
        wait_http_ok(f"{base}/health", 30, proc)
        asyncio.run(go())
    text = log.read_text()
    changed = rf"gpu.memory_bytes \({80 * GIB} -> {40 * GIB}\) changed but needs a restart"
    assert re.search(changed, text), _tail(log, 4000)
    assert "kept until a restart: gpu.memory_bytes" in text, _tail(log, 4000)
    engine_logs = "".join(p.read_text() for p in (work / "logs").glob("*.log"))
    assert "gpu ledger" not in engine_logs and "failed to start" not in text, engine_logs[-3000:]
    ledger = json.loads((work / "gpu-ledger" / "gpu-local.json").read_text())
    assert ledger["memory_bytes"] == 80 * GIB


def test_what_a_reload_keeps_of_the_gpu_section() -> None:
    from local_stack.stack import keep_old_values, restart_needed
    from policy_file.load import parse_policy
    from policy_file.schema import ThawConfig

    def policy(gpu: str) -> ThawConfig:
        return parse_policy(f"{gpu}models:\n  - name: m\n    engine: {{kind: emulator}}\n", "t")

    g80 = policy(f"gpu: {{memory_bytes: {80 * GIB}, host_ram_budget_bytes: {GIB}}}\n")
    g40 = policy(f"gpu: {{memory_bytes: {40 * GIB}, host_ram_budget_bytes: {2 * GIB}}}\n")
    g80_more_ram = policy(f"gpu: {{memory_bytes: {80 * GIB}, host_ram_budget_bytes: {2 * GIB}}}\n")
    none = policy("")
    for old, new, kept, gpu_after in (
        (g80, g40, [("gpu.memory_bytes", 80 * GIB, 40 * GIB)], (80 * GIB, 2 * GIB)),
        (g80, g80_more_ram, [], (80 * GIB, 2 * GIB)),  # host RAM applies at once
        (none, g80, [("gpu.memory_bytes", None, 80 * GIB)], None),
        (g80, none, [("gpu.memory_bytes", 80 * GIB, None)], (80 * GIB, GIB)),
    ):
        changed = restart_needed(old, new)
        assert changed == kept
        gpu = keep_old_values(old, new, changed).gpu
        assert (None if gpu is None else (gpu.memory_bytes, gpu.host_ram_budget_bytes)) == gpu_after
