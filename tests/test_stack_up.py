"""End to end through ``thaw up``: scale from zero, scale up under load, back to zero with the
engine processes gone. With the emulator (seconds) and with real vLLM CPU (marked ``vllm``)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path

import aiohttp
import psutil
import pytest
from metrics_text import get_metrics, metric
from procs import child, free_port, thaw_argv, wait_http_ok


def write_config(path: Path, port: int, model: str, engine: str, autoscaling: str) -> None:
    path.write_text(
        f"""
listen: {{host: 127.0.0.1, port: {port}}}
tick_s: 0.5
models:
  - name: {model}
    engine: {engine}
    autoscaling: {autoscaling}
    activator: {{buffer_size: 200, wait_timeout_s: 240}}
"""
    )


def _tail(path: Path, chars: int) -> str:
    return path.read_text()[-chars:] if path.exists() else "(no log)"


def engine_pids(model: str) -> list[int]:
    """Engine processes (emulator or vLLM) serving ``model``, found by their command line."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if model in cmd and "--served-model-name" in cmd:
            found.append(p.info["pid"])
    return found


async def chat(
    session: aiohttp.ClientSession, base: str, model: str, max_tokens: int, **extra: object
) -> int:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": max_tokens,
        **extra,
    }
    async with session.post(f"{base}/v1/chat/completions", json=body) as r:
        data = await r.json()
        assert r.status == 200, data
        assert data["choices"][0]["message"]["role"] == "assistant"
        return r.status


