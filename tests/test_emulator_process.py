"""``thaw emulator`` as a real process on 127.0.0.1: loading, the official OpenAI client, metrics,
queueing beyond ``max_num_seqs``, sleep and wake, lower bounds on latency from the engine model,
and a clean exit on SIGTERM.

Timing assertions are lower bounds computed from :class:`EnginePerf` (the emulator must never be
faster than its model); they do not depend on how fast this machine is.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from procs import child, free_port, thaw_argv, wait_http_ok
from prometheus_client.parser import text_string_to_metric_families

from engine.metrics import parse_engine_metrics
from engine.perf_model import EnginePerf

MODEL = "tiny"


@contextmanager
def emulator(tmp_path: Path, **perf: float) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A running emulator with these EnginePerf overrides; yields (base URL, process)."""
    port = free_port()
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {"load_time_s": 0.0, **perf}.items()]
    argv = thaw_argv(
        "emulator", "--host", "127.0.0.1", "--port", str(port), "--served-model-name", MODEL,
        *flags,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with child(argv, log_path=tmp_path / "emulator.log") as proc:
        wait_http_ok(f"{base}/health", 30, proc)
        yield base, proc


def _metric(base: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"{name}{labels} not in /metrics")


def test_health_503_until_load_time_then_200_and_sigterm_exits_0(tmp_path: Path) -> None:
    load_time_s = 1.0
    port = free_port()
    argv = thaw_argv("emulator", "--port", str(port), "--load-time-s", str(load_time_s))
    t0 = time.monotonic()
    with child(argv, log_path=tmp_path / "emulator.log") as proc:
        seen: list[int] = []
        while time.monotonic() - t0 < 30:
            assert proc.poll() is None
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    seen.append(r.status)
                    break
            except urllib.error.HTTPError as e:
                seen.append(e.code)
            except OSError:
                pass  # not listening yet
            time.sleep(0.05)
        healthy_after_s = time.monotonic() - t0
        assert seen[-1] == 200
        assert 503 in seen  # it listened while loading
        assert set(seen) == {503, 200}
        assert healthy_after_s >= load_time_s
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_openai_client_and_metrics(tmp_path: Path) -> None:
    with emulator(tmp_path, decode_base_s=0.002) as (base, _):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == [MODEL]
        done = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5)
        assert done.choices[0].finish_reason == "length"
        assert done.usage is not None and done.usage.completion_tokens == 5
        chat = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert chat.choices[0].message.content and chat.choices[0].message.role == "assistant"
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts, usage = [], None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            parts += [c.delta.content for c in chunk.choices if c.delta.content]
        assert len(parts) == 6 and usage is not None and usage.completion_tokens == 6
        stream_c = client.completions.create(model=MODEL, prompt="abc", max_tokens=3, stream=True)
        assert len([c for c in stream_c if c.choices and c.choices[0].text]) == 3
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="missing", prompt="x", max_tokens=1)
        with pytest.raises(openai.BadRequestError) as bad:
            client.completions.create(model=MODEL, prompt="x", max_tokens=-1)
        assert bad.value.status_code == 400

        text = httpx.get(f"{base}/metrics").text
        parsed = parse_engine_metrics(text)
        assert parsed.num_requests_waiting == 0 and parsed.num_requests_running == 0
        assert not parsed.sleeping
        names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        for name in (
            "vllm:num_requests_waiting",
            "vllm:num_requests_running",
            "vllm:kv_cache_usage_perc",
            "vllm:engine_sleep_state",
            "vllm:time_to_first_token_seconds_count",
            "vllm:e2e_request_latency_seconds_count",
            "vllm:inter_token_latency_seconds_count",
            "vllm:prompt_tokens_total",
            "vllm:generation_tokens_total",
            "vllm:request_success_total",
        ):
            assert name in names, name
        assert (
            _metric(base, "vllm:generation_tokens_total", model_name=MODEL, engine="0")
            == 5 + 4 + 6 + 3
        )
        assert _metric(base, "vllm:request_success_total", finished_reason="length") == 4
        assert _metric(base, "vllm:time_to_first_token_seconds_count") == 4
        assert _metric(base, "vllm:engine_sleep_state", sleep_state="awake") == 1


async def _stream_times(
    client: httpx.AsyncClient, body: dict[str, object]
) -> tuple[float, list[float]]:
    """Send a streaming completion; return when it was sent and when each token arrived."""
    sent = time.monotonic()
    arrivals: list[float] = []
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.startswith("data: {") and '"text":"' in line and '"text":""' not in line:
                arrivals.append(time.monotonic())
    return sent, arrivals


async def test_never_faster_than_the_model(tmp_path: Path) -> None:
    perf = EnginePerf(prefill_tokens_per_s=2000.0, decode_base_s=0.03, decode_per_seq_s=0.01)
    prompt = "p" * 4 * 200  # 200 tokens: 0.1 s of prefill
    n = 8
    with emulator(
        tmp_path, prefill_tokens_per_s=2000.0, decode_base_s=0.03, decode_per_seq_s=0.01
    ) as (base, _):
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            body = {"model": MODEL, "prompt": prompt, "max_tokens": n}
            sent, arrivals = await _stream_times(client, body)
            assert len(arrivals) == n
            for k, t in enumerate(arrivals, start=1):  # token k after prefill + k steps
                assert t - sent >= perf.prefill_s(200) + k * perf.decode_step_s(1)
            # Three at once share each step: one prefill of 600 tokens, then steps of batch 3.
            runs = await asyncio.gather(*(_stream_times(client, body) for _ in range(3)))
            first_sent = min(s for s, _ in runs)
            last_done = max(a[-1] for _, a in runs)
            assert last_done - first_sent >= perf.prefill_s(200) + n * perf.decode_step_s(1)
            for s, a in runs:
                assert a[0] - s >= perf.idle_ttft_s(200)
            assert _metric(base, "vllm:time_to_first_token_seconds_count") == 4


