"""The activator against small real HTTP upstreams: aiohttp servers on 127.0.0.1 that stand in
for vLLM replicas and misbehave on demand (answer 502/503, hold an answer, die mid-stream, notice
a dropped connection), which the emulator does not do.

Covered here: release in arrival order, pokes that fail or hang, 502/503 retried elsewhere, no
live replica means waiting as at zero, an error event when a replica dies mid-stream, a client
that leaves while its request is at a replica drops the upstream connection, graceful shutdown,
API keys, ``/v1/models`` at zero and after a policy reload, the body forwarded byte for byte, and
every path and method of the OpenAPI document never answering 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from procs import free_port
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


class Upstream:
    """One aiohttp server; ``/{rid}/v1/...`` is replica ``rid``, behaving as ``mode[rid]``:

    - ``echo`` (default): answers the request body byte for byte, with ``X-Replica: rid``;
    - ``502`` / ``503``: answers that status;
    - ``hold``: echoes once ``hold`` is set;
    - ``watch``: a long non-streamed generation that notes whether its client dropped it;
    - ``stream``: 3 SSE events then ``[DONE]``; ``stream_watch``: 200 events 20 ms apart,
      noting a drop; ``stream_die``: 2 events, then the connection is aborted.

    ``outcomes[user]`` is ``finished`` or ``dropped`` for the watching modes (``user`` is the
    request's ``user`` field)."""

    def __init__(self) -> None:
        self.mode: dict[str, str] = {}
        self.seen: list[tuple[str, bytes]] = []
        self.queries: list[str] = []
        self.outcomes: dict[str, str] = {}
        self.hold = asyncio.Event()
        self.port = free_port()

    def url(self, rid: str) -> str:
        return f"http://127.0.0.1:{self.port}/{rid}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rid = request.match_info["rid"]
        body = await request.read()
        self.seen.append((rid, body))
        self.queries.append(request.rel_url.raw_query_string)
        tag = str(json.loads(body).get("user", ""))
        mode = self.mode.get(rid, "echo")
        if mode in ("502", "503"):
            return web.json_response({"error": {"message": "busy"}}, status=int(mode))
        if mode == "hold":
            await self.hold.wait()
        if mode == "watch":
            for _ in range(1000):
                if request.transport is None or request.transport.is_closing():
                    self.outcomes[tag] = "dropped"
                    return web.Response(status=499)
                await asyncio.sleep(0.01)
            self.outcomes[tag] = "finished"
        if mode.startswith("stream"):
            return await self._stream(request, mode, tag)
        return web.Response(body=body, content_type="application/json", headers={"X-Replica": rid})

    async def _stream(self, request: web.Request, mode: str, tag: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in range(200 if mode == "stream_watch" else 3):
                await resp.write(f'data: {{"i": {i}}}\n\n'.encode())
                if mode == "stream_die" and i == 1:
                    await asyncio.sleep(0.05)
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                await asyncio.sleep(0.02)
            await resp.write(b"data: [DONE]\n\n")
        except ConnectionError:
            self.outcomes[tag] = "dropped"
            return resp
        self.outcomes[tag] = "finished"
        return resp


@contextlib.asynccontextmanager
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    app = web.Application()
    app.router.add_post("/{rid}/v1/{tail:.*}", up.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", up.port).start()
    try:
        yield up
    finally:
        up.hold.set()
        await runner.cleanup()


class Served:
    """The activator served by uvicorn as a task of this loop."""

    def __init__(self, act: Activator) -> None:
        self.act = act
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stop = asyncio.Event()
        self.started = asyncio.Event()
        self.task = asyncio.ensure_future(
            serve(act, "127.0.0.1", self.port, stop=self.stop, started=self.started, graceful_s=10)
        )


@contextlib.asynccontextmanager
async def running(act: Activator) -> AsyncIterator[Served]:
    served = Served(act)
    try:
        await asyncio.wait_for(served.started.wait(), 10)
        yield served
    finally:
        served.stop.set()
        try:
            await asyncio.wait_for(served.task, 30)
        finally:
            await act.close()


def activator(src: Endpoints, sink: Sink, *, recheck_s: float = 3600.0, **kwargs: Any) -> Activator:
    """The test activator; by default no safety-net recheck, so only pushes release waiters."""
    models = kwargs.pop("models", {MODEL: ModelLimits(wait_timeout_s=30)})
    return Activator(models, src, sink, SystemClock(), recheck_s=recheck_s, **kwargs)


async def metric(base: str, name: str, **labels: str) -> float:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{base}/metrics")).text
    return sum(
        float(s.value)
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def until(cond: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def chat(tag: str = "", model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "user": tag, **extra}


def assert_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    return dict(body["error"])


async def test_buffer_releases_in_arrival_order() -> None:
    """Five requests buffered one after another; five replicas appear at once with KV usage
    r0 < r1 < ... (listed in reverse). Released in arrival order, request i takes replica i:
    each takes the least-loaded replica with the lowest KV usage, one at a time."""
    src, sink = Endpoints(), Sink()
    act = activator(src, sink)
    async with upstream() as up, running(act) as srv:
        up.mode.update({f"r{k}": "hold" for k in range(5)})
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            tasks = []
            for i in range(5):
                req = client.post("/v1/chat/completions", json=chat(f"q{i}"))
                tasks.append(asyncio.create_task(req))
                await until(lambda n=i + 1: act.buffered(MODEL) == n, f"{i + 1} buffered")  # type: ignore[misc]
            src.replicas[MODEL] = [
                Replica(
                    f"r{k}", up.url(f"r{k}"), kv_cache_usage_ratio=k / 10, num_requests_waiting=0
                )
                for k in reversed(range(5))
            ]
            act.endpoints_changed(MODEL)
            await until(lambda: len(up.seen) == 5, "all five at the replicas")
            assert act.buffered(MODEL) == 0
            assert [act.outstanding(f"r{k}") for k in range(5)] == [1] * 5
            up.hold.set()
            results = await asyncio.gather(*tasks)
    assert [r.status_code for r in results] == [200] * 5
    assert [r.headers["x-replica"] for r in results] == [f"r{i}" for i in range(5)]
    assert [json.loads(r.content)["user"] for r in results] == [f"q{i}" for i in range(5)]
    assert sink.pokes == [MODEL]


@pytest.mark.parametrize("behaviour", ["raises", "hangs"])
async def test_a_failing_or_hanging_poke_does_not_hold_the_request(behaviour: str) -> None:
    never = asyncio.Event()

    async def bad_poke(model: str) -> None:
        if behaviour == "raises":
            raise RuntimeError("the autoscaler is down")
        await never.wait()

    src, sink = Endpoints(), Sink(bad_poke)
    act = activator(src, sink)
    async with upstream() as up, running(act) as srv:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            first = asyncio.create_task(client.post("/v1/chat/completions", json=chat("a")))
            await until(lambda: act.buffered(MODEL) == 1, "one buffered")
            second = asyncio.create_task(client.post("/v1/chat/completions", json=chat("b")))
            await until(lambda: act.buffered(MODEL) == 2, "two buffered")
            src.replicas[MODEL] = [Replica("r1", up.url("r1"), None, None)]
            act.endpoints_changed(MODEL)
            results = await asyncio.gather(first, second)
    assert [r.status_code for r in results] == [200, 200]
    assert sink.pokes == [MODEL]  # once: the second joined a non-empty buffer


@pytest.mark.parametrize("status", ["502", "503"])
async def test_an_upstream_502_or_503_is_retried_on_another_replica(status: str) -> None:
    src, sink = Endpoints(), Sink()
    act = activator(src, sink)
    async with upstream() as up, running(act) as srv:
        up.mode["bad"] = status
        src.replicas[MODEL] = [
            Replica("good", up.url("good"), kv_cache_usage_ratio=0.5, num_requests_waiting=0),
            Replica("bad", up.url("bad"), kv_cache_usage_ratio=0.0, num_requests_waiting=0),
        ]  # bad has the lower KV usage, so it is tried first
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            r = await client.post("/v1/chat/completions", json=chat("x"))
        assert r.status_code == 200 and r.headers["x-replica"] == "good"
        assert [rid for rid, _ in up.seen] == ["bad", "good"]
        assert await metric(srv.url, "thaw_activator_upstream_retries_total", model=MODEL) == 1
    assert sink.pokes == []


async def test_with_no_live_replica_the_request_waits_as_at_zero() -> None:
    src, sink = Endpoints(), Sink()
    act = activator(src, sink)
    async with upstream() as up, running(act) as srv:
        up.mode.update({"busy": "503"})
        dead = f"http://127.0.0.1:{free_port()}"
        src.replicas[MODEL] = [
            Replica("dead", dead, None, None),
            Replica("busy", up.url("busy"), 0.9, None),
        ]
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            task = asyncio.create_task(client.post("/v1/chat/completions", json=chat("x")))
            await until(lambda: act.buffered(MODEL) == 1, "the request buffered")
            assert sink.pokes == [MODEL]
            assert len(up.seen) == 1  # dead, then busy once: one retry, then the buffer
            src.replicas[MODEL] = [Replica("live", up.url("live"), None, None)]
            act.endpoints_changed(MODEL)
            r = await task
        assert r.status_code == 200 and r.headers["x-replica"] == "live"
        assert await metric(srv.url, "thaw_activator_upstream_retries_total", model=MODEL) == 1


async def test_a_replica_dying_mid_stream_ends_the_stream_with_an_error_event() -> None:
    src, sink = Endpoints(), Sink()
    act = activator(src, sink)
    async with upstream() as up, running(act) as srv:
        up.mode.update({"a": "stream_die", "b": "stream"})
        src.replicas[MODEL] = [Replica("a", up.url("a"), 0.0, 0), Replica("b", up.url("b"), 0.5, 0)]
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            body = chat("s", stream=True)
            async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                assert resp.status_code == 200
                events = [line async for line in resp.aiter_lines() if line.startswith("data: ")]
        assert events[:2] == ['data: {"i": 0}', 'data: {"i": 1}']
        assert len(events) == 3, events  # no retry after the first byte, no [DONE]
        err = json.loads(events[2][len("data: ") :])["error"]
        assert set(err) == ERROR_KEYS and err["code"] == 502
        assert [rid for rid, _ in up.seen] == ["a"]
        assert await metric(srv.url, "thaw_activator_upstream_retries_total", model=MODEL) == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_leaving_drops_its_upstream_request(stream: bool) -> None:
    src, sink = Endpoints(), Sink()
    act = activator(src, sink)
    async with upstream() as up, running(act) as srv:
        up.mode["r1"] = "stream_watch" if stream else "watch"
        src.replicas[MODEL] = [Replica("r1", up.url("r1"), None, None)]
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            if stream:
                body = chat("gone", stream=True)
                async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                    lines = resp.aiter_lines()
                    assert (await anext(lines)).startswith("data: ")
            else:
                task = asyncio.create_task(client.post("/v1/chat/completions", json=chat("gone")))
                await until(lambda: len(up.seen) == 1, "the request at the replica")
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # The replica would go on for 4 s (stream) or 10 s; it sees its connection dropped.
        await until(lambda: "gone" in up.outcomes, "the replica to notice", timeout_s=15)
        assert up.outcomes["gone"] == "dropped"
        await until(lambda: act.outstanding("r1") == 0, "no outstanding request")
        assert act.in_flight(MODEL) == 0
        if not stream:
            assert await metric(srv.url, "thaw_activator_requests_total", code="499") == 1


async def test_graceful_shutdown_refuses_the_buffer_and_finishes_in_flight() -> None:
    src, sink = Endpoints(), Sink()
    models = {"a": ModelLimits(), "b": ModelLimits()}
    act = activator(src, sink, models=models, server=ServerLimits(retry_after_s=3))
    async with upstream() as up:
        up.mode["a1"] = "hold"
        src.replicas["a"] = [Replica("a1", up.url("a1"), None, None)]
        srv = Served(act)
        try:
            await asyncio.wait_for(srv.started.wait(), 10)
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
                req_a = client.post("/v1/completions", json=chat(model="a"))
                at_replica = asyncio.create_task(req_a)
                waiting = asyncio.create_task(client.post("/v1/completions", json=chat(model="b")))
                await until(lambda: len(up.seen) == 1 and act.buffered("b") == 1, "both placed")
                srv.stop.set()
                refused = await asyncio.wait_for(waiting, 10)
                err = assert_error(refused, 503)
                assert refused.headers["retry-after"] == "3" and "shutting down" in err["message"]
                await asyncio.sleep(0.3)  # uvicorn closes its listener within 0.1 s
                assert not at_replica.done() and not srv.task.done()
                with pytest.raises(httpx.ConnectError):
                    async with httpx.AsyncClient(timeout=5) as fresh:
                        await fresh.get(f"{srv.url}/health")
                up.hold.set()
                finished = await asyncio.wait_for(at_replica, 10)
                assert finished.status_code == 200
            await asyncio.wait_for(srv.task, 15)
        finally:
            srv.stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.task, 15)
            await act.close()


async def test_api_keys_guard_everything_but_health_and_metrics(tmp_path: Any) -> None:
    src, sink = Endpoints(), Sink()
    act = activator(src, sink, api_keys=["k1", "k2"])
    async with upstream() as up, running(act) as srv:
        src.replicas[MODEL] = [Replica("r1", up.url("r1"), None, None)]
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            for auth in ({}, {"authorization": "Bearer nope"}, {"authorization": "Basic k1"}):
                for method, path in (("GET", "/v1/models"), ("GET", "/openapi.json")):
                    err = assert_error(await client.request(method, path, headers=auth), 401)
                    assert err["code"] == "invalid_api_key"
                r = await client.post("/v1/chat/completions", json=chat(), headers=auth)
                assert_error(r, 401)
            for path in ("/health", "/metrics"):
                assert (await client.get(path)).status_code == 200
            ok = {"authorization": "Bearer k2"}
            assert (await client.get("/v1/models", headers=ok)).status_code == 200
            r = await client.post("/v1/chat/completions", json=chat(), headers=ok)
            assert r.status_code == 200 and r.headers["x-replica"] == "r1"
        assert up.seen and all(b"Bearer" not in body for _, body in up.seen)


async def test_models_listed_at_zero_and_after_a_reload() -> None:
    src, sink = Endpoints(), Sink()
    act = activator(src, sink, models={"b": ModelLimits(), "a": ModelLimits()})
    async with running(act) as srv:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            listing = (await client.get("/v1/models")).json()
            assert listing["object"] == "list"
            assert [m["id"] for m in listing["data"]] == ["a", "b"]
            assert all(m["object"] == "model" for m in listing["data"])
            waiting = asyncio.create_task(client.post("/v1/completions", json=chat(model="b")))
            await until(lambda: act.buffered("b") == 1, "b buffered")
            act.set_models({"a": ModelLimits(), "c": ModelLimits()})
            err = assert_error(await waiting, 404)
            assert "'b'" in err["message"] and err["code"] == "model_not_found"
            listing = (await client.get("/v1/models")).json()
            assert [m["id"] for m in listing["data"]] == ["a", "c"]
            assert_error(await client.post("/v1/completions", json=chat(model="b")), 404)


async def test_the_body_and_query_are_forwarded_byte_for_byte() -> None:
    raw = (
        b'{ "user" : "x",\n  "model":"tiny" ,"messages":[{"role":"user",'
        b'"content":"caf\\u00e9 \xc3\xa9 \\ud83d\\ude00"}], "zz": 1.50e0, "aa": [ ] }'
    )
    src, sink = Endpoints(), Sink()
    act = activator(src, sink)
    async with upstream() as up, running(act) as srv:
        src.replicas[MODEL] = [Replica("r1", up.url("r1"), None, None)]
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            r = await client.post(
                "/v1/chat/completions?api-version=2&x=%C3%A9",
                content=raw,
                headers={"content-type": "application/json"},
            )
        assert r.status_code == 200
        assert up.seen == [("r1", raw)] and up.queries == ["api-version=2&x=%C3%A9"]
        assert r.content == raw and r.headers["content-length"] == str(len(raw))
        assert r.headers["x-replica"] == "r1"


BODY = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=6),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids),
    max_leaves=6,
)


async def test_every_openapi_path_and_method_never_answers_500() -> None:
    src, sink = Endpoints(), Sink()
    act = activator(src, sink, models={MODEL: ModelLimits(wait_timeout_s=1)})
    async with upstream() as up, running(act) as srv:
        src.replicas[MODEL] = [Replica("r1", up.url("r1"), None, None)]
        async with httpx.AsyncClient(timeout=10) as client:
            doc = (await client.get(f"{srv.url}/openapi.json")).json()
        paths = sorted(doc["paths"])
        expected = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"}
        assert expected <= set(paths), paths
        seen: dict[int, int] = {}

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            path=st.sampled_from(paths),
            method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
            body=BODY | st.fixed_dictionaries({"model": st.just(MODEL)}, optional={"x": BODY}),
            query=st.sampled_from(["", "?a=1", "?model=tiny&stream=true"]),
        )
        def check(path: str, method: str, body: Any, query: str) -> None:
            r = httpx.request(method, f"{srv.url}{path}{query}", json=body, timeout=30)
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code < 500, (method, path, body, r.status_code, r.text)
            if r.status_code >= 400:
                assert set(r.json()["error"]) == ERROR_KEYS, r.text

        await asyncio.to_thread(check)
        assert sum(seen.values()) >= 60 and seen.get(200, 0) > 0 and seen.get(405, 0) > 0, seen


async def test_aiohttp_upstream_session_is_shared_and_closed() -> None:
    """One pooled session for every upstream call: connections are reused across requests."""
    src, sink = Endpoints(), Sink()
    act = activator(src, sink)
    ports: set[int] = set()

    async def peer(request: web.Request) -> web.Response:
        assert request.transport is not None
        ports.add(request.transport.get_extra_info("peername")[1])
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/{tail:.*}", peer)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with running(act) as srv:
            src.replicas[MODEL] = [Replica("r1", f"http://127.0.0.1:{port}", None, None)]
            async with aiohttp.ClientSession() as client:
                for _ in range(10):  # one after another: one upstream connection suffices
                    async with client.post(f"{srv.url}/v1/completions", json=chat()) as r:
                        assert r.status == 200
        assert len(ports) == 1, ports
    finally:
        await runner.cleanup()
