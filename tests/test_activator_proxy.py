"""The activator in front of real ``thaw emulator`` processes on 127.0.0.1: the official OpenAI
client, buffering at zero (one poke, release in order, bounded buffer under a burst), the error
answers in OpenAI's shape, client disconnects, retries on a dead replica, spreading load, SSE
pass-through, and hypothesis bodies that never produce a 500.

The activator runs in-process (uvicorn as an asyncio task); every upstream is a real emulator
process started with :func:`procs.child`, so none outlives its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from procs import child, free_port, thaw_argv
from prometheus_client.parser import text_string_to_metric_families

from activator.core import Activator
from activator.server import serve
from activator.types import ModelLimits, Replica, ServerLimits
from kernel.clock import SystemClock

MODEL = "tiny"
ERROR_KEYS = {"message", "type", "param", "code"}


class Endpoints:
    """A test EndpointSource: model -> ready replicas, edited by the test."""

    def __init__(self) -> None:
        self.replicas: dict[str, list[Replica]] = {}

    def ready_replicas(self, model: str) -> Sequence[Replica]:
        return self.replicas.get(model, [])


class Sink:
    """A test DemandSink that records pokes and runs ``on_poke`` (if any) for each."""

    def __init__(self, on_poke: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.pokes: list[str] = []
        self.on_poke = on_poke

    async def poke(self, model: str) -> None:
        self.pokes.append(model)
        if self.on_poke is not None:
            await self.on_poke(model)


async def _wait_ok(url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"emulator exited with {proc.returncode}"
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{url} not ready within {timeout_s} s")


class Emulators:
    """Starts emulator processes for one test and stops them all at its end."""

    def __init__(self, tmp_path: Path, stack: contextlib.ExitStack) -> None:
        self.tmp_path = tmp_path
        self.stack = stack
        self.n = 0

    async def start(self, **perf: float) -> tuple[str, subprocess.Popen[bytes]]:
        """A ready emulator serving MODEL; returns (base URL, process)."""
        port = free_port()
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in {"load_time_s": 0.2, **perf}.items()]
        argv = thaw_argv(
            "emulator", "--host", "127.0.0.1", "--port", str(port), "--served-model-name", MODEL,
            *flags,
        )  # fmt: skip
        self.n += 1
        proc = self.stack.enter_context(
            child(argv, log_path=self.tmp_path / f"emulator{self.n}.log")
        )
        base = f"http://127.0.0.1:{port}"
        await _wait_ok(f"{base}/health", 60, proc)
        return base, proc


@contextlib.asynccontextmanager
async def emulators(tmp_path: Path) -> AsyncIterator[Emulators]:
    with contextlib.ExitStack() as stack:
        yield Emulators(tmp_path, stack)


@contextlib.asynccontextmanager
async def running(act: Activator) -> AsyncIterator[str]:
    """Serve ``act`` on a free port as a task of this loop; yields its base URL."""
    port = free_port()
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.ensure_future(serve(act, "127.0.0.1", port, stop=stop, started=started))
    try:
        await asyncio.wait_for(started.wait(), 10)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 30)
        finally:
            await act.close()


def _samples(text: str, name: str, **labels: str) -> list[float]:
    return [
        float(s.value)
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


async def metric(base: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples with these labels (0 if none) at ``base``/metrics."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{base}/metrics")).text
    return sum(_samples(text, name, **labels))


def _activator(src: Endpoints, sink: Sink, recheck_s: float = 1.0, **limits: Any) -> Activator:
    return Activator(
        models={MODEL: ModelLimits(**limits)},
        endpoints=src,
        demand=sink,
        clock=SystemClock(),
        recheck_s=recheck_s,
    )


def _replica(rid: str, base: str) -> Replica:
    return Replica(replica_id=rid, base_url=base)


def _assert_error_shape(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


async def test_openai_client_plain_streaming_and_completions(tmp_path: Path) -> None:
    src, sink = Endpoints(), Sink()
    async with emulators(tmp_path) as emus:
        base, _ = await emus.start(load_time_s=0.0, decode_base_s=0.005)
        src.replicas[MODEL] = [_replica("r1", base)]
        async with running(_activator(src, sink)) as url:
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            models = await client.models.list()
            assert [m.id for m in models.data] == [MODEL]
            chat = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
            assert chat.usage is not None and chat.usage.completion_tokens == 4
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=6,
                stream=True,
            )
            parts: list[str] = []
            finish: list[str] = []
            async for chunk in stream:
                parts += [c.delta.content for c in chunk.choices if c.delta.content]
                finish += [c.finish_reason for c in chunk.choices if c.finish_reason]
            assert len(parts) == 6 and finish == ["length"]
            done = await client.completions.create(model=MODEL, prompt="Once", max_tokens=5)
            assert done.choices[0].finish_reason == "length"
            assert done.usage is not None and done.usage.completion_tokens == 5
            with pytest.raises(openai.NotFoundError):
                await client.completions.create(model="missing", prompt="x", max_tokens=1)
            await client.close()
            assert await metric(url, "thaw_activator_requests_total", code="200") == 3
        assert sink.pokes == []


async def test_at_zero_one_poke_then_all_released(tmp_path: Path) -> None:
    n = 50
    src = Endpoints()
    async with emulators(tmp_path) as emus:
        act: Activator | None = None

        async def scale_up(model: str) -> None:
            base, _ = await emus.start(load_time_s=0.2)
            src.replicas[model] = [_replica("r1", base)]
            assert act is not None
            act.endpoints_changed(model)

        sink = Sink(scale_up)
        # No safety-net recheck: only endpoints_changed() can release the buffer here.
        act = _activator(src, sink, recheck_s=3600, buffer_size=100, wait_timeout_s=60)
        async with running(act) as url:
            async with httpx.AsyncClient(
                base_url=url, timeout=60, limits=httpx.Limits(max_connections=n + 10)
            ) as client:
                tasks = [
                    asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
                    for _ in range(n)
                ]
                peak = 0
                while not all(t.done() for t in tasks):
                    peak = max(peak, act.buffered(MODEL))
                    await asyncio.sleep(0.01)
                results = [t.result() for t in tasks]
            assert [r.status_code for r in results] == [200] * n
            assert sink.pokes == [MODEL]
            assert peak > 1  # they really waited together
            assert act.buffered(MODEL) == 0
            assert await metric(url, "thaw_activator_buffered_requests", model=MODEL) == 0
            assert await metric(url, "thaw_activator_requests_total", code="200") == n


@pytest.mark.slow
async def test_burst_of_2000_at_zero_every_request_answered(tmp_path: Path) -> None:
    n, buffer_size = 2000, 500
    src = Endpoints()
    async with emulators(tmp_path) as emus:
        act: Activator | None = None

        async def scale_up(model: str) -> None:
            base, _ = await emus.start(load_time_s=2.0, decode_base_s=0.002, max_num_seqs=256)
            src.replicas[model] = [_replica("r1", base)]
            assert act is not None
            act.endpoints_changed(model)

        sink = Sink(scale_up)
        act = _activator(src, sink, buffer_size=buffer_size, wait_timeout_s=25)
        body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 1}).encode()
        codes: Counter[int] = Counter()
        failures: list[str] = []
        peak = 0
        async with running(act) as url:
            conn = aiohttp.TCPConnector(limit=1000)
            async with aiohttp.ClientSession(
                connector=conn, timeout=aiohttp.ClientTimeout(total=60)
            ) as session:

                async def one() -> None:
                    try:
                        async with session.post(
                            f"{url}/v1/completions",
                            data=body,
                            headers={"Content-Type": "application/json"},
                        ) as resp:
                            payload = await resp.read()
                            if resp.status == 503:
                                assert int(resp.headers["Retry-After"]) > 0
                            if resp.status != 200:
                                err = json.loads(payload)["error"]
                                assert set(err) == ERROR_KEYS
                            codes[resp.status] += 1
                    except Exception as e:  # every loss is counted
                        failures.append(f"{type(e).__name__}: {e}")

                tasks = [asyncio.create_task(one()) for _ in range(n)]
                while not all(t.done() for t in tasks):
                    peak = max(peak, act.buffered(MODEL))
                    await asyncio.sleep(0.01)
            total = await metric(url, "thaw_activator_requests_total")
        assert failures == []
        assert set(codes) <= {200, 503, 504}, codes
        assert sum(codes.values()) == n
        assert codes[200] > 0 and codes[503] > 0, codes
        assert peak <= buffer_size
        assert sink.pokes == [MODEL]
        assert total == n
        assert act.buffered(MODEL) == 0


async def test_error_answers_in_openai_shape() -> None:
    src, sink = Endpoints(), Sink()
    act = Activator(
        models={
            MODEL: ModelLimits(buffer_size=1, wait_timeout_s=30, max_body_bytes=8000),
            "quick": ModelLimits(wait_timeout_s=0.3, max_body_bytes=2000),
        },
        endpoints=src,
        demand=sink,
        clock=SystemClock(),
        server=ServerLimits(retry_after_s=7),
    )
    async with running(act) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            r = await client.post("/v1/completions", json={"model": "quick", "prompt": "x"})
            err = _assert_error_shape(r, 504)
            assert "quick" in err["message"]
            assert r.headers["retry-after"] == "7"  # a 504 that asks to come back says when

            waiting = asyncio.create_task(client.post("/v1/completions", json=CHAT))
            for _ in range(200):
                if act.buffered(MODEL) == 1:
                    break
                await asyncio.sleep(0.01)
            assert act.buffered(MODEL) == 1
            r = await client.post("/v1/chat/completions", json=CHAT)
            _assert_error_shape(r, 503)
            assert r.headers["retry-after"] == "7"
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting

            big = {"model": "quick", "prompt": "x" * 5000}  # over quick's 2000, under the 8000 cap
            _assert_error_shape(await client.post("/v1/completions", json=big), 413)
            huge = {"model": MODEL, "prompt": "x" * 10000}  # over every model's cap
            _assert_error_shape(await client.post("/v1/completions", json=huge), 413)

            for raw in (b"{not json", b"[1, 2]", b'{"prompt": "x"}', b'{"model": 3}', b""):
                r = await client.post(
                    "/v1/completions", content=raw, headers={"content-type": "application/json"}
                )
                _assert_error_shape(r, 400)
            r = await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
            err = _assert_error_shape(r, 404)
            assert "nope" in err["message"]
        codes = {
            c: await metric(url, "thaw_activator_requests_total", code=c)
            for c in ("400", "404", "413", "503", "504")
        }
        assert codes == {"400": 5, "404": 1, "413": 2, "503": 1, "504": 1}
        assert sink.pokes[:2] == ["quick", MODEL]


async def test_client_disconnect_leaves_the_buffer() -> None:
    src, sink = Endpoints(), Sink()
    act = _activator(src, sink, wait_timeout_s=120)
    async with running(act) as url:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            tasks = [
                asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
                for _ in range(3)
            ]
            for _ in range(300):
                if act.buffered(MODEL) == 3:
                    break
                await asyncio.sleep(0.01)
            assert act.buffered(MODEL) == 3
            assert await metric(url, "thaw_activator_buffered_requests", model=MODEL) == 3
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for _ in range(500):  # far less than the 120 s wait timeout
                if act.buffered(MODEL) == 0:
                    break
                await asyncio.sleep(0.01)
            assert act.buffered(MODEL) == 0
            assert await metric(url, "thaw_activator_buffered_requests", model=MODEL) == 0
            assert await metric(url, "thaw_activator_requests_total", code="504") == 0


async def test_retry_skips_a_replica_on_a_closed_port(tmp_path: Path) -> None:
    src, sink = Endpoints(), Sink()
    async with emulators(tmp_path) as emus:
        base, _ = await emus.start(decode_base_s=0.002)
        dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        src.replicas[MODEL] = [_replica("dead", dead), _replica("live", base)]
        act = _activator(src, sink)
        async with running(act) as url:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                results = await asyncio.gather(
                    *(client.post("/v1/chat/completions", json=CHAT) for _ in range(20))
                )
            assert [r.status_code for r in results] == [200] * 20
            assert await metric(url, "thaw_activator_upstream_retries_total", model=MODEL) > 0
            assert await metric(base, "vllm:request_success_total") == 20
        assert sink.pokes == []


async def test_killing_a_replica_mid_load_loses_no_request(tmp_path: Path) -> None:
    src, sink = Endpoints(), Sink()
    async with emulators(tmp_path) as emus:
        base_a, _ = await emus.start(decode_base_s=0.02)
        base_b, proc_b = await emus.start(decode_base_s=0.02)
        src.replicas[MODEL] = [_replica("a", base_a), _replica("b", base_b)]
        act = _activator(src, sink)
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 10}  # about 0.2 s each
        async with running(act) as url:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                statuses: list[int] = []
                stop_at = time.monotonic() + 2.5

                async def worker() -> None:
                    while time.monotonic() < stop_at:
                        statuses.append(
                            (await client.post("/v1/completions", json=body)).status_code
                        )

                workers = [asyncio.create_task(worker()) for _ in range(8)]
                await asyncio.sleep(0.8)
                assert act.outstanding("b") > 0  # b is serving when it dies
                os.killpg(proc_b.pid, signal.SIGKILL)
                await asyncio.to_thread(proc_b.wait, 10)
                await asyncio.gather(*workers)
            assert statuses and set(statuses) == {200}, Counter(statuses)
            assert await metric(url, "thaw_activator_upstream_retries_total", model=MODEL) > 0
            assert await metric(url, "thaw_activator_requests_total", code="200") == len(statuses)


async def test_concurrent_load_spreads_over_both_replicas(tmp_path: Path) -> None:
    src, sink = Endpoints(), Sink()
    async with emulators(tmp_path) as emus:
        base_a, _ = await emus.start(decode_base_s=0.02)
        base_b, _ = await emus.start(decode_base_s=0.02)
        src.replicas[MODEL] = [_replica("a", base_a), _replica("b", base_b)]
        act = _activator(src, sink)
        async with running(act) as url:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                body = {"model": MODEL, "prompt": "hi", "max_tokens": 5}
                results = await asyncio.gather(
                    *(client.post("/v1/completions", json=body) for _ in range(16))
                )
            assert [r.status_code for r in results] == [200] * 16
            a = await metric(base_a, "vllm:request_success_total")
            b = await metric(base_b, "vllm:request_success_total")
            assert a > 0 and b > 0 and a + b == 16, (a, b)


async def test_sse_chunks_pass_through_as_they_are_made(tmp_path: Path) -> None:
    decode_s, n = 0.1, 8
    src, sink = Endpoints(), Sink()
    async with emulators(tmp_path) as emus:
        base, _ = await emus.start(decode_base_s=decode_s)
        src.replicas[MODEL] = [_replica("r1", base)]
        async with running(_activator(src, sink)) as url:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                arrivals: list[float] = []
                lines: list[str] = []
                body = {**CHAT, "max_tokens": n, "stream": True}
                async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                    assert resp.status_code == 200
                    assert resp.headers["content-type"].startswith("text/event-stream")
                    async for line in resp.aiter_lines():
                        if line.startswith("data: "):
                            lines.append(line)
                            if '"content":"' in line and '"content":""' not in line:
                                arrivals.append(time.monotonic())
        assert lines[-1] == "data: [DONE]"
        assert len(arrivals) == n
        # Tokens arrive one decode step apart; a buffering proxy would deliver them together.
        assert arrivals[-1] - arrivals[0] >= 0.5 * (n - 1) * decode_s
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert sum(g >= 0.3 * decode_s for g in gaps) >= len(gaps) // 2, gaps  # not in one lump


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3)
    ),
    max_leaves=8,
)
OPTIONAL = {
    "messages": st.just([{"role": "user", "content": "hi"}]) | JSON,
    "prompt": st.text(max_size=20) | JSON,
    "max_tokens": st.integers(-2, 4) | JSON,
    "stream": st.booleans() | JSON,
    "temperature": JSON,
}
#: Bodies naming the served model (so they reach the emulator), then any field mix, then any JSON.
SERVED = st.fixed_dictionaries({"model": st.just(MODEL)}, optional=OPTIONAL)
FIELDS = st.fixed_dictionaries(
    {}, optional={"model": st.sampled_from([MODEL, "other", ""]) | JSON, **OPTIONAL}
)
BODIES = (SERVED | FIELDS | JSON).map(lambda v: json.dumps(v).encode())


async def test_random_bodies_never_get_a_500(tmp_path: Path) -> None:
    src, sink = Endpoints(), Sink()
    async with emulators(tmp_path) as emus:
        base, _ = await emus.start(decode_base_s=0.001)
        src.replicas[MODEL] = [_replica("r1", base)]
        async with running(_activator(src, sink, wait_timeout_s=5)) as url:
            seen: Counter[int] = Counter()

            @settings(
                max_examples=30,
                deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture],
            )
            @given(path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]), raw=BODIES)
            @example(path="/v1/chat/completions", raw=json.dumps(CHAT).encode())
            @example(
                path="/v1/completions", raw=b'{"model": "tiny", "prompt": "a", "max_tokens": 2}'
            )
            @example(path="/v1/completions", raw=b'{"model": "tiny", "prompt": 5}')
            def check(path: str, raw: bytes) -> None:
                r = httpx.post(
                    url + path,
                    content=raw,
                    headers={"content-type": "application/json"},
                    timeout=30,
                )
                seen[r.status_code] += 1
                assert r.status_code < 500, (raw, r.status_code, r.text)
                if r.status_code >= 400:
                    assert set(r.json()["error"]) == ERROR_KEYS

            await asyncio.to_thread(check)
            assert sum(seen.values()) >= 30
            assert seen[200] >= 2, seen  # valid bodies reached the emulator and came back
