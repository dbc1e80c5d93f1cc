"""The front door under hostile but fair use (issue 15), in-process against real upstreams:

- a frozen replica (``thaw emulator`` stopped with SIGSTOP): the request is retried on another
  replica after ``upstream_first_byte_timeout_s`` and the frozen one is ejected until its
  ``/health`` answers again; alone, it gets a 504 with Retry-After; frozen mid-stream, the stream
  ends with an error event after ``upstream_idle_timeout_s``;
- slow clients (slowloris): a connection that sends nothing, part of its headers, or its headers
  and then no body gets a 408 and is closed; others are served meanwhile;
- bad input never gives a 500: JSON nested 1,000 levels deep, a 100 KB model name;
- the buffer's memory bound, and ``max_concurrency_per_replica`` (the rest wait, in order, and
  count as buffered).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from procs import child, free_port, thaw_argv
from prometheus_client.parser import text_string_to_metric_families

from activator.core import MAX_JSON_DEPTH, SHOW_CHARS, Activator
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
    """A test DemandSink that records pokes."""

    def __init__(self) -> None:
        self.pokes: list[str] = []

    async def poke(self, model: str) -> None:
        self.pokes.append(model)


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


async def metric(base: str, name: str, **labels: str) -> float:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{base}/metrics")).text
    return sum(
        float(s.value)
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def until(cond: Any, what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def error_of(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.text[:300])
    assert resp.headers["content-type"] == "application/json", resp.headers
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    return dict(body["error"])


async def start_emulator(
    stack: contextlib.ExitStack, tmp_path: Path, name: str, *flags: str
) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    argv = thaw_argv(
        "emulator", "--port", str(port), "--served-model-name", MODEL, "--load-time-s", "0",
        *flags,
    )  # fmt: skip
    proc = stack.enter_context(child(argv, log_path=tmp_path / f"{name}.log"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            assert proc.poll() is None, f"emulator {name} exited"
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{base}/health")).status_code == 200:
                    return base, proc
            assert time.monotonic() < deadline, f"emulator {name} not ready"
            await asyncio.sleep(0.05)


def chat(**extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        **extra,
    }


# -- a frozen replica --------------------------------------------------------------------------

QUICK = ModelLimits(
    wait_timeout_s=30, upstream_first_byte_timeout_s=1.0, upstream_idle_timeout_s=1.0
)


async def test_a_frozen_replica_is_ejected_and_its_request_retried(tmp_path: Path) -> None:
    """Before: the request routed to the SIGSTOPped replica hung until it was resumed."""
    src, sink = Endpoints(), Sink()
    act = Activator({MODEL: QUICK}, src, sink, SystemClock())
    with contextlib.ExitStack() as stack:
        frozen_url, frozen = await start_emulator(stack, tmp_path, "frozen")
        live_url, _ = await start_emulator(stack, tmp_path, "live")
        # The frozen one looks emptier, so it is tried first.
        src.replicas[MODEL] = [
            Replica("live", live_url, kv_cache_usage_ratio=0.5),
            Replica("frozen", frozen_url, kv_cache_usage_ratio=0.0),
        ]
        async with running(act) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
            os.kill(frozen.pid, signal.SIGSTOP)
            try:
                r = await client.post("/v1/chat/completions", json=chat())
                assert r.status_code == 200, r.text
                assert act.ejected() == {"frozen": MODEL}
                assert await metric(url, "thaw_activator_ejected_replicas", model=MODEL) == 1
                timeouts = "thaw_activator_upstream_timeouts_total"
                assert await metric(url, timeouts, model=MODEL, phase="first_byte") == 1
                assert await metric(url, "thaw_activator_upstream_retries_total") == 1
                # While it is out, requests go to the live replica without trying it.
                for _ in range(5):
                    r = await client.post("/v1/chat/completions", json=chat())
                    assert r.status_code == 200
                assert await metric(url, timeouts, model=MODEL) == 1
            finally:
                os.kill(frozen.pid, signal.SIGCONT)
            # Resumed, its /health answers and it is back in routing.
            await until(lambda: not act.ejected(), "the replica to be readmitted", 20)
            assert await metric(url, "thaw_activator_ejected_replicas", model=MODEL) == 0
            r = await client.post("/v1/chat/completions", json=chat())
            assert r.status_code == 200


async def test_a_lone_frozen_replica_gets_a_504_with_retry_after(tmp_path: Path) -> None:
    src, sink = Endpoints(), Sink()
    act = Activator({MODEL: QUICK}, src, sink, SystemClock(), server=ServerLimits(retry_after_s=9))
    with contextlib.ExitStack() as stack:
        frozen_url, frozen = await start_emulator(stack, tmp_path, "frozen")
        src.replicas[MODEL] = [Replica("frozen", frozen_url)]
        async with running(act) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
            os.kill(frozen.pid, signal.SIGSTOP)
            try:
                r = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
                err = error_of(r, 504)
                assert r.headers["retry-after"] == "9"
                assert "first byte within 1 s" in err["message"]
                # Ejected: the next request waits for a replica (none is left) and times out.
            finally:
                os.kill(frozen.pid, signal.SIGCONT)
            await until(lambda: not act.ejected(), "the replica to be readmitted", 20)
            r = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
            assert r.status_code == 200


async def test_a_replica_frozen_mid_stream_ends_it_with_an_error_event(tmp_path: Path) -> None:
    src, sink = Endpoints(), Sink()
    act = Activator({MODEL: QUICK}, src, sink, SystemClock())
    with contextlib.ExitStack() as stack:
        # 0.2 s per token: the stream is under way when the replica freezes.
        base, proc = await start_emulator(stack, tmp_path, "slow", "--decode-base-s", "0.2")
        src.replicas[MODEL] = [Replica("slow", base)]
        async with running(act) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
            body = chat(stream=True, max_tokens=50)
            events: list[str] = []
            try:
                async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                    assert resp.status_code == 200
                    async for line in resp.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        events.append(line)
                        if len(events) == 2:
                            os.kill(proc.pid, signal.SIGSTOP)
            finally:
                os.kill(proc.pid, signal.SIGCONT)
        last = json.loads(events[-1][len("data: ") :])
        assert last["error"]["code"] == 502 and "silent" in last["error"]["message"], last
        assert "[DONE]" not in events[-1]


# -- slow clients ------------------------------------------------------------------------------


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


async def test_slow_clients_get_408_and_are_closed() -> None:
    """Before: a connection that sent part of a request and then nothing was never closed."""
    src, sink = Endpoints(), Sink()
    limits = ServerLimits(header_timeout_s=0.5, body_timeout_s=0.5)
    act = Activator({MODEL: ModelLimits()}, src, sink, SystemClock(), server=limits)
    async with running(act) as url:
        port = int(url.rsplit(":", 1)[1])
        body = json.dumps(chat()).encode()
        sends = {
            "nothing": b"",
            "half a header": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty",
            "headers, no body": (
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body[:10]
            ),
        }
        socks = {}
        for name, data in sends.items():
            s = socket.create_connection(("127.0.0.1", port))
            s.settimeout(20)
            s.sendall(data)
            socks[name] = s
        # A fair client is served meanwhile.
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.get(f"{url}/health")).status_code == 200
        answers = {
            name: await asyncio.to_thread(_read_all, s) for name, s in socks.items()
        }  # EOF: closed by the server
        for s in socks.values():
            s.close()
        for name, raw in answers.items():
            head, _, payload = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 "), (name, raw)
            assert b"connection: close" in head.lower(), (name, head)
            err = json.loads(payload)["error"]
            assert set(err) == ERROR_KEYS and err["code"] == 408, (name, err)
        timeouts = "thaw_activator_client_timeouts_total"
        assert await metric(url, timeouts, phase="header") == 2
        assert await metric(url, timeouts, phase="body") == 1
        assert await metric(url, "thaw_activator_requests_total", code="408") == 3


# -- bad input ---------------------------------------------------------------------------------


async def test_bad_input_is_a_400_never_a_500() -> None:
    """Before: 1,000 levels of nesting gave a plain-text 500 (RecursionError) and a 100 KB
    model name came back whole in the 404."""
    src, sink = Endpoints(), Sink()
    act = Activator({MODEL: ModelLimits()}, src, sink, SystemClock())
    async with running(act) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        headers = {"content-type": "application/json"}
        for depth in (1000, 100_000, MAX_JSON_DEPTH + 1):
            raw = '{"model": "tiny", "x": ' + "[" * depth + "]" * depth + "}"
            err = error_of(await client.post("/v1/completions", content=raw, headers=headers), 400)
            assert f"deeper than {MAX_JSON_DEPTH} levels" in err["message"]
        raw = "[" * 5000 + "]" * 5000
        error_of(await client.post("/v1/completions", content=raw, headers=headers), 400)

        for name in ("x" * 100_000, "y" * 300):
            r = await client.post("/v1/completions", json={"model": name, "prompt": "x"})
            err = error_of(r, 400)
            assert len(err["message"]) < 300, err["message"]
            assert f"{len(name)} characters long" in err["message"]
        r = await client.post("/v1/completions", json={"model": "z" * 200, "prompt": "x"})
        err = error_of(r, 404)
        assert len(err["message"]) < 300 and "z" * (SHOW_CHARS - 30) in err["message"]
        r = await client.post("/v1/completions", json={"model": ["a"] * 50_000, "prompt": "x"})
        assert len(error_of(r, 400)["message"]) < 300
        assert await metric(url, "thaw_activator_requests_total", code="500") == 0


async def test_nesting_within_the_bound_is_forwarded() -> None:
    seen: list[bytes] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(await request.read())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/completions", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    src, sink = Endpoints(), Sink()
    src.replicas[MODEL] = [Replica("r", f"http://127.0.0.1:{port}")]
    act = Activator({MODEL: ModelLimits()}, src, sink, SystemClock())
    try:
        async with running(act) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
            depth = MAX_JSON_DEPTH - 1  # the body object itself is one level
            raw = '{"model": "tiny", "x": ' + "[" * depth + "]" * depth + "}"
            r = await client.post(
                "/v1/completions", content=raw, headers={"content-type": "application/json"}
            )
            assert r.status_code == 200 and seen == [raw.encode()]
    finally:
        await runner.cleanup()


# -- the buffer --------------------------------------------------------------------------------


class Held:
    """An upstream that holds every request until released; records arrival order."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.release = asyncio.Event()
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.order.append(body["user"])
        await self.release.wait()
        return web.json_response({"user": body["user"]})


