"""The world Thaw's Knative controller runs in, for tests: the Kubernetes API harness over HTTP,
stand-ins for what only a cluster has (Knative's networking controller marking SKSs ready, the
kubelet publishing a pod's endpoint once the Deployment has replicas), a real ``thaw emulator``
as the pod, Knative's activator (one pod of :mod:`knative_activator_standin`, whose exporter
reports the requests it holds per revision), and the CRD schemas.

Time: the controller gets a :class:`FastClock` (its seconds pass ``speed`` times faster than the
machine's), so a 6 s stable window takes 0.6 s; nothing asserts on wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import kmock
import yaml
from knative_activator_standin import KnativeActivator, knative_activator, register
from kube_api import KubeApi
from procs import child, free_port, thaw_argv, wait_http_ok

from knative.contract import (
    AUTOSCALER_CLASS,
    CLASS_ANNOTATION,
    INITIAL_SCALE_ANNOTATION,
    MIN_SCALE_ANNOTATION,
    MODEL_ANNOTATION,
    PRIVATE,
    REVISION_LABEL,
    SERVICE_LABEL,
    SERVICE_TYPE_LABEL,
)
from knative.controller import Controller, ControllerSettings, Reports
from knative.demand import CombinedDemand, KnativeActivatorPods
from knative.kube import KubeClient, KubeConfig
from policy_file.schema import ThawConfig

KNATIVE = Path(__file__).resolve().parent / "data" / "knative"  # copied from knative/serving
MODEL = "tiny"
NS = "llm"
PA = ("autoscaling.internal.knative.dev", "podautoscalers")
SKS = ("networking.internal.knative.dev", "serverlessservices")
DEPLOY = ("apps", "deployments")
SLICES = ("discovery.k8s.io", "endpointslices")
LEASES = ("coordination.k8s.io", "leases")


class FastClock:
    """Monotonic and wall seconds that pass ``speed`` times faster than real ones."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self._t0 = time.monotonic()
        self._wall0 = time.time()

    def monotonic(self) -> float:
        return (time.monotonic() - self._t0) * self.speed

    def wall(self) -> float:
        return self._wall0 + self.monotonic()


def crd_schema(name: str) -> dict[str, Any]:
    """The openAPIV3Schema of a CRD in tests/data/knative/, made strict: objects with declared
    properties reject unknown ones (the API server would prune them silently: a typo in a field
    name is a bug the test must catch)."""
    docs = [d for d in yaml.safe_load_all((KNATIVE / name).read_text()) if d]
    crd = next(d for d in docs if d.get("kind") == "CustomResourceDefinition")
    schema: dict[str, Any] = copy.deepcopy(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])

    def strict(node: Any) -> None:
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
                and "additionalProperties" not in node
            ):
                node["additionalProperties"] = False
            for v in node.values():
                strict(v)
        elif isinstance(node, list):
            for v in node:
                strict(v)

    strict(schema)
    return schema


def deployment(name: str, replicas: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "labels": {REVISION_LABEL: name}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {REVISION_LABEL: name}}},
    }


def podautoscaler(name: str, cls: str = AUTOSCALER_CLASS) -> dict[str, Any]:
    """A PA as Knative creates it for a revision rendered by ``thaw knative render``."""
    return {
        "apiVersion": "autoscaling.internal.knative.dev/v1alpha1",
        "kind": "PodAutoscaler",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {
                REVISION_LABEL: name,
                SERVICE_LABEL: "tiny-cpu",
                "serving.knative.dev/configuration": "tiny-cpu",
            },
            "annotations": {
                CLASS_ANNOTATION: cls,
                MIN_SCALE_ANNOTATION: "0",
                INITIAL_SCALE_ANNOTATION: "0",
                MODEL_ANNOTATION: MODEL,
                "autoscaling.knative.dev/metric": "concurrency",
            },
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "protocolType": "http1",
            "reachability": "Reachable",
        },
    }


def config(grace_s: float = 1.0) -> ThawConfig:
    return ThawConfig.model_validate(
        {
            "models": [
                {
                    "name": MODEL,
                    "engine": {"kind": "emulator"},
                    "autoscaling": {
                        "min_replicas": 0,
                        "max_replicas": 2,
                        "scale_to_zero_grace_s": grace_s,
                        "stable_window_s": 6.0,
                    },
                }
            ]
        }
    )


@contextlib.contextmanager
def emulator(tmp_path: Path) -> Iterator[int]:
    """A real ``thaw emulator`` on 127.0.0.1 (the revision's pod); yields its port."""
    port = free_port()
    argv = thaw_argv(
        "emulator",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        MODEL,
        "--load-time-s",
        "0",
    )
    with child(argv, log_path=tmp_path / "emulator.log") as proc:
        wait_http_ok(f"http://127.0.0.1:{port}/health", 30, proc)
        yield port


@dataclass
class Recorder:
    """Keeps what the controller reports (a :class:`Reports` that remembers instead of sending)."""

    decisions: list[tuple[str, int, int]] = field(default_factory=list)
    cold_starts: list[tuple[str, str, float]] = field(default_factory=list)

    def decision(
        self, model: str, from_replicas: int, to_replicas: int, reason: str, panic: bool
    ) -> None:
        self.decisions.append((model, from_replicas, to_replicas))

    def cold_start(self, model: str, tier: str, seconds: float) -> None:
        self.cold_starts.append((model, tier, seconds))