async def wait_for(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def scenario(
    base: str,
    model: str,
    *,
    load_requests: int,
    max_tokens: int,
    timeouts_s: float,
    log: Path,
    **extra: object,
) -> None:
    """At zero: one request is answered; load raises replicas; idle: back to zero, no process."""
    assert engine_pids(model) == []
    text = await get_metrics(base)
    assert metric(text, "thaw_model_replicas", model=model, state="ready") == 0

    timeout = aiohttp.ClientTimeout(total=timeouts_s * 2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await chat(session, base, model, 4)  # answered through a cold start
        text = await get_metrics(base)
        assert metric(text, "thaw_cold_starts_total", model=model) == 1
        assert metric(text, "thaw_scale_from_zero_seconds_count", model=model) == 1
        assert metric(text, "thaw_scale_from_zero_seconds_sum", model=model) > 0

        # Load: more concurrent work than one replica's target, kept up until the autoscaler
        # has added a replica (an engine faster than expected must not end the load before a
        # tick sees it), or until timeouts_s: then the test fails.
        peak = 0.0
        deadline = time.monotonic() + timeouts_s

        async def watch() -> None:
            nonlocal peak
            while True:
                t = await get_metrics(base)
                live = metric(t, "thaw_model_replicas", model=model, state="ready") + metric(
                    t, "thaw_model_replicas", model=model, state="starting"
                )
                peak = max(peak, live)
                await asyncio.sleep(0.25)

        async def client() -> list[int]:
            codes = [await chat(session, base, model, max_tokens, **extra)]
            while peak < 2 and time.monotonic() < deadline:
                codes.append(await chat(session, base, model, max_tokens, **extra))
            return codes

        watcher = asyncio.ensure_future(watch())
        answered = await asyncio.gather(*(client() for _ in range(load_requests)))
        watcher.cancel()
        assert all(code == 200 for codes in answered for code in codes), answered
        assert peak >= 2, f"replicas never rose above {peak}:\n{_tail(log, 6000)}"

    # Idle: after the grace period every replica is stopped and its process is gone.
    async def at_zero() -> bool:
        t = await get_metrics(base)
        return (
            sum(
                metric(t, "thaw_model_replicas", model=model, state=s)
                for s in ("starting", "ready", "draining")
            )
            == 0
        )

    await wait_for(at_zero, timeouts_s, f"the model to be back at zero:\n{_tail(log, 4000)}")

    async def no_processes() -> bool:
        return engine_pids(model) == []

    await wait_for(no_processes, 20, "engine processes to exit")


def test_emulator_scale_from_zero_up_and_back(tmp_path: Path) -> None:
    port = free_port()
    model = f"emu-{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "thaw.yaml"
    write_config(
        cfg,
        port,
        model,
        "{kind: emulator, startup_timeout_s: 30, emulator: {load_time_s: 1.0, max_num_seqs: 2, "
        "decode_base_s: 0.03}}",
        "{min_replicas: 0, max_replicas: 3, target_concurrency_per_replica: 2, "
        "stable_window_s: 6, scale_to_zero_grace_s: 2, metrics_stale_after_s: 5}",
    )
    log = tmp_path / "up.log"
    with child(
        thaw_argv("up", "--config", str(cfg), "--work-dir", str(tmp_path / "w")), log_path=log
    ) as proc:
        wait_http_ok(f"http://127.0.0.1:{port}/health", 30, proc)
        asyncio.run(
            scenario(
                f"http://127.0.0.1:{port}",
                model,
                load_requests=12,
                max_tokens=60,
                timeouts_s=40,
                log=log,
            )
        )
    text = log.read_text()
    started = rf"model {model}: 0 -> 1 replicas \(start 1 cold\): .*cold start"
    assert re.search(started, text), text
    assert re.search(rf"model {model}: scaled from zero in [0-9.]+ s", text), text
    assert re.search(rf"model {model}: \d -> 0 replicas", text), text
    assert engine_pids(model) == []


@pytest.mark.vllm
def test_vllm_scale_from_zero_up_and_back(tmp_path: Path) -> None:
    port = free_port()
    model = f"tiny-{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "thaw.yaml"
    write_config(
        cfg,
        port,
        model,
        "{kind: vllm, startup_timeout_s: 300, args: [--max-num-seqs, '2']}",
        "{min_replicas: 0, max_replicas: 2, target_concurrency_per_replica: 1, "
        "stable_window_s: 6, scale_to_zero_grace_s: 3, metrics_stale_after_s: 15}",
    )
    log = tmp_path / "up.log"
    with child(
        thaw_argv("up", "--config", str(cfg), "--work-dir", str(tmp_path / "w")), log_path=log
    ) as proc:
        wait_http_ok(f"http://127.0.0.1:{port}/health", 120, proc)
        asyncio.run(
            scenario(
                f"http://127.0.0.1:{port}",
                model,
                load_requests=16,  # the tiny model decodes fast: keep it busy for several ticks
                max_tokens=1500,
                timeouts_s=240,
                log=log,
                ignore_eos=True,  # random weights may stop at once; keep the engine busy
            )
        )
    text = log.read_text()
    assert re.search(rf"model {model}: scaled from zero in [0-9.]+ s", text), text
    assert engine_pids(model) == []


def test_emulator_warm_pool_sleeps_then_wakes_without_cold_start(tmp_path: Path) -> None:
    port = free_port()
    model = f"warm-{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "thaw.yaml"
    write_config(
        cfg,
        port,
        model,
        "{kind: emulator, startup_timeout_s: 30, emulator: {load_time_s: 2.0, wake_level1_s: 0.1}}",
        "{min_replicas: 0, max_replicas: 1, target_concurrency_per_replica: 2, "
        "stable_window_s: 6, scale_to_zero_grace_s: 1, metrics_stale_after_s: 5}",
    )
    with cfg.open("a") as f:
        f.write("    warm_pool: {enabled: true, sleep_level: 1, max_sleeping: 1}\n")
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "up.log"
    with child(
        thaw_argv("up", "--config", str(cfg), "--work-dir", str(tmp_path / "w")), log_path=log
    ) as proc:
        wait_http_ok(f"{base}/health", 30, proc)

        async def go() -> None:
            async with aiohttp.ClientSession() as session:
                await chat(session, base, model, 4)  # cold start from nothing

                async def asleep() -> bool:
                    t = await get_metrics(base)
                    return metric(t, "thaw_model_replicas", model=model, state="sleeping") == 1

                await wait_for(asleep, 30, "the replica to be put to sleep")
                pids = engine_pids(model)
                assert pids, "the sleeping replica's process must stay alive"
                await chat(session, base, model, 4)  # woken, not cold-started
                t = await get_metrics(base)
                assert metric(t, "thaw_cold_starts_total", model=model, tier="wake") == 1
                assert metric(t, "thaw_cold_starts_total", model=model, tier="local_disk") == 1
                assert metric(t, "thaw_scale_from_zero_seconds_count", model=model) == 2
                assert engine_pids(model) == pids

        asyncio.run(go())
    text = log.read_text()
    assert re.search(r"asleep at level 1", text), text
    assert re.search(r"awake in [0-9.]+ s", text), text


def test_api_keys_guard_everything_but_health_and_metrics(tmp_path: Path) -> None:
    port = free_port()
    model = f"keyed-{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "thaw.yaml"
    write_config(
        cfg,
        port,
        model,
        "{kind: emulator, startup_timeout_s: 30, emulator: {load_time_s: 0.2}}",
        "{min_replicas: 0, max_replicas: 1}",
    )
    keys = tmp_path / "keys"
    keys.write_text("# team a\nsecret-a\n\nsecret-b\n")
    base = f"http://127.0.0.1:{port}"
    argv = thaw_argv(
        "up", "--config", str(cfg), "--work-dir", str(tmp_path / "w"), "--api-key-file", str(keys)
    )
    with child(argv) as proc:
        wait_http_ok(f"{base}/health", 30, proc)

        async def go() -> None:
            body = {"model": model, "prompt": "hi", "max_tokens": 2}
            async with aiohttp.ClientSession() as s:
                async with s.get(f"{base}/metrics") as r:
                    assert r.status == 200
                for headers in ({}, {"Authorization": "Bearer wrong"}):
                    async with s.post(f"{base}/v1/completions", json=body, headers=headers) as r:
                        assert r.status == 401
                        err = (await r.json())["error"]
                        assert set(err) == {"message", "type", "param", "code"}
                    async with s.get(f"{base}/v1/models", headers=headers) as r:
                        assert r.status == 401
                ok = {"Authorization": "Bearer secret-b"}
                async with s.post(f"{base}/v1/completions", json=body, headers=ok) as r:
                    assert r.status == 200, await r.text()

        asyncio.run(go())


def test_s3_model_is_pulled_once_then_loaded_from_local_disk(tmp_path: Path) -> None:
    from cache_servers import moto_server

    from model_cache.push import push
    from model_cache.s3 import parse_s3_uri
    from model_cache.tiny_model import build_tiny_llama

    port = free_port()
    model = f"s3m-{uuid.uuid4().hex[:8]}"
    src = build_tiny_llama(tmp_path / "src")
    with moto_server(tmp_path) as s3:
        uri = f"s3://{s3.bucket}/tiny"
        push(src, parse_s3_uri(uri), s3.client(), name=model)
        cfg = tmp_path / "thaw.yaml"
        write_config(
            cfg,
            port,
            model,
            f"{{kind: emulator, model: '{uri}', emulator: {{load_time_s: 0.3}}}}",
            "{min_replicas: 0, max_replicas: 1, stable_window_s: 6, scale_to_zero_grace_s: 1}",
        )
        with cfg.open("a") as f:
            f.write(f"cache: {{dir: '{tmp_path / 'cache'}', s3_endpoint_url: '{s3.endpoint}'}}\n")
        base = f"http://127.0.0.1:{port}"
        argv = thaw_argv("up", "--config", str(cfg), "--work-dir", str(tmp_path / "w"))
        log = tmp_path / "up.log"
        with child(argv, env=s3.env, log_path=log) as proc:
            wait_http_ok(f"{base}/health", 30, proc)

            async def go() -> None:
                async with aiohttp.ClientSession() as session:
                    await chat(session, base, model, 2)
                    t = await get_metrics(base)
                    assert metric(t, "thaw_cold_starts_total", model=model, tier="remote") == 1

                    async def at_zero() -> bool:
                        t = await get_metrics(base)
                        return sum(
                            metric(t, "thaw_model_replicas", model=model, state=s)
                            for s in ("starting", "ready", "draining")
                        ) == 0 and not engine_pids(model)

                    await wait_for(at_zero, 30, f"zero replicas:\n{_tail(log, 3000)}")
                    await chat(session, base, model, 2)
                    t = await get_metrics(base)
                    assert metric(t, "thaw_cold_starts_total", model=model, tier="remote") == 1
                    assert metric(t, "thaw_cold_starts_total", model=model, tier="local_disk") == 1

            asyncio.run(go())
    files = sorted(p.name for p in (tmp_path / "cache").rglob("*.safetensors"))
    assert files == ["model.safetensors"], files
