"""Knative's activator, played for the tests (what only a cluster has: Knative's own binary).

Built from Knative's own files in ``tests/data/knative/<version>/`` (see SOURCES.txt):

- :func:`activator_pod` — the Pod Knative's activator Deployment (``activator.yaml``) gets from
  the Deployment controller: the template's labels, spec and ports, a Running status with an IP
  (its ``metrics`` containerPort set to where the stand-in's exporter listens, since two
  stand-ins share this machine);
- :class:`ExporterText` — the exporter's text (``activator-metrics.txt``) with live values: the
  ``kn_revision_request_{queued,active,concurrency}`` samples are rewritten from the stand-in's
  counts, in the fixture's exact shape (labels, their order, the scope labels, HELP/TYPE); every
  other family is served as written;
- :class:`KnativeActivator` — a request port (the public Service's target in SKS Proxy mode)
  that finds the revision from ``Knative-Serving-Revision`` / ``Knative-Serving-Namespace``
  (else from a ``{revision}.{namespace}.svc.cluster.local`` Host, as
  ``pkg/activator/handler/context_handler.go`` does; neither: 404), counts the request queued,
  waits until the kubelet stand-in lists a ready endpoint in the revision's private
  EndpointSlice (read from the Kubernetes API harness over HTTP, as the real activator watches
  it), then proxies it there (queued -> active) and streams the answer back; and the exporter's
  ``/metrics`` on its own port. ``held[(ns, rev)] = n`` adds requests the test says are queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import yaml
from procs import free_port

from knative.contract import PRIVATE, REVISION_LABEL, SERVICE_TYPE_LABEL
from knative.demand import KNATIVE_NAMESPACE

KNATIVE = Path(__file__).resolve().parent / "data" / "knative"
#: The Knative releases the README supports, each with its fixtures.
VERSIONS = ("v1.22.0", "v1.23.0")
REVISION_HEADER = "Knative-Serving-Revision"
NAMESPACE_HEADER = "Knative-Serving-Namespace"
LIVE = (
    "kn_revision_request_queued",
    "kn_revision_request_active",
    "kn_revision_request_concurrency",
)

Key = tuple[str, str]


def activator_manifest(version: str) -> list[dict[str, Any]]:
    """The documents of Knative's ``config/core/deployments/activator.yaml`` at ``version``."""
    text = (KNATIVE / version / "activator.yaml").read_text()
    return [d for d in yaml.safe_load_all(text) if d]


def activator_pod(
    version: str, name: str, ip: str, metrics_port: int | None = None, ready: bool = True
) -> dict[str, Any]:
    """A pod of Knative's activator Deployment, as the Deployment controller and kubelet make it."""
    dep = next(d for d in activator_manifest(version) if d["kind"] == "Deployment")
    template = copy.deepcopy(dep["spec"]["template"])
    spec = template["spec"]
    if metrics_port is not None:
        for c in spec["containers"]:
            for p in c.get("ports") or []:
                if p.get("name") == "metrics":
                    p["containerPort"] = metrics_port
    condition = "True" if ready else "False"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": dep["metadata"]["namespace"],
            "labels": {**template["metadata"]["labels"], "pod-template-hash": "5b8f9c7d6d"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"{dep['metadata']['name']}-5b8f9c7d6d",
                    "uid": "00000000-0000-0000-0000-000000000001",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {"type": t, "status": condition}
                for t in ("Initialized", "Ready", "ContainersReady")
            ],
        },
    }


_SAMPLE = re.compile(
    r"^(?P<name>[a-z_]+)"
    r'\{k8s_namespace_name="[^"]*",kn_revision_name="[^"]*",(?P<rest>[^}]*)\} \S+$'
)


class ExporterText:
    """The fixture's exporter text with the per-revision gauges set from live counts."""

    def __init__(self, version: str) -> None:
        self.lines = (KNATIVE / version / "activator-metrics.txt").read_text().splitlines()
        scope = {}
        for line in self.lines:
            m = _SAMPLE.match(line)
            if m and m["name"] in LIVE:
                scope[m["name"]] = m["rest"]
        assert set(scope) == set(LIVE), f"{version}: the fixture lacks samples of {LIVE}"
        self.scope = scope

    def render(self, values: dict[str, dict[Key, int]]) -> str:
        out: list[str] = []
        for line in self.lines:
            m = _SAMPLE.match(line)
            if m and m["name"] in LIVE:
                continue  # the fixture's own samples: replaced below
            out.append(line)
            if line.startswith("# TYPE "):
                name = line.split()[2]
                if name in LIVE:
                    for (ns, rev), n in sorted(values.get(name, {}).items()):
                        out.append(
                            f'{name}{{k8s_namespace_name="{ns}",kn_revision_name="{rev}",'
                            f"{self.scope[name]}}} {n}"
                        )
        return "\n".join(out) + "\n"