@contextlib.asynccontextmanager
async def held_upstream() -> AsyncIterator[Held]:
    held = Held()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", held.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", held.port).start()
    try:
        yield held
    finally:
        held.release.set()
        await runner.cleanup()


async def test_max_concurrency_per_replica_queues_the_rest_in_order() -> None:
    src, sink = Endpoints(), Sink()
    limits = ModelLimits(max_concurrency_per_replica=2, wait_timeout_s=60)
    act = Activator({MODEL: limits}, src, sink, SystemClock())
    async with held_upstream() as up, running(act) as url:
        src.replicas[MODEL] = [Replica("r", f"http://127.0.0.1:{up.port}")]
        async with aiohttp.ClientSession() as session:

            async def one(tag: str) -> tuple[int, str]:
                async with session.post(f"{url}/v1/chat/completions", json=chat(user=tag)) as r:
                    return r.status, (await r.json())["user"]

            tasks = []
            for i in range(6):
                tasks.append(asyncio.create_task(one(f"q{i}")))
                await until(lambda n=i + 1: len(up.order) + act.buffered(MODEL) == n, "placed")
            assert up.order == ["q0", "q1"] and act.outstanding("r") == 2
            assert act.buffered(MODEL) == 4 and sink.pokes == [MODEL]  # demand, said at once
            assert await metric(url, "thaw_activator_buffered_requests", model=MODEL) == 4
            up.release.set()
            results = await asyncio.gather(*tasks)
        assert results == [(200, f"q{i}") for i in range(6)]
        assert up.order == [f"q{i}" for i in range(6)]  # released in arrival order
        assert act.buffered(MODEL) == 0 and act.outstanding("r") == 0