async def test_requests_wait_beyond_max_num_seqs(tmp_path: Path) -> None:
    with emulator(tmp_path, max_num_seqs=2, decode_base_s=0.05) as (base, _):
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            body = {"model": MODEL, "prompt": "hi", "max_tokens": 10}
            load = [asyncio.create_task(client.post("/v1/completions", json=body))
                    for _ in range(6)]  # fmt: skip
            seen_waiting = 0
            for _ in range(40):
                m = parse_engine_metrics((await client.get("/metrics")).text)
                seen_waiting = max(seen_waiting, m.num_requests_waiting)
                if m.num_requests_waiting:
                    assert m.num_requests_running == 2
                    assert m.kv_cache_usage_ratio > 0
                    break
                await asyncio.sleep(0.05)
            assert seen_waiting > 0
            results = await asyncio.gather(*load)
            assert all(r.status_code == 200 for r in results)
            m = parse_engine_metrics((await client.get("/metrics")).text)
            assert (m.num_requests_waiting, m.num_requests_running) == (0, 0)


async def test_sleep_pauses_generation_and_wake_resumes(tmp_path: Path) -> None:
    perf = EnginePerf(wake_level1_s=0.3, wake_level2_s=0.6)
    with emulator(tmp_path, decode_base_s=0.02, wake_level1_s=0.3, wake_level2_s=0.6) as (base, _):
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            n = 40
            body = {"model": MODEL, "prompt": "hi", "max_tokens": n}
            running = asyncio.create_task(_stream_times(client, body))
            await asyncio.sleep(0.2)
            assert (await client.post("/sleep", params={"level": 1})).status_code == 200
            assert (await client.get("/is_sleeping")).json() == {"is_sleeping": True}
            before = _metric(base, "vllm:generation_tokens_total")
            assert 0 < before < n
            late = asyncio.create_task(
                client.post("/v1/completions", json={**body, "max_tokens": 2})
            )
            await asyncio.sleep(0.5)
            asleep = parse_engine_metrics((await client.get("/metrics")).text)
            assert asleep.sleeping
            assert asleep.num_requests_waiting == 1 and asleep.num_requests_running == 1
            assert _metric(base, "vllm:engine_sleep_state", sleep_state="weights_offloaded") == 1
            assert _metric(base, "vllm:generation_tokens_total") == before  # nothing generated
            assert not running.done() and not late.done()

            t = time.monotonic()
            assert (await client.post("/wake_up")).status_code == 200
            assert time.monotonic() - t >= perf.wake_s(1)
            assert (await client.get("/is_sleeping")).json() == {"is_sleeping": False}
            _, arrivals = await running
            assert len(arrivals) == n
            assert (await late).json()["usage"]["completion_tokens"] == 2

            assert (await client.post("/sleep", params={"level": 2})).status_code == 200
            assert _metric(base, "vllm:engine_sleep_state", sleep_state="discard_all") == 1
            t = time.monotonic()
            assert (await client.post("/wake_up")).status_code == 200
            assert time.monotonic() - t >= perf.wake_s(2)
            assert _metric(base, "vllm:engine_sleep_state", sleep_state="awake") == 1


async def test_sleep_abort_mode_ends_requests(tmp_path: Path) -> None:
    with emulator(tmp_path, decode_base_s=0.02) as (base, _):
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            body = {"model": MODEL, "prompt": "hi", "max_tokens": 200}
            pending = asyncio.create_task(client.post("/v1/completions", json=body))
            await asyncio.sleep(0.2)
            resp = await client.post("/sleep", params={"level": 1, "mode": "abort"})
            assert resp.status_code == 200
            done = (await pending).json()
            assert done["choices"][0]["finish_reason"] == "abort"
            assert 0 < done["usage"]["completion_tokens"] < 200
            assert _metric(base, "vllm:request_success_total", finished_reason="abort") == 1


async def test_client_disconnect_frees_the_slot(tmp_path: Path) -> None:
    with emulator(tmp_path, decode_base_s=0.02) as (base, _):
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            body = {"model": MODEL, "prompt": "hi", "max_tokens": 500, "stream": True}
            async with client.stream("POST", "/v1/completions", json=body) as resp:
                async for line in resp.aiter_lines():
                    if line.startswith("data: {"):
                        break
            assert _metric(base, "vllm:num_requests_running") in (0, 1)
            for _ in range(50):
                if _metric(base, "vllm:request_success_total", finished_reason="abort") == 1:
                    break
                await asyncio.sleep(0.05)
            assert _metric(base, "vllm:request_success_total", finished_reason="abort") == 1
            assert _metric(base, "vllm:num_requests_running") == 0
            assert _metric(base, "vllm:generation_tokens_total") < 100


async def test_sigterm_ends_open_streams_cleanly(tmp_path: Path) -> None:
    with emulator(tmp_path, decode_base_s=0.02, graceful_shutdown_s=1) as (base, proc):
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            body = {"model": MODEL, "prompt": "hi", "max_tokens": 1000, "stream": True}
            lines: list[str] = []
            async with client.stream("POST", "/v1/completions", json=body) as resp:
                async for line in resp.aiter_lines():
                    if line:
                        lines.append(line)
                    if len(lines) == 3:
                        proc.send_signal(signal.SIGTERM)
            assert lines[-1] == "data: [DONE]"
            assert '"finish_reason":"abort"' in lines[-2]
            assert len(lines) < 500
        assert await asyncio.to_thread(proc.wait, 15) == 0
