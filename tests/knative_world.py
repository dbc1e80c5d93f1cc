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
import datetime
import os
import signal
import subprocess
import time
import uuid
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

from engine.vllm_site.thaw_engine_guard import CREDENTIAL_FILE_ENV, READY_PATH
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
from knative.demand import (
    ACTIVATOR_POD_RULES,
    KNATIVE_NAMESPACE,
    CombinedDemand,
    KnativeActivatorPods,
)
from knative.kube import KubeClient, KubeConfig
from knative.rbac import allows
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


def podautoscaler(
    name: str,
    cls: str = AUTOSCALER_CLASS,
    *,
    reachability: str = "Reachable",
    pool: str | None = None,
    generation: int = 1,
    annotations: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """A PA as Knative creates it for a revision rendered by ``thaw knative render``
    (``annotations``: set, or remove with None)."""
    pa = _podautoscaler(name, cls)
    pa["spec"]["reachability"] = reachability
    pa["metadata"]["labels"]["serving.knative.dev/configurationGeneration"] = str(generation)
    anns = pa["metadata"]["annotations"]
    if pool is not None:
        anns["thaw.dev/pool"] = pool
    for k, v in (annotations or {}).items():
        if v is None:
            anns.pop(k, None)
        else:
            anns[k] = v
    return pa


def _podautoscaler(name: str, cls: str) -> dict[str, Any]:
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


MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"


def controller_allows(group: str, resource: str, verb: str, namespace: str) -> bool:
    """What the controller's RBAC grants: :func:`knative.rbac.allows` (its ClusterRole and its
    Role on Knative's ConfigMaps) and the Role that lists Knative's activator pods
    (:data:`knative.demand.ACTIVATOR_POD_RULES`, in knative-serving)."""
    if allows(group, resource, verb, namespace):
        return True
    pods = {(r.api_group, r.resource, v) for r in ACTIVATOR_POD_RULES for v in r.verbs}
    return namespace == KNATIVE_NAMESPACE and (group, resource, verb) in pods


def shipped_config_autoscaler() -> dict[str, str]:
    """The keys ``manifests/knative/config-autoscaler.yaml`` merges into Knative's ConfigMap."""
    doc = yaml.safe_load((MANIFESTS / "knative" / "config-autoscaler.yaml").read_text())
    return {str(k): str(v) for k, v in (doc.get("data") or {}).items()}


def put_configmap(api: KubeApi, name: str, data: dict[str, str]) -> None:
    api.put_object(
        *CONFIGMAPS,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "knative-serving"},
            "data": data,
        },
    )


@contextlib.asynccontextmanager
async def kube_api(
    config_autoscaler: dict[str, str] | None = None,
) -> AsyncIterator[tuple[KubeApi, str]]:
    """The API harness with Knative's ConfigMaps as installed with Thaw's manifests (or
    ``config_autoscaler``'s data) and the controller's RBAC enforced (:func:`knative.rbac.allows`,
    with the ownerReference admission plugin)."""
    async with KubeApi() as api, kmock.Server(api) as server:
        put_configmap(
            api,
            "config-autoscaler",
            shipped_config_autoscaler() if config_autoscaler is None else config_autoscaler,
        )
        put_configmap(api, "config-deployment", {})
        api.enforce("thaw-controller/", controller_allows)
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