async def test_the_buffer_is_bounded_in_body_bytes_with_retry_after() -> None:
    src, sink = Endpoints(), Sink()
    limits = ModelLimits(buffer_max_bytes=2**20, max_body_bytes=2**20, wait_timeout_s=60)
    act = Activator({MODEL: limits}, src, sink, SystemClock(), server=ServerLimits(retry_after_s=4))
    async with running(act) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        big = chat(user="x" * 300_000)
        waiting = [
            asyncio.create_task(client.post("/v1/chat/completions", json=big)) for _ in range(3)
        ]
        await until(lambda: act.buffered(MODEL) == 3, "three buffered")
        held = await metric(url, "thaw_activator_buffered_bytes", model=MODEL)
        assert 900_000 < held < 2**20
        r = await client.post("/v1/chat/completions", json=big)  # a fourth would pass 1 MiB
        err = error_of(r, 503)
        assert r.headers["retry-after"] == "4" and "bytes" in err["message"]
        small = asyncio.create_task(client.post("/v1/chat/completions", json=chat()))
        await until(lambda: act.buffered(MODEL) == 4, "a small one still fits")
        for t in [*waiting, small]:
            t.cancel()
        await asyncio.gather(*waiting, small, return_exceptions=True)
        await until(lambda: act.buffered(MODEL) == 0, "the buffer empty")
        assert await metric(url, "thaw_activator_buffered_bytes", model=MODEL) == 0


@pytest.mark.parametrize("status", [429, 504])
async def test_an_upstream_asking_to_come_back_gets_retry_after(status: int) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "later"}}, status=status)

    app = web.Application()
    app.router.add_post("/v1/completions", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    src, sink = Endpoints(), Sink()
    src.replicas[MODEL] = [Replica("r", f"http://127.0.0.1:{port}")]
    act = Activator({MODEL: ModelLimits()}, src, sink, SystemClock())
    try:
        async with running(act) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
            r = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
            assert r.status_code == status and r.headers["retry-after"] == "5"
    finally:
        await runner.cleanup()
