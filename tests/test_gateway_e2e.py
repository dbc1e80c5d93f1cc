"""The cluster's request path end to end, with the real Envoy as the gateway: a model at zero
called through the gateway waits at Knative's activator (a stand-in exporting the real metric
text), the controller reads that queue from the activator pod and scales the one revision the
gateway routes to; once its pod is ready the requests go straight to it.

Defect 1: demand at zero reached the controller only from Thaw's own activator (Knative's
activator's queue was never read: no exporter turned on, no scrape of its pods).
Defect 2: demand was keyed by model, so every revision of the model scaled from one request."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gateway_world import envoy, gateway_controller, xds_server
from knative_activator_standin import knative_activator, register
from knative_world import (
    DEPLOY,
    MODEL,
    NS,
    PA,
    deployment,
    emulator,
    eventually,
    knative_and_kubelet,
    kube_api,
    podautoscaler,
)

from knative.contract import POOL_ANNOTATION
from knative.gateway import Gateway
from knative.gateway_envoy import GatewayOptions
from policy_file.schema import ThawConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with emulator(tmp_path_factory.mktemp("engine")) as port:
        yield port


def policy() -> ThawConfig:
    """The example policy's two pools (manifests/policy.yaml) and one model that fits both."""
    return ThawConfig.model_validate(
        {
            "models": [
                {
                    "name": MODEL,
                    "engine": {"kind": "emulator"},
                    "weights_bytes": 16_060_522_496,
                    "autoscaling": {
                        "min_replicas": 0,
                        "max_replicas": 2,
                        "scale_to_zero_grace_s": 30.0,
                        "stable_window_s": 6.0,
                    },
                }
            ],
            "cluster": {
                "namespace": NS,
                "pools": [
                    {
                        "name": "l4",
                        "gpu_type": "NVIDIA L4",
                        "gpu_memory_bytes": 24_152_899_584,
                        "cost_per_hour_usd": 0.8,
                        "max_replicas": 8,
                    },
                    {
                        "name": "h100",
                        "gpu_type": "NVIDIA H100 80GB HBM3",
                        "gpu_memory_bytes": 85_520_809_984,
                        "cost_per_hour_usd": 4.0,
                        "max_replicas": 2,
                    },
                ],
            },
        }
    )


def revision(name: str, pool: str, reachability: str = "Reachable") -> dict[str, Any]:
    pa = podautoscaler(name)
    pa["metadata"]["annotations"][POOL_ANNOTATION] = pool
    pa["spec"]["reachability"] = reachability
    return pa


def replicas(api: Any, name: str) -> int:
    return int((api.get_object(*DEPLOY, NS, name) or {})["spec"].get("replicas") or 0)


async def chat(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with http.post(f"{url}/v1/chat/completions", json=body) as r:
        return r.status, await r.json()


async def test_scale_from_zero_through_the_gateway_scales_only_the_routed_revision(
    tmp_path: Path, engine_port: int
) -> None:
    async with (
        kube_api() as (api, server),
        knative_activator(server) as act,
        xds_server() as xds,
        aiohttp.ClientSession() as http,
    ):
        register(api, act, "activator-5b8f9c7d6d-q2w7x")
        # The model on two pools, and an old revision Knative's Route no longer sends to.
        for name, pool, reach in [
            ("tiny-l4-00001", "l4", "Unreachable"),
            ("tiny-l4-00002", "l4", "Reachable"),
            ("tiny-h100-00001", "h100", "Reachable"),
        ]:
            api.put_object(*DEPLOY, deployment(name))
            api.put_object(*PA, revision(name, pool, reach))
        stop = asyncio.Event()
        world = asyncio.create_task(knative_and_kubelet(api, engine_port, stop))
        gateway = Gateway(xds, GatewayOptions(public_address=act.ip, public_port=act.port))
        try:
            async with (
                gateway_controller(server, tmp_path, engine_port, gateway, policy()),
                envoy(tmp_path, xds.port or 0) as gw,
            ):
                # The routed revision: the current one on the cheapest pool the model fits.
                assert gateway.routes[MODEL].revision.revision == "tiny-l4-00002"
                first = asyncio.create_task(chat(http, gw.url))
                # Held at Knative's activator, for that revision only...
                await eventually(lambda: act.queued.get((NS, "tiny-l4-00002")), what="queued")
                # ...which the controller reads from the activator pod: 0 -> 1.
                await eventually(lambda: replicas(api, "tiny-l4-00002") == 1, what="scale up")
                status, body = await asyncio.wait_for(first, timeout=30)
                assert status == 200 and body["object"] == "chat.completion"
                # Once the pod is routed, requests go straight to it, not via the activator.
                await eventually(
                    lambda: gateway.routes[MODEL].revision.ready, what="the pod in the routes"
                )
                await asyncio.sleep(0.5)  # the gateway's poll turnaround
                via_activator = len(act.seen)
                for _ in range(3):
                    assert (await chat(http, gw.url))[0] == 200
                assert len(act.seen) == via_activator
                # One request, one revision: the other pool and the old revision never scaled.
                for other in ("tiny-l4-00001", "tiny-h100-00001"):
                    assert replicas(api, other) == 0, other
                    assert not [
                        r
                        for r in api.log
                        if r.resource == "deployments/scale"
                        and r.verb == "patch"
                        and r.name == other
                        and r.body[0]["value"] > 0
                    ], other
        finally:
            stop.set()
            await world
