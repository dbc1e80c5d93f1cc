"""Demand at zero for the Knative controller: Thaw's activator ``/metrics`` (parsed and scraped)
and Knative activator's queued requests read back through a real Prometheus (Debian's package)
that scrapes a stand-in exposing ``kn_revision_request_queued`` per revision."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiohttp
import aiohttp.web
import pytest
import yaml
from knative_world import activator
from procs import child, free_port, wait_http_ok

from knative.demand import (
    CombinedDemand,
    DemandError,
    KnativeActivatorDemand,
    Revision,
    ThawActivatorDemand,
    parse_buffered,
)

REV = Revision("llm", "tiny-00001", "tiny")
OTHER = Revision("llm", "other-00001", "other")


def test_parse_buffered_sums_per_model_and_names_bad_text() -> None:
    text = (
        "# TYPE thaw_activator_buffered_requests gauge\n"
        'thaw_activator_buffered_requests{model="tiny"} 2.0\n'
        'thaw_activator_buffered_requests{model="big"} 0.0\n'
        'thaw_activator_requests_total{model="tiny",code="200"} 9.0\n'
    )
    assert parse_buffered(text) == {"tiny": 2, "big": 0}
    with pytest.raises(DemandError, match="not Prometheus text"):
        parse_buffered("thaw_activator_buffered_requests{model=tiny 2\n")


async def test_thaw_activator_scraped_once_per_tick() -> None:
    async with activator() as act, aiohttp.ClientSession() as http:
        source = ThawActivatorDemand(http, act.url)
        act.buffered["tiny"] = 3
        assert await source.buffered(REV) == 3
        assert await source.buffered(OTHER) == 0
        act.buffered["tiny"] = 0
        assert await source.buffered(REV) == 3  # same tick: one scrape serves every revision
        source.new_tick()
        assert await source.buffered(REV) == 0


async def test_a_failing_source_is_skipped_and_the_largest_wins() -> None:
    async with activator() as act, aiohttp.ClientSession() as http:
        act.buffered["tiny"] = 2
        dead = ThawActivatorDemand(http, f"http://127.0.0.1:{free_port()}")
        combined = CombinedDemand([dead, ThawActivatorDemand(http, act.url)])
        assert await combined.buffered(REV) == 2
        assert combined.errors and "metrics" in combined.errors[0]


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian prometheus not installed")
async def test_knative_activator_queue_through_real_prometheus(tmp_path: Path) -> None:
    async def metrics(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(
            text="# TYPE kn_revision_request_queued gauge\n"
            'kn_revision_request_queued{k8s_namespace_name="llm",kn_revision_name="tiny-00001"}'
            " 3\n"
            'kn_revision_request_queued{k8s_namespace_name="other",kn_revision_name="tiny-00001"}'
            " 5\n",
            content_type="text/plain",
        )

    app = aiohttp.web.Application()
    app.router.add_get("/metrics", metrics)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    target_port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", target_port).start()
    prom_port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "knative-activator",
                        "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
                    }
                ],
            }
        )
    )
    argv = [
        "prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{prom_port}"
    try:
        with child(argv, log_path=tmp_path / "prometheus.log") as proc:
            await asyncio.to_thread(wait_http_ok, f"{url}/-/ready", 30, proc)
            async with aiohttp.ClientSession() as http:
                source = KnativeActivatorDemand(http, url)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 30
                got = 0
                while got == 0 and loop.time() < deadline:
                    got = await source.buffered(REV)
                    await asyncio.sleep(0.2)
                assert got == 3  # this namespace's revision only, not the other namespace's
                assert await source.buffered(OTHER) == 0
                bad = KnativeActivatorDemand(http, url, query="sum(")
                with pytest.raises(DemandError, match="sum\\("):
                    await bad.buffered(REV)
    finally:
        await runner.cleanup()
