"""``thaw knative controller`` as a real process: its --help teaches, and it reconciles a PA in
the Kubernetes API harness through a kubeconfig, with a real emulator as the revision's pod."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import aiohttp
import aiohttp.web
import pytest
import yaml
from knative_world import (
    DEPLOY,
    MODEL,
    NS,
    PA,
    SKS,
    activator,
    deployment,
    emulator,
    eventually,
    knative_and_kubelet,
    kube_api,
    podautoscaler,
    write_kubeconfig,
)
from procs import child, free_port, thaw_argv


def test_help_teaches_access_policy_signals_and_leases() -> None:
    out = subprocess.run(
        thaw_argv("knative", "controller", "--help"), capture_output=True, text=True, check=True
    ).stdout
    for needle in (
        "--in-cluster",
        "--kubeconfig",
        "--namespace",
        "--config",
        "--knative-namespace",
        "--xds-port",
        "kn_revision_request_queued",
        "--tick-s",
        "--lease-name",
        "autoscaling.knative.dev/class: autoscaler.thaw.dev",
        "Proxy",
        "Queued",
        "examples:",
    ):
        assert needle in out, needle


def test_bad_kubeconfig_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    r = subprocess.run(
        thaw_argv("knative", "controller", "--kubeconfig", str(missing)),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "kubeconfig" in r.stderr and str(missing) in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_policy_and_tick_are_named(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("models:\n  - name: m\n    autoscaling: {max_replicas: -3}\n")
    r = subprocess.run(
        thaw_argv("knative", "controller", "--config", str(policy)),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2, r.stderr
    assert "models[0].autoscaling.max_replicas" in r.stderr and "-3" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run(
        thaw_argv("knative", "controller", "--tick-s", "0"), capture_output=True, text=True
    )
    assert r.returncode == 2 and "--tick-s = 0.0, must be > 0" in r.stderr


@pytest.mark.slow  # two processes start (the emulator and the controller): ~5 s each here
async def test_controller_process_reconciles_a_pa_in_the_harness(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "tick_s": 0.2,
                "models": [
                    {
                        "name": MODEL,
                        "engine": {"kind": "emulator"},
                        "autoscaling": {"min_replicas": 0, "max_replicas": 1},
                    }
                ],
            }
        )
    )
    received: list[dict[str, str]] = []

    async def sink(request: aiohttp.web.Request) -> aiohttp.web.Response:
        received.append({k.lower(): v for k, v in request.headers.items()})
        return aiohttp.web.Response(status=202)

    app = aiohttp.web.Application()
    app.router.add_post("/", sink)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    sink_port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", sink_port).start()
    with emulator(tmp_path) as engine_port:
        async with kube_api() as (api, server), activator(api, server) as act:
            api.put_object(*DEPLOY, deployment("tiny-00001"))
            api.put_object(*PA, podautoscaler("tiny-00001"))
            kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server)
            argv = thaw_argv(
                "knative", "controller", "--kubeconfig", str(kubeconfig), "--config", str(policy),
                "--xds-port", "0", "--engine-port", str(engine_port),
                "--identity", "cli", "--lease-namespace", "thaw-system",
            )  # fmt: skip
            stop = asyncio.Event()
            world = asyncio.create_task(knative_and_kubelet(api, engine_port, stop))
            try:
                env = {"K_SINK": f"http://127.0.0.1:{sink_port}/"}
                with child(argv, env=env, log_path=tmp_path / "controller.log") as proc:
                    await eventually(
                        lambda: api.get_object(*SKS, NS, "tiny-00001") or proc.poll() is not None,
                        what="SKS from the controller process",
                    )
                    assert proc.poll() is None, (tmp_path / "controller.log").read_text()
                    act.held[NS, "tiny-00001"] = 1
                    pa = await eventually(
                        lambda: (
                            (p := api.get_object(*PA, NS, "tiny-00001"))
                            and ((p.get("status") or {}).get("actualScale") == 1)
                            and p
                        ),
                        what="PA with one ready pod",
                    )
                    assert pa["status"]["desiredScale"] == 1
                    deploy = api.get_object(*DEPLOY, NS, "tiny-00001")
                    assert deploy is not None and deploy["spec"]["replicas"] == 1
                    # The replica change and the cold start went out as CloudEvents (binary mode).
                    types = await eventually(
                        lambda: (
                            {h.get("ce-type") for h in received}
                            >= {"dev.thaw.autoscaler.decision", "dev.thaw.autoscaler.coldstart"}
                        ),
                        what="CloudEvents at K_SINK",
                    )
                    assert types
            finally:
                stop.set()
                await world
                await runner.cleanup()
    agents = {r.user_agent for r in api.log if r.user_agent.startswith("thaw-controller")}
    assert agents == {"thaw-controller/cli"}