@contextlib.asynccontextmanager
async def activator(api: KubeApi, server: str) -> AsyncIterator[KnativeActivator]:
    """Knative's activator as the controller sees it: one pod in knative-serving (Knative's
    manifest) whose exporter serves ``kn_revision_request_queued``; ``act.held[NS, revision] =
    n`` says n requests wait there for that revision."""
    async with knative_activator(server) as act:
        register(api, act, "activator-5b8f9c7d6d-q2w7x")
        yield act


@contextlib.asynccontextmanager
async def kube_api() -> AsyncIterator[tuple[KubeApi, str]]:
    async with KubeApi() as api, kmock.Server(api) as server:
        yield api, str(server.url).rstrip("/")


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "harness", "cluster": {"server": server}}],
                "users": [{"name": "thaw", "user": {"token": "test-token"}}],
                "contexts": [
                    {"name": "harness", "context": {"cluster": "harness", "user": "thaw"}}
                ],
                "current-context": "harness",
            }
        )
    )
    return path


async def knative_and_kubelet(
    api: KubeApi, engine_port: int, stop: asyncio.Event, pod_delay_s: float = 0.3
) -> None:
    """What the cluster does on its own, every 20 ms, until ``stop``:

    - Knative's networking controller: an SKS gets ``serviceName``, ``privateServiceName``,
      Ready and ActivatorEndpointsPopulated True, and ``observedGeneration`` once it has seen a
      new spec (a new mode);
    - the Deployment controller and kubelet: ``pod_delay_s`` after a Deployment gets replicas, an
      EndpointSlice of the revision lists the emulator (127.0.0.1) as ready; at 0 it is removed.
    """
    wanted_since: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        for (g, p, _ns, name), sks in list(api.objects.items()):
            status = sks.get("status") or {}
            seen = status.get("observedGeneration") == sks["metadata"]["generation"]
            if (g, p) == SKS and not (status.get("privateServiceName") and seen):
                sks = copy.deepcopy(sks)
                sks["status"] = {
                    "serviceName": name,
                    "privateServiceName": f"{name}-private",
                    "observedGeneration": sks["metadata"]["generation"],
                    "conditions": [
                        {"type": t, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
                        for t in ("ActivatorEndpointsPopulated", "EndpointsPopulated", "Ready")
                    ],
                }
                api.put_object(g, p, sks)
        for (g, p, ns, name), dep in list(api.objects.items()):
            if (g, p) != DEPLOY:
                continue
            replicas = int(dep["spec"].get("replicas", 0))
            slice_name = f"{name}-abcde"
            have = api.get_object(*SLICES, ns, slice_name) is not None
            if replicas > 0 and not have:
                since = wanted_since.setdefault(name, loop.time())
                if loop.time() - since >= pod_delay_s:
                    api.put_object(*SLICES, endpoint_slice(slice_name, ns, name, engine_port))
            elif replicas == 0:
                wanted_since.pop(name, None)
                if have:
                    api.delete_object(*SLICES, ns, slice_name)
        await asyncio.sleep(0.02)


def endpoint_slice(
    name: str,
    ns: str,
    revision: str,
    port: int,
    *,
    service_type: str = PRIVATE,
    address: str = "127.0.0.1",
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {
                REVISION_LABEL: revision,
                SERVICE_TYPE_LABEL: service_type,
                "kubernetes.io/service-name": f"{revision}-private"
                if service_type == PRIVATE
                else revision,
            },
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [address],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "targetRef": {"kind": "Pod", "name": f"{revision}-pod", "namespace": ns},
            }
        ],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


@contextlib.asynccontextmanager
async def controller(
    server: str,
    tmp_path: Path,
    engine_port: int,
    identity: str = "a",
    grace_s: float = 1.0,
    speed: float = 10.0,
    lease_duration_s: float = 15.0,
    reports: Reports | None = None,
    release_on_stop: bool = True,
) -> AsyncIterator[Controller]:
    """A controller running against the harness (kubeconfig auth), stopped on exit."""
    cfg = KubeConfig.load(
        str(write_kubeconfig(tmp_path / f"kubeconfig-{identity}", server)), None, False
    )
    settings = ControllerSettings(
        namespace=None,
        tick_s=0.05,
        engine_port=engine_port,
        lease_namespace="thaw-system",
        identity=identity,
        lease_duration_s=lease_duration_s,
        renew_every_s=lease_duration_s / 3,
        release_on_stop=release_on_stop,
    )
    stop = asyncio.Event()
    async with (
        KubeClient(cfg, user_agent=f"thaw-controller/{identity}") as kube,
        aiohttp.ClientSession() as http,
    ):
        clock = FastClock(speed)
        demand = CombinedDemand([KnativeActivatorPods(kube, http, clock, pods_every_s=1.0)])
        ctl = Controller(kube, http, config(grace_s), demand, clock, settings, reports=reports)
        task = asyncio.create_task(ctl.run(stop))
        try:
            yield ctl
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=10)


async def eventually(check: Any, timeout_s: float = 20.0, what: str = "") -> Any:
    """Poll ``check()`` every 20 ms until it returns something truthy; fail after timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)