REVISIONS = ("serving.knative.dev", "revisions")
CONFIGMAPS = ("", "configmaps")
T0 = "2026-01-01T00:00:00Z"


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cond(ctype: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    c: dict[str, Any] = {"type": ctype, "status": status}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def _with_times(new: list[dict[str, Any]], old: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Conditions keep their lastTransitionTime while their status stays (knative.dev/pkg)."""
    before = {c["type"]: c for c in old}
    out = []
    for c in new:
        prev = before.get(c["type"])
        same = prev is not None and prev.get("status") == c["status"]
        out.append({**c, "lastTransitionTime": prev["lastTransitionTime"] if same else _now_iso()})
    return out


def sks_status(sks: dict[str, Any], private_ready: int, activators: int = 2) -> dict[str, Any]:
    """What Knative's networking controller writes on an SKS (``serverlessservice.go``
    ``reconcilePublicEndpoints`` and ``serverlessservice_lifecycle.go``): Ready (=
    EndpointsPopulated) only with ready private endpoints; ActivatorEndpointsPopulated True
    when the revision has no ready endpoint or the SKS is in Proxy mode, else False."""
    name = sks["metadata"]["name"]
    mode = (sks.get("spec") or {}).get("mode")
    found = private_ready > 0
    if found:
        ready = [_cond("EndpointsPopulated", "True"), _cond("Ready", "True")]
    else:
        msg = "K8s Service is not ready"
        ready = [
            _cond("EndpointsPopulated", "Unknown", "NoHealthyBackends", msg),
            _cond("Ready", "Unknown", "NoHealthyBackends", msg),
        ]
    in_path = activators > 0 and (not found or mode == "Proxy")
    act = _cond(
        "ActivatorEndpointsPopulated",
        "True" if in_path else "False",
        "ActivatorEndpointsPopulated",
        "Revision is backed by Activator",
    )
    old = (sks.get("status") or {}).get("conditions") or []
    return {
        "serviceName": name,
        "privateServiceName": f"{name}-private",
        "observedGeneration": sks["metadata"]["generation"],
        "conditions": _with_times([act, *ready], old),
    }


def revision_status(pa_status: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """Knative's ``RevisionStatus.PropagateAutoscalerStatus`` (``revision_lifecycle.go``), ported:
    the revision's ``Active``, ``ResourcesAvailable``, ``ContainerHealthy`` and ``Ready`` (the
    living set of the last two) from its PA's status. A PA that goes inactive before its scale
    target was ever initialized fails the revision (``ProgressDeadlineExceeded``: "Initial scale
    was never achieved")."""
    conds = {c["type"]: dict(c) for c in old.get("conditions") or []}
    for t in ("ResourcesAvailable", "ContainerHealthy"):
        conds.setdefault(t, _cond(t, "Unknown"))

    def status_of(t: str, src: dict[str, dict[str, Any]]) -> str:
        return str(src.get(t, {}).get("status", "Unknown"))

    pa = {c["type"]: c for c in pa_status.get("conditions") or []}
    unavailable = (
        status_of("ResourcesAvailable", conds) == "False"
        or status_of("ContainerHealthy", conds) == "False"
    )
    ready = pa.get("Ready")
    if ready is None:
        conds["Active"] = _cond("Active", "Unknown", "Deploying")
        if not unavailable:
            conds["ResourcesAvailable"] = _cond("ResourcesAvailable", "Unknown", "Deploying")
    else:
        initialized = status_of("ScaleTargetInitialized", pa) == "True"
        service = pa_status.get("serviceName", "")
        if initialized and not unavailable:
            conds["ResourcesAvailable"] = _cond("ResourcesAvailable", "True")
            conds["ContainerHealthy"] = _cond("ContainerHealthy", "True")
        if status_of("ResourcesAvailable", conds) == "True" and (not service or not initialized):
            conds["ResourcesAvailable"] = _cond("ResourcesAvailable", "Unknown", "Deploying")
        if ready["status"] == "Unknown":
            conds["Active"] = _cond(
                "Active", "Unknown", ready.get("reason", ""), ready.get("message", "")
            )
        elif ready["status"] == "False":
            if not initialized and not unavailable and service:
                conds["ResourcesAvailable"] = _cond(
                    "ResourcesAvailable",
                    "False",
                    "ProgressDeadlineExceeded",
                    "Initial scale was never achieved",
                )
            conds["Active"] = _cond(
                "Active", "False", ready.get("reason", ""), ready.get("message", "")
            )
        else:
            conds["Active"] = _cond("Active", "True")
    # Ready: the living condition set of ResourcesAvailable and ContainerHealthy.
    deps = [conds["ResourcesAvailable"], conds["ContainerHealthy"]]
    failed = next((c for c in deps if c["status"] == "False"), None)
    unknown = next((c for c in deps if c["status"] != "True"), None)
    if failed is not None:
        conds["Ready"] = _cond(
            "Ready", "False", failed.get("reason", ""), failed.get("message", "")
        )
    elif unknown is not None:
        conds["Ready"] = _cond(
            "Ready", "Unknown", unknown.get("reason", ""), unknown.get("message", "")
        )
    else:
        conds["Ready"] = _cond("Ready", "True")
    order = ["Active", "ContainerHealthy", "Ready", "ResourcesAvailable"]
    return {
        "observedGeneration": 1,
        "actualReplicas": pa_status.get("actualScale"),
        "desiredReplicas": pa_status.get("desiredScale"),
        "conditions": _with_times([conds[t] for t in order], old.get("conditions") or []),
    }


def revision_condition(api: KubeApi, name: str, ctype: str = "Ready") -> str:
    """The status of a revision's condition as the revision reconciler stand-in wrote it."""
    rev = api.get_object(*REVISIONS, NS, name) or {}
    for c in (rev.get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return str(c["status"])
    return "Unknown"


def ever_failed(api: KubeApi, name: str) -> list[dict[str, Any]]:
    """Every stored version of the revision whose Ready was False."""
    return [
        r
        for r in api.history(*REVISIONS)
        if r["metadata"]["name"] == name
        and any(
            c["type"] == "Ready" and c["status"] == "False"
            for c in (r.get("status") or {}).get("conditions") or []
        )
    ]


async def knative_and_kubelet(
    api: KubeApi,
    engine_port: int,
    stop: asyncio.Event,
    pod_delay_s: float = 0.3,
    activators: int = 2,
) -> None:
    """What the cluster does on its own, every 20 ms, until ``stop``:

    - Knative's networking controller (:func:`sks_status`): an SKS gets ``serviceName``,
      ``privateServiceName``, ``observedGeneration``, Ready only once the revision has a ready
      private endpoint, ``ActivatorEndpointsPopulated`` only while the activator backs it;
    - the Deployment controller and kubelet: each replica a Deployment asks for becomes a pod
      that is ready ``pod_delay_s`` (real seconds) after it was asked for, listed in the
      revision's private EndpointSlice (the emulator on 127.0.0.1); replicas above the count
      are removed at once; at 0 the slice goes;
    - Knative's revision reconciler (:func:`revision_status`): each PA's status propagated to
      a Revision object named after it.
    """
    asked: dict[str, list[float]] = {}  # deployment -> when each replica was asked for
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        now = loop.time()
        ready_by_revision: dict[str, int] = {}
        for (g, p, ns, name), dep in list(api.objects.items()):
            if (g, p) != DEPLOY:
                continue
            replicas = int(dep["spec"].get("replicas", 0))
            times = asked.setdefault(name, [])
            del times[replicas:]
            times += [now] * (replicas - len(times))
            up = sum(1 for t in times if now - t >= pod_delay_s)
            revision = (dep["metadata"].get("labels") or {}).get(REVISION_LABEL, name)
            ready_by_revision[revision] = up
            slice_name = f"{name}-abcde"
            have = api.get_object(*SLICES, ns, slice_name)
            if up == 0:
                if have is not None:
                    api.delete_object(*SLICES, ns, slice_name)
                continue
            want = endpoint_slice(slice_name, ns, revision, engine_port, pods=up)
            if have is None or have.get("endpoints") != want["endpoints"]:
                api.put_object(*SLICES, want)
        propagate_statuses(api, ready_by_revision, activators)
        await asyncio.sleep(0.02)


def propagate_statuses(
    api: KubeApi, ready_by_revision: dict[str, int], activators: int = 2
) -> None:
    """Knative's networking controller (each SKS's status from its revision's ready private
    endpoints) and revision reconciler (each PA's status propagated to its Revision), once."""
    for (g, p, _ns, name), sks in list(api.objects.items()):
        if (g, p) != SKS:
            continue
        revision = (sks["metadata"].get("labels") or {}).get(REVISION_LABEL, name)
        new = sks_status(sks, ready_by_revision.get(revision, 0), activators)
        if new != sks.get("status"):
            sks = copy.deepcopy(sks)
            sks["status"] = new
            api.put_object(g, p, sks)
    for (g, p, ns, name), pa in list(api.objects.items()):
        if (g, p) != PA or not pa.get("status"):
            continue
        rev = api.get_object(*REVISIONS, ns, name) or {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Revision",
            "metadata": {"name": name, "namespace": ns},
        }
        new = revision_status(pa["status"], rev.get("status") or {})
        if new != rev.get("status"):
            rev["status"] = new
            api.put_object(*REVISIONS, rev)


def endpoint_slice(
    name: str,
    ns: str,
    revision: str,
    port: int,
    *,
    service_type: str = PRIVATE,
    address: str = "127.0.0.1",
    pods: int = 1,
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
                "targetRef": {
                    "kind": "Pod",
                    "name": f"{revision}-pod" + (f"-{i}" if i else ""),
                    "namespace": ns,
                },
            }
            for i in range(pods)
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
    watch_timeout_s: float = 300.0,
    policy: ThawConfig | None = None,
    credential_file: Path | None = None,
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
        watch_timeout_s=watch_timeout_s,
        credential_file=str(credential_file or tmp_path / "no-credential"),
    )
    stop = asyncio.Event()
    async with (
        KubeClient(cfg, user_agent=f"thaw-controller/{identity}") as kube,
        aiohttp.ClientSession() as http,
    ):
        clock = FastClock(speed)
        demand = CombinedDemand([KnativeActivatorPods(kube, http, clock, pods_every_s=1.0)])
        ctl = Controller(
            kube, http, policy or config(grace_s), demand, clock, settings, reports=reports
        )
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


# -- engine pods on one emulated GPU (warm pools on a shared GPU) ------------------------------

NODE = "gpu-node-1"
PODS = ("", "pods")
#: Kubernetes' pod phases as the ReplicaSet controller ranks them (controller_utils.go).
_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


@dataclass
class EngineRevision:
    """One revision whose pods are emulators on the shared GPU."""

    model: str
    pool: str
    utilization: float


@dataclass
class _PodProc:
    name: str
    ns: str
    revision: str
    ip: str
    seq: int
    proc: Any  # subprocess.Popen[bytes]
    log: Path
    ready: bool = False
    deleting_since: float | None = None


class PodWorld:
    """The cluster under a revision's pods, for engines on one emulated GPU, until ``stop``:

    - the ReplicaSet controller: a Deployment's replicas become Pods (``spec.nodeName`` the one
      node, ``status.podIP`` a loopback address of its own, phase Running), each a real ``thaw
      emulator`` on that address and the engine port, behind Thaw's engine guard (the
      credential file) and on the GPU ledger ``gpu_id`` (a start or wake that would not fit
      fails as it would OOM). On scale-down the pods to delete are ranked as
      ``ActivePodsWithRanks`` ranks them: unassigned before assigned, Pending before Running,
      not ready before ready, then the lower ``controller.kubernetes.io/pod-deletion-cost``,
      then the newer pod; a deleted pod gets ``deletionTimestamp`` until its process is gone;
    - the kubelet: readiness is the guard's ``/thaw/ready`` (503 while asleep), probed every
      50 ms, written as the pod's ``Ready`` condition;
    - the EndpointSlice controller: one private slice per revision listing its pods with an
      address, ``ready`` as the pod's (a sleeper is listed not ready);
    - Knative's networking controller and revision reconciler, as :func:`knative_and_kubelet`.

    ``created`` lists every pod name ever created, ``deleted`` every pod deleted, in order.
    """

    def __init__(
        self,
        api: KubeApi,
        tmp_path: Path,
        engine_port: int,
        credential_file: Path,
        revisions: dict[str, EngineRevision],
        gpu_memory_bytes: int,
        load_time_s: float = 0.3,
    ) -> None:
        self.api = api
        self.tmp_path = tmp_path
        self.engine_port = engine_port
        self.credential_file = credential_file
        self.revisions = revisions
        self.gpu_memory_bytes = gpu_memory_bytes
        self.load_time_s = load_time_s
        self.ledger_dir = tmp_path / "gpu-ledger"
        self.ledger_dir.mkdir(exist_ok=True)
        self.gpu_id = f"gpu-{uuid.uuid4().hex[:6]}"
        self.pods: dict[str, _PodProc] = {}
        self.created: list[str] = []
        self.deleted: list[str] = []
        self._seq = 0

    def _start(self, ns: str, revision: str) -> None:
        rev = self.revisions[revision]
        self._seq += 1
        name = f"{revision}-deployment-{uuid.uuid4().hex[:5]}"
        ip = f"127.0.0.{10 + self._seq}"
        argv = thaw_argv(
            "emulator",
            "--host",
            ip,
            "--port",
            str(self.engine_port),
            "--served-model-name",
            rev.model,
            "--load-time-s",
            str(self.load_time_s),
            "--gpu-id",
            self.gpu_id,
            "--gpu-memory-bytes",
            str(self.gpu_memory_bytes),
            "--gpu-memory-utilization",
            str(rev.utilization),
            "--gpu-ledger-dir",
            str(self.ledger_dir),
        )
        log = self.tmp_path / f"{name}.log"
        out = open(log, "wb")
        proc = subprocess.Popen(
            argv,
            env={**os.environ, CREDENTIAL_FILE_ENV: str(self.credential_file)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        self.pods[name] = _PodProc(name, ns, revision, ip, self._seq, proc, log)
        self.created.append(name)
        self.api.put_object(
            *PODS,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": {REVISION_LABEL: revision},
                    "annotations": {MODEL_ANNOTATION: rev.model, "thaw.dev/pool": rev.pool},
                },
                "spec": {"nodeName": NODE, "containers": [{"name": "emulator"}]},
                "status": {
                    "phase": "Running",
                    "podIP": ip,
                    "conditions": [{"type": "Ready", "status": "False"}],
                },
            },
        )

    def _rank(self, p: _PodProc) -> tuple[int, int, int, int, int]:
        obj = self.api.get_object(*PODS, p.ns, p.name) or {}
        phase = str((obj.get("status") or {}).get("phase", "Pending"))
        anns = (obj.get("metadata") or {}).get("annotations") or {}
        try:
            cost = int(anns.get("controller.kubernetes.io/pod-deletion-cost", 0))
        except ValueError:
            cost = 0
        assigned = 1 if (obj.get("spec") or {}).get("nodeName") else 0
        return (assigned, _PHASE_RANK.get(phase, 2), int(p.ready), cost, -p.seq)

    def _delete(self, p: _PodProc, now: float) -> None:
        p.deleting_since = now
        obj = self.api.get_object(*PODS, p.ns, p.name)
        if obj is not None:
            obj = copy.deepcopy(obj)
            obj["metadata"]["deletionTimestamp"] = _now_iso()
            self.api.put_object(*PODS, obj)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.proc.pid, signal.SIGTERM)
        self.deleted.append(p.name)

    def ledger_refusals(self) -> list[str]:
        """Lines of the engines' logs where the GPU ledger refused a start or a wake."""
        out = []
        for log in self.tmp_path.glob("*-deployment-*.log"):
            out += [line for line in log.read_text().splitlines() if "gpu ledger: refused" in line]
        return out

    def pod_names(self, revision: str, *, deleting: bool = False) -> list[str]:
        return sorted(
            p.name
            for p in self.pods.values()
            if p.revision == revision and (deleting or p.deleting_since is None)
        )

    def address(self, name: str) -> str:
        return self.pods[name].ip

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as http:
            try:
                while not stop.is_set():
                    await self._step(http, loop.time())
                    await asyncio.sleep(0.05)
            finally:
                for p in self.pods.values():
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.proc.pid, signal.SIGKILL)
                for p in self.pods.values():
                    p.proc.wait(timeout=10)

    async def _probe(self, http: aiohttp.ClientSession, p: _PodProc) -> bool:
        if p.proc.poll() is not None:
            return False
        try:
            url = f"http://{p.ip}:{self.engine_port}{READY_PATH}"
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _step(self, http: aiohttp.ClientSession, now: float) -> None:
        api = self.api
        # The ReplicaSet controller.
        for (g, p, ns, name), dep in list(api.objects.items()):
            if (g, p) != DEPLOY:
                continue
            revision = (dep["metadata"].get("labels") or {}).get(REVISION_LABEL, name)
            if revision not in self.revisions:
                continue
            replicas = int(dep["spec"].get("replicas", 0))
            live = [
                q for q in self.pods.values() if q.revision == revision and not q.deleting_since
            ]
            for _ in range(replicas - len(live)):
                self._start(ns, revision)
            for q in sorted(live, key=self._rank)[: max(0, len(live) - replicas)]:
                self._delete(q, now)
        # The kubelet: processes gone, readiness.
        for q in list(self.pods.values()):
            if q.deleting_since is not None:
                if q.proc.poll() is None and now - q.deleting_since > 10:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(q.proc.pid, signal.SIGKILL)
                if q.proc.poll() is not None:
                    api.delete_object(*PODS, q.ns, q.name)
                    del self.pods[q.name]
                continue
            ready = await self._probe(http, q)
            if ready != q.ready:
                q.ready = ready
                obj = copy.deepcopy(api.get_object(*PODS, q.ns, q.name) or {})
                if obj:
                    obj["status"]["conditions"] = [
                        {"type": "Ready", "status": "True" if ready else "False"}
                    ]
                    api.put_object(*PODS, obj)
        # The EndpointSlice controller (private slices: every pod with an address).
        ready_by_revision: dict[str, int] = {}
        for revision in self.revisions:
            pods = [q for q in self.pods.values() if q.revision == revision]
            ns = pods[0].ns if pods else NS
            ready_by_revision[revision] = sum(1 for q in pods if q.ready and not q.deleting_since)
            name = f"{revision}-private-abcde"
            want = endpoint_slice(name, ns, revision, self.engine_port, pods=0)
            want["endpoints"] = [
                {
                    "addresses": [q.ip],
                    "conditions": {
                        "ready": q.ready and q.deleting_since is None,
                        "serving": q.ready,
                        "terminating": q.deleting_since is not None,
                    },
                    "nodeName": NODE,
                    "targetRef": {"kind": "Pod", "name": q.name, "namespace": q.ns},
                }
                for q in sorted(pods, key=lambda q: q.name)
            ]
            have = api.get_object(*SLICES, ns, name)
            if have is None or have.get("endpoints") != want["endpoints"]:
                api.put_object(*SLICES, want)
        # Knative's networking controller and revision reconciler.
        propagate_statuses(api, ready_by_revision)