@dataclass
class KnativeActivator:
    """One activator pod: ``url`` takes requests (headers name the revision), ``metrics_url``
    is its exporter."""

    version: str
    ip: str
    kube_url: str
    held: dict[Key, int] = field(default_factory=dict)
    queued: dict[Key, int] = field(default_factory=dict)
    active: dict[Key, int] = field(default_factory=dict)
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    port: int = 0
    metrics_port: int = 0
    wait_s: float = 60.0

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.ip}:{self.metrics_port}/metrics"

    def pod(self, name: str) -> dict[str, Any]:
        return activator_pod(self.version, name, self.ip, self.metrics_port)

    def values(self) -> dict[str, dict[Key, int]]:
        queued = {
            k: self.queued.get(k, 0) + self.held.get(k, 0) for k in {*self.queued, *self.held}
        }
        concurrency = {k: queued.get(k, 0) + self.active.get(k, 0) for k in {*queued, *self.active}}
        return {
            "kn_revision_request_queued": queued,
            "kn_revision_request_active": dict(self.active),
            "kn_revision_request_concurrency": concurrency,
        }

    async def metrics(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        text = self.exporter.render(self.values())
        return aiohttp.web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def _ready_endpoint(self, http: aiohttp.ClientSession, ns: str, rev: str) -> str | None:
        selector = f"{REVISION_LABEL}={rev},{SERVICE_TYPE_LABEL}={PRIVATE}"
        url = f"{self.kube_url}/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"
        async with http.get(url, params={"labelSelector": selector}) as resp:
            listing = await resp.json()
        for eps in listing.get("items") or []:
            port = next(
                (p["port"] for p in eps.get("ports") or [] if p.get("name") == "http"), None
            )
            for ep in eps.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready") is not False and port:
                    return f"http://{ep['addresses'][0]}:{port}"
        return None

    async def handle(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        ns = request.headers.get(NAMESPACE_HEADER, "")
        rev = request.headers.get(REVISION_HEADER, "")
        if not ns or not rev:
            parts = request.host.split(".")
            if len(parts) >= 4 and parts[2] == "svc":
                rev, ns = parts[0], parts[1]
        if not ns or not rev:
            return aiohttp.web.Response(status=404, text="Error getting active endpoint")
        self.seen.append((ns, rev, {k.lower(): v for k, v in request.headers.items()}))
        body = await request.read()
        key = (ns, rev)
        self.queued[key] = self.queued.get(key, 0) + 1
        target: str | None = None
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.wait_s
            while target is None and loop.time() < deadline:
                target = await self._ready_endpoint(self.http, ns, rev)
                if target is None:
                    await asyncio.sleep(0.05)
        finally:
            self.queued[key] -= 1
        if target is None:
            return aiohttp.web.Response(status=503, text="activator: timed out waiting for a pod")
        self.active[key] = self.active.get(key, 0) + 1
        try:
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower() not in ("host", "content-length")
            }
            async with self.http.request(
                request.method, target + request.path_qs, data=body, headers=headers
            ) as up:
                resp = aiohttp.web.StreamResponse(status=up.status)
                if up.content_type:
                    resp.content_type = up.content_type
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
        finally:
            self.active[key] -= 1

    exporter: ExporterText = field(init=False)
    http: aiohttp.ClientSession = field(init=False)


@contextlib.asynccontextmanager
async def knative_activator(
    kube_url: str, version: str = VERSIONS[-1], ip: str = "127.0.0.1"
) -> AsyncIterator[KnativeActivator]:
    """A running stand-in on ``ip`` (its request port and its exporter's port are free ports)."""
    act = KnativeActivator(version=version, ip=ip, kube_url=kube_url.rstrip("/"))
    act.exporter = ExporterText(version)
    requests = aiohttp.web.Application()
    requests.router.add_route("*", "/{tail:.*}", act.handle)
    metrics = aiohttp.web.Application()
    metrics.router.add_get("/metrics", act.metrics)
    runners = [
        aiohttp.web.AppRunner(a, access_log=None, shutdown_timeout=0.5) for a in (requests, metrics)
    ]
    async with aiohttp.ClientSession() as http:
        act.http = http
        try:
            for runner in runners:
                await runner.setup()
            act.port, act.metrics_port = free_port(), free_port()
            await aiohttp.web.TCPSite(runners[0], ip, act.port).start()
            await aiohttp.web.TCPSite(runners[1], ip, act.metrics_port).start()
            yield act
        finally:
            for runner in runners:
                await runner.cleanup()


def register(api: Any, act: KnativeActivator, name: str) -> dict[str, Any]:
    """Put the stand-in's pod into the API harness (namespace knative-serving)."""
    pod = act.pod(name)
    assert pod["metadata"]["namespace"] == KNATIVE_NAMESPACE
    return dict(api.put_object("", "pods", pod))
