"""Demand at zero for Thaw's controller: the requests Knative's activator holds for each revision.

When a revision has no ready pod, the gateway sends its requests to the revision's public
Service; in SKS Proxy mode that Service's endpoints are Knative's activators, which buffer a
request for any autoscaler class (``pkg/activator`` checks none) until the revision has a pod.
Knative's activator reports what it holds only to Knative's own autoscaler (its stats
websocket), which drops stats for classes it does not run, and to its metrics exporter: the
OpenTelemetry UpDownCounter ``kn.revision.request.queued`` (Knative >= 1.22), per revision. With
``metrics-protocol: prometheus`` in ``config-observability`` (``manifests/knative/``) each
activator pod serves it on its ``metrics`` port (9090) as ``kn_revision_request_queued``
(:mod:`kernel.vocab`).

So every tick the controller scrapes every activator pod directly, not through a Prometheus
whose scrape interval (15-30 s) would delay a cold start by as much, and sums the gauge per
revision over the pods (each holds its own share of the requests):

- :func:`parse_queued` — pure: exporter text -> queued requests per (namespace, revision);
- :func:`activator_pods` — pure: the pods to scrape, from the pods as listed (``app=activator``
  in ``knative-serving``): every running pod with an IP, ready or draining (a draining activator
  still holds the requests it queued), at its container port named ``metrics``;
- :class:`KnativeActivatorPods` — the :class:`DemandSource`: lists the pods every
  ``pods_every_s`` (one API call; activators come and go rarely), scrapes them all once per
  tick (concurrently), and answers every revision's question from that one scrape. A pod that
  does not answer is skipped for the tick (and logged); the others still count.
- :data:`ACTIVATOR_POD_RULES` — the API call this makes, as RBAC rules (a Role in
  ``knative-serving``: ``manifests/activator-rbac.yaml`` grants exactly these).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from kernel.clock import Clock
from kernel.vocab import (
    KNATIVE_NAMESPACE_LABEL,
    KNATIVE_REVISION_LABEL,
    KNATIVE_REVISION_REQUEST_QUEUED,
)
from knative.kube import KubeClient, KubeError
from knative.rbac import Rule

log = logging.getLogger(__name__)

Obj = dict[str, Any]

#: Where Knative runs its activator, and the labels its Deployment gives each pod.
KNATIVE_NAMESPACE = "knative-serving"
ACTIVATOR_SELECTOR = "app=activator"
#: The activator container's port of its Prometheus exporter (Knative's manifest names it).
METRICS_PORT_NAME = "metrics"
METRICS_PORT_DEFAULT = 9090

#: What the controller reads for demand: list Knative's activator pods (in KNATIVE_NAMESPACE).
ACTIVATOR_POD_RULES: tuple[Rule, ...] = (Rule("", "pods", frozenset({"list"})),)


class DemandError(Exception):
    """A demand source could not be read; the controller treats it as no information."""


@dataclass(frozen=True)
class Revision:
    """Which revision (and model) demand is asked for."""

    namespace: str
    name: str
    model: str


class DemandSource(Protocol):
    """Requests held for a revision now (buffered, not yet at an engine)."""

    def new_tick(self) -> None:
        """A new tick begins: forget anything cached during the last one."""

    async def buffered(self, revision: Revision) -> int: ...


def parse_queued(text: str) -> dict[tuple[str, str], int]:
    """Knative activator exporter text -> requests queued per (namespace, revision).

    Series of one revision are summed (they differ only in scope labels); negative values
    (an UpDownCounter mid-update) count as 0."""
    out: dict[tuple[str, str], float] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as e:
        raise DemandError(f"activator /metrics is not Prometheus text: {e}") from e
    for family in families:
        for s in family.samples:
            if s.name != KNATIVE_REVISION_REQUEST_QUEUED:
                continue
            ns = s.labels.get(KNATIVE_NAMESPACE_LABEL)
            rev = s.labels.get(KNATIVE_REVISION_LABEL)
            if ns is None or rev is None:
                continue
            out[(ns, rev)] = out.get((ns, rev), 0.0) + float(s.value)
    return {key: max(0, round(v)) for key, v in out.items()}


@dataclass(frozen=True)
class ActivatorPod:
    """One activator pod to scrape."""

    name: str
    ip: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}/metrics"


def _metrics_port(pod: Obj) -> int:
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == METRICS_PORT_NAME and isinstance(p.get("containerPort"), int):
                return int(p["containerPort"])
    return METRICS_PORT_DEFAULT


def activator_pods(pods: Sequence[Obj]) -> list[ActivatorPod]:
    """The pods to scrape: running, with an IP (ready or draining), sorted by name."""
    out = []
    for pod in pods:
        status = pod.get("status") or {}
        ip = status.get("podIP")
        if status.get("phase") != "Running" or not ip:
            continue
        name = str((pod.get("metadata") or {}).get("name", ip))
        out.append(ActivatorPod(name, str(ip), _metrics_port(pod)))
    return sorted(out, key=lambda p: p.name)


class KnativeActivatorPods:
    """Requests queued per revision, summed over every Knative activator pod, scraped directly
    once per tick."""

    def __init__(
        self,
        kube: KubeClient,
        http: aiohttp.ClientSession,
        clock: Clock,
        namespace: str = KNATIVE_NAMESPACE,
        selector: str = ACTIVATOR_SELECTOR,
        pods_every_s: float = 10.0,
        timeout_s: float = 1.0,
    ) -> None:
        self.kube = kube
        self.http = http
        self.clock = clock
        self.path = f"/api/v1/namespaces/{namespace}/pods"
        self.selector = selector
        self.pods_every_s = pods_every_s
        self.timeout_s = timeout_s
        self.pods: list[ActivatorPod] = []
        self._listed_at_s: float | None = None
        self._queued: dict[tuple[str, str], int] | None = None
        self._lock = asyncio.Lock()  # PAs reconcile concurrently: one scrape per tick
        #: The latest failures (at most 100), newest last; each is also logged.
        self.errors: deque[str] = deque(maxlen=100)

    def new_tick(self) -> None:
        self._queued = None

    async def buffered(self, revision: Revision) -> int:
        async with self._lock:
            if self._queued is None:
                self._queued = await self.scrape()
            return self._queued.get((revision.namespace, revision.name), 0)

    async def _list_pods(self) -> None:
        now_s = self.clock.monotonic()
        if self._listed_at_s is not None and now_s - self._listed_at_s < self.pods_every_s:
            return
        try:
            listing = await self.kube.list_objects(self.path, label_selector=self.selector)
        except KubeError as e:
            self._fail(f"listing Knative's activator pods: {e}")
            return  # keep the last list; try again next tick
        self.pods = activator_pods(listing.get("items") or [])
        self._listed_at_s = now_s

    async def _scrape_one(self, pod: ActivatorPod) -> dict[tuple[str, str], int] | None:
        try:
            async with self.http.get(
                pod.url,
                headers={"Accept": "text/plain;version=0.0.4"},
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as resp:
                if resp.status != 200:
                    raise DemandError(f"HTTP {resp.status}")
                return parse_queued(await resp.text())
        except (aiohttp.ClientError, TimeoutError, DemandError) as e:
            self._fail(f"activator pod {pod.name} ({pod.url}): {e!r}")
            self._listed_at_s = None  # the pod may be gone: list again next tick
            return None

    async def scrape(self) -> dict[tuple[str, str], int]:
        """Queued requests per (namespace, revision), summed over the activator pods now."""
        await self._list_pods()
        results = await asyncio.gather(*(self._scrape_one(p) for p in self.pods))
        total: dict[tuple[str, str], int] = {}
        for result in results:
            for key, n in (result or {}).items():
                total[key] = total.get(key, 0) + n
        return total

    def _fail(self, message: str) -> None:
        self.errors.append(message)
        log.warning("demand: %s", message)


class CombinedDemand:
    """The largest demand any source reports; a source that fails is skipped this tick."""

    def __init__(self, sources: Sequence[DemandSource]) -> None:
        self.sources = tuple(sources)
        #: The latest failures (at most 100), newest last; each is also logged.
        self.errors: deque[str] = deque(maxlen=100)

    def new_tick(self) -> None:
        for s in self.sources:
            s.new_tick()

    async def buffered(self, revision: Revision) -> int:
        best = 0
        for s in self.sources:
            try:
                best = max(best, await s.buffered(revision))
            except DemandError as e:
                self.errors.append(str(e))
                log.warning("demand for %s/%s: %s", revision.namespace, revision.name, e)
        return best
