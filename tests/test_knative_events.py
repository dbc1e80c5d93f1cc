"""CloudEvents to ``K_SINK``: a real aiohttp sink on 127.0.0.1 receives decisions and cold starts
in binary mode and the ``cloudevents`` SDK parses them; ``K_CE_OVERRIDES`` extensions ride along;
a full queue drops instead of blocking; a dead sink is logged, not raised; no ``K_SINK``, nothing
sent; and the local stack reports its decisions through the same emitter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from procs import child, free_port, thaw_argv, wait_http_ok

from events.sink import (
    COLD_START_TYPE,
    DECISION_TYPE,
    CloudEventEmitter,
    NoEvents,
    emitter_from_env,
    parse_overrides,
)
from kernel.clock import ManualClock
from kernel.errors import ConfigError


@dataclass
class Sink:
    url: str
    headers: list[dict[str, str]] = field(default_factory=list)
    events: list[BaseCloudEvent] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def http_sink(status: int = 202, delay_s: float = 0.0) -> AsyncIterator[Sink]:
    """A real HTTP server on 127.0.0.1 that records every CloudEvent posted to it."""
    port = free_port()
    sink = Sink(url=f"http://127.0.0.1:{port}/events")

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        sink.headers.append(dict(request.headers))
        sink.events.append(from_http_event(HTTPMessage(dict(request.headers), body)))
        sink.arrived.set()
        if delay_s:
            await asyncio.sleep(delay_s)
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/events", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield sink
    finally:
        await runner.cleanup()


async def wait_for(sink: Sink, n: int, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while len(sink.events) < n:
            sink.arrived.clear()
            await sink.arrived.wait()


async def test_decision_and_cold_start_arrive_in_binary_mode() -> None:
    clock = ManualClock(1_700_000_000.0)
    async with http_sink() as sink:
        env = {"K_SINK": sink.url, "K_CE_OVERRIDES": '{"extensions": {"cluster": "eu1"}}'}
        emitter = emitter_from_env(env, clock, source="/thaw/test")
        assert isinstance(emitter, CloudEventEmitter)
        await emitter.start()
        emitter.decision("llama", 0, 2, "waiting 9 / target 4 per replica", True)
        emitter.cold_start("llama", "local_disk", 12.5)
        await wait_for(sink, 2)
        await emitter.close()

    decision, cold = sink.events
    attrs = decision.get_attributes()
    assert attrs["type"] == DECISION_TYPE
    assert attrs["source"] == "/thaw/test"
    assert attrs["subject"] == "llama"
    assert attrs["specversion"] == "1.0"
    assert attrs["cluster"] == "eu1"  # the K_CE_OVERRIDES extension
    assert attrs["time"] == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)  # injected clock
    assert decision.get_data() == {
        "model": "llama",
        "from": 0,
        "to": 2,
        "reason": "waiting 9 / target 4 per replica",
        "panic": True,
    }
    assert cold.get_type() == COLD_START_TYPE
    assert cold.get_data() == {"model": "llama", "tier": "local_disk", "seconds": 12.5}
    assert decision.get_id() != cold.get_id()
    # Binary mode: attributes as ce-* headers, the data alone as a JSON body.
    h = {k.lower(): v for k, v in sink.headers[0].items()}
    assert h["ce-type"] == DECISION_TYPE
    assert h["ce-specversion"] == "1.0"
    assert h["ce-source"] == "/thaw/test"
    assert h["ce-cluster"] == "eu1"
    assert h["content-type"] == "application/json"
    assert h["ce-time"].startswith("2023-11-14T22:13:20")
    assert emitter.sent == 2 and emitter.failed == 0 and emitter.dropped == 0


async def test_no_sink_means_nothing_is_built_or_sent() -> None:
    clock = ManualClock()
    async with http_sink() as sink:
        for env in ({}, {"K_SINK": ""}, {"K_CE_OVERRIDES": '{"extensions": {"a": "b"}}'}):
            emitter = emitter_from_env(env, clock)
            assert isinstance(emitter, NoEvents)
            await emitter.start()
            emitter.decision("m", 0, 1, "r", False)
            emitter.cold_start("m", "remote", 1.0)
            await emitter.close()
        await asyncio.sleep(0.2)
    assert sink.events == []


async def test_a_full_queue_drops_and_never_blocks_the_caller() -> None:
    async with http_sink(delay_s=0.3) as sink:
        emitter = CloudEventEmitter(sink.url, ManualClock(), queue_size=2, timeout_s=5)
        await emitter.start()
        emitter.decision("m", 0, 1, "first", False)
        await wait_for(sink, 1)  # the sender is busy with the first one
        for i in range(5):
            emitter.decision("m", i, i + 1, "more", False)  # 2 fit, 3 are dropped
        assert emitter.dropped == 3
        await emitter.close(drain_timeout_s=5)
    assert len(sink.events) == 3
    assert emitter.sent == 3


async def test_a_failing_or_dead_sink_is_counted_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with http_sink(status=500) as sink:
        emitter = CloudEventEmitter(sink.url, ManualClock(), timeout_s=2)
        await emitter.start()
        emitter.cold_start("m", "wake", 0.5)
        await emitter.close(drain_timeout_s=5)
    assert emitter.failed == 1 and emitter.sent == 0
    dead = CloudEventEmitter(f"http://127.0.0.1:{free_port()}/", ManualClock(), timeout_s=2)
    await dead.start()
    dead.decision("m", 1, 0, "idle", False)
    await dead.close(drain_timeout_s=5)
    assert dead.failed == 1
    assert "CloudEvents: dev.thaw.autoscaler" in caplog.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, {}),
        ("", {}),
        ('{"extensions": {"cluster": "eu1", "n": 3}}', {"cluster": "eu1", "n": "3"}),
        ("{}", {}),
    ],
)
def test_overrides(text: str | None, expected: dict[str, str]) -> None:
    assert parse_overrides(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "K_CE_OVERRIDES = '{not json': not JSON"),
        ('{"extensions": ["a"]}', "K_CE_OVERRIDES = "),
        ('{"extensions": {"Bad-Name": "x"}}', "extension 'Bad-Name': bad name"),
        ('{"extensions": {"type": "x"}}', "extension 'type': a CloudEvents core attribute"),
    ],
)
def test_bad_overrides_name_the_variable(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_overrides(text)


def test_bad_sink_url_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"K_SINK = 'sink\.local'"):
        emitter_from_env({"K_SINK": "sink.local"}, ManualClock())


# -- the local stack reports through it -----------------------------------------------------


async def test_thaw_up_with_k_sink_reports_scale_from_zero(tmp_path: Path) -> None:
    """``thaw up`` as a real process with K_SINK set: one request at zero makes the decision
    0 -> 1 and a cold start; both arrive at the sink, with the request answered."""
    port = free_port()
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"""
listen: {{host: 127.0.0.1, port: {port}}}
tick_s: 0.5
models:
  - name: m
    engine: {{kind: emulator, emulator: {{load_time_s: 0.2}}}}
"""
    )
    base = f"http://127.0.0.1:{port}"
    async with http_sink() as sink:
        argv = thaw_argv("up", "--config", str(policy), "--work-dir", str(tmp_path / "w"))
        with child(argv, env={"K_SINK": sink.url}, log_path=tmp_path / "up.log") as proc:
            await asyncio.to_thread(wait_http_ok, f"{base}/health", 60, proc)
            body = {"model": "m", "prompt": "hi", "max_tokens": 2}
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{base}/v1/completions", json=body) as r:
                    assert r.status == 200, await r.text()
            await wait_for(sink, 2, timeout_s=30)
    by_type = {e.get_type(): e.get_data() for e in sink.events}
    decision, cold = by_type[DECISION_TYPE], by_type[COLD_START_TYPE]
    assert isinstance(decision, dict) and isinstance(cold, dict)
    assert decision["model"] == "m"
    assert (decision["from"], decision["to"]) == (0, 1)
    assert decision["reason"]
    assert decision["panic"] in (True, False)
    assert cold["model"] == "m"
    assert cold["tier"] == "local_disk"
    assert cold["seconds"] >= 0.2  # at least the emulator's load time
