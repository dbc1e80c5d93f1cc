"""Thaw's PodAutoscaler-class controller: the Kubernetes adapter around the pure decider.

Owns the loops and the I/O; the decisions are :func:`autoscaler.decider.decide` (how many
replicas) and :func:`knative.reconcile.plan` (Knative's KPA steps: SKS mode, scale to apply, PA
status). It reads the cluster through watch-backed caches (:class:`~knative.informer.Informer`,
client-go informer semantics): PodAutoscalers, ServerlessServices, Knative's revision
Deployments (their ``spec.replicas`` is what the ``scale`` subresource reports), the revisions'
private EndpointSlices, and Knative's ``config-autoscaler`` / ``config-deployment`` ConfigMaps
(re-read on every change, :mod:`knative.cluster_config`). Each tick, for every PodAutoscaler of
class ``autoscaler.thaw.dev`` (others are never written):

1. read the SKS named after the PA, the Deployment's replicas and the revision's ready pods from
   the caches (no API call);
2. scrape each ready pod's engine ``/metrics`` directly (``engine_port``), and read the demand
   held in front of the revision (:mod:`knative.demand`; none for an Unreachable revision);
3. decide, plan, then write only what changed, in Knative's order: the SKS (create, or PUT its
   spec: Proxy goes in *before* a scale to 0), the scale (JSON patch of ``/spec/replicas`` on
   ``/scale``), and the PA status through ``/status``. PUTs are retried on 409 after a re-read.

**Warm pools and shared GPUs** (:mod:`knative.shared_gpu`): for revisions on a shared pool, or
of a model whose warm pool is on, the scale KPA's steps choose is the number of engines wanted
*awake*; the Deployment's scale is awake + asleep. After the reconciles, the tick reads those
revisions' pods (cached: node, IP, readiness, Thaw's annotations; asleep or not from ``GET
/is_sleeping`` with Thaw's credential, straight to the pod IP), runs the GPU-memory arbiter per
GPU and carries its plan out in the background (:mod:`knative.engine_control`): sleeps, and
stop marks (``controller.kubernetes.io/pod-deletion-cost``) then scale-downs, first; wakes and
scale-ups once those answered and the stopped pods are gone. Readiness (the engine guard's
``/thaw/ready``) keeps sleepers out of the ready endpoints, so KPA's actual scale counts awake
pods. While a plan is being carried out no other is made.

At rest (nothing changes) a tick makes no API request. What a tick saw and decided for each
revision is kept as :class:`~knative.revisions.RevisionView` values in
:attr:`Controller.revisions`. Only the replica holding the Lease acts
(:class:`~knative.leader.LeaderElector`). With a :class:`~knative.gateway.Gateway`, each tick
also publishes the gateway's routes (one call, from the cached PAs and slices), and only the
leader serves them.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import datetime
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from autoscaler.decider import DeciderState, ModelObservation, ReplicaObservation, decide
from autoscaler.policy import WarmPoolConfig
from engine.metrics import MetricsParseError, parse_engine_metrics
from kernel.clock import Clock
from kernel.vocab import UNKNOWN_TIER, ReportedTier
from knative.cluster_config import (
    AUTOSCALER_CONFIGMAP,
    DEPLOYMENT_CONFIGMAP,
    KNATIVE_NAMESPACE,
    KnativeConfig,
    KnativeConfigError,
    parse_autoscaler,
    parse_deployment,
)
from knative.contract import (
    GENERATION_LABEL,
    MODEL_ANNOTATION,
    POOL_ANNOTATION,
    PRIVATE,
    REVISION_LABEL,
    SERVICE_TYPE_LABEL,
)
from knative.demand import DemandSource, Revision
from knative.endpoints import revision_candidates
from knative.engine_control import EngineControl, EngineControlError
from knative.gateway import Gateway
from knative.informer import Informer, resource_version
from knative.kube import Backoff, KubeClient, KubeError, NotFoundError, retry_on_conflict
from knative.leader import LeaderElector
from knative.reconcile import (
    ACTIVE,
    PA_GROUP,
    PA_VERSION,
    SKS_GROUP,
    SKS_VERSION,
    Observed,
    PodAutoscalerError,
    PodAutoscalerView,
    Resolved,
    activator_in_path,
    condition_status,
    controlled_by,
    is_ours,
    not_owned,
    plan,
    resolve,
    sks_is_ready,
    sks_update,
    view,
)
from knative.render import engine_bytes
from knative.revisions import ReadyPod, RevisionView, ready_pods
from knative.shared_gpu import (
    DELETION_COST_ANNOTATION,
    SLEEP_LEVEL_ANNOTATION,
    STOP_DELETION_COST,
    Action,
    ClusterPlan,
    EnginePod,
    RevisionKey,
    RevisionWant,
    SharedPool,
    plan_shared,
)
from policy_file.schema import ModelConfig, PoolConfig, ThawConfig

log = logging.getLogger(__name__)

Obj = dict[str, Any]


@dataclass(frozen=True)
class ControllerSettings:
    """How the controller runs (the CLI fills this from its flags)."""

    namespace: str | None = None
    tick_s: float = 2.0
    engine_port: int = 8080
    scrape_timeout_s: float = 2.0
    lease_namespace: str = "thaw-system"
    lease_name: str = "thaw-controller"
    identity: str = "thaw-controller"
    lease_duration_s: float = 15.0
    renew_every_s: float = 5.0
    watch_timeout_s: float = 300.0
    #: Where Knative's ConfigMaps (config-autoscaler, config-deployment) live.
    knative_namespace: str = KNATIVE_NAMESPACE
    #: Give the Lease up when stopped cleanly, so a standby takes over at once.
    release_on_stop: bool = True
    #: Thaw's engine credential (the Secret thaw-engine-credential, mounted): sleep and wake
    #: requests to engine pods carry it.
    credential_file: str = "/var/run/secrets/thaw/engine/credential"
    #: How long one sleep, wake or reload call to an engine may take.
    control_timeout_s: float = 120.0
    #: How long a shared GPU's wakes and starts wait for the pods Thaw stopped to be gone
    #: (their memory back) before they are given up for this plan.
    stop_wait_s: float = 120.0
    #: How long a busy engine may finish its requests before Thaw puts it to sleep.
    drain_timeout_s: float = 30.0


class Reports(Protocol):
    """Where replica-changing decisions and completed cold starts are reported (the CloudEvents
    emitter of :mod:`events.sink` fits); calls return at once and never raise."""

    def decision(
        self, model: str, from_replicas: int, to_replicas: int, reason: str, panic: bool
    ) -> None: ...

    def cold_start(self, model: str, tier: ReportedTier, seconds: float) -> None: ...


#: The cold-start tier as the cluster sees it: the node cache's tier is not visible from here.
CLUSTER_TIER: ReportedTier = UNKNOWN_TIER


@dataclass
class _PaState:
    decider: DeciderState = field(default_factory=DeciderState.initial)
    retry_at_s: float = 0.0
    cold_start_since_s: float | None = None
    backoff: Backoff = field(default_factory=Backoff)
    #: What this controller last wrote (read-your-writes until the watch delivers it).
    pa: Obj | None = None
    sks: Obj | None = None
    deployment_rv: int = 0
    replicas: int | None = None
    #: The PA's view and settings, for the PA's resourceVersion and the settings' versions.
    resolved: tuple[int, ThawConfig, KnativeConfig, PodAutoscalerView, Resolved] | None = None
    #: The inputs of the last tick that found the PA at rest (its plan is skipped while equal).
    rest: tuple[int, int, int, tuple[ReadyPod, ...], int, int, Resolved] | None = None


def _newest(cached: Obj | None, written: Obj | None) -> Obj | None:
    if written is None:
        return cached
    if cached is None or resource_version(written) > resource_version(cached):
        return written
    return cached


def _collection(group_version: str, plural: str, namespace: str | None) -> str:
    base = f"/apis/{group_version}" if "/" in group_version else f"/api/{group_version}"
    return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


SKS_API = f"{SKS_GROUP}/{SKS_VERSION}"
PA_API = f"{PA_GROUP}/{PA_VERSION}"


class Controller:
    """Reconciles Thaw-class PodAutoscalers; build with the wiring, then ``await run(stop)``."""

    def __init__(
        self,
        kube: KubeClient,
        http: aiohttp.ClientSession,
        config: ThawConfig,
        demand: DemandSource,
        clock: Clock,
        settings: ControllerSettings,
        reports: Reports | None = None,
        gateway: Gateway | None = None,
    ) -> None:
        self.kube = kube
        self.gateway = gateway
        self.http = http
        self.config = config
        self.demand = demand
        self.clock = clock
        self.settings = settings
        self.reports = reports
        ns = settings.namespace
        timeout_s = settings.watch_timeout_s
        self.pas = Informer(
            kube,
            _collection(PA_API, "podautoscalers", ns),
            watch_timeout_s=timeout_s,
            on_event=self._on_pa,
            name="PodAutoscalers",
            clock=clock,
        )
        self.sks = Informer(
            kube,
            _collection(SKS_API, "serverlessservices", ns),
            watch_timeout_s=timeout_s,
            on_event=self._on_sks,
            name="ServerlessServices",
            clock=clock,
        )
        self.deployments = Informer(
            kube,
            _collection("apps/v1", "deployments", ns),
            label_selector=REVISION_LABEL,
            watch_timeout_s=timeout_s,
            name="Deployments",
            clock=clock,
        )
        self.slices = Informer(
            kube,
            _collection("discovery.k8s.io/v1", "endpointslices", ns),
            label_selector=f"{REVISION_LABEL},{SERVICE_TYPE_LABEL}={PRIVATE}",
            watch_timeout_s=timeout_s,
            name="EndpointSlices",
            clock=clock,
        )
        self.configmaps = Informer(
            kube,
            _collection("v1", "configmaps", settings.knative_namespace),
            watch_timeout_s=timeout_s,
            on_event=self._on_configmap,
            name="Knative ConfigMaps",
            clock=clock,
        )
        #: The revisions' pods (for the shared GPUs' warm pools: node, IP, readiness, Thaw's
        #: annotations).
        self.pods = Informer(
            kube,
            _collection("v1", "pods", ns),
            label_selector=REVISION_LABEL,
            watch_timeout_s=timeout_s,
            name="Pods",
            clock=clock,
        )
        self.informers = (
            self.pas,
            self.sks,
            self.deployments,
            self.slices,
            self.configmaps,
            self.pods,
        )
        self.engines = EngineControl(
            http, settings.engine_port, settings.credential_file, settings.control_timeout_s
        )
        #: Ticks run so far (the warm pool's log counts in them).
        self.ticks = 0
        #: What the controller did to engines on shared GPUs: (the tick that planned it, action,
        #: outcome), latest last.
        self.warm_log: collections.deque[tuple[int, Action, str]] = collections.deque(maxlen=1000)
        self._warm_task: asyncio.Task[None] | None = None
        self._plan_tick = 0
        #: Per revision on a shared pool, this tick: what the arbiter needs of it.
        self._shared: dict[RevisionKey, RevisionWant] = {}
        self._scale_paths: dict[RevisionKey, tuple[_PaState, str]] = {}
        #: Engines asleep (or marked to stop) per revision, as last read.
        self._asleep: dict[RevisionKey, int] = {}
        #: Requests running + waiting per pod, as last scraped.
        self._loads: dict[str, float] = {}
        #: Sleep levels Thaw sent, per pod (read-your-writes over the pod annotation).
        self._levels: dict[str, int] = {}
        self._since: dict[str, tuple[str, float]] = {}
        #: Pods a scale-down of Thaw's was for: leaving, whatever the cache says yet.
        self._stopped: set[str] = set()
        #: The model of each revision the arbiter runs (for reports).
        self._models: dict[RevisionKey, str] = {}
        #: Knative's cluster settings, as last read (Knative's defaults until then).
        self.knative = KnativeConfig()
        #: The last problem with Knative's ConfigMaps (None: they parsed).
        self.knative_problem: str | None = None
        #: What the last tick saw and decided, per PA (namespace, name).
        self.revisions: dict[tuple[str, str], RevisionView] = {}
        self._states: dict[tuple[str, str], _PaState] = {}
        self._generations: dict[tuple[str, str], Any] = {}
        self._wake = asyncio.Event()
        self._iso: tuple[int, str] = (-1, "")
        self.synced = asyncio.Event()
        self.elector = LeaderElector(
            kube,
            clock,
            settings.lease_namespace,
            settings.lease_name,
            settings.identity,
            settings.lease_duration_s,
            settings.renew_every_s,
        )

    # -- the caches ----------------------------------------------------------------------------

    def _on_pa(self, event_type: str, pa: Obj) -> None:
        meta = pa.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        if event_type == "DELETED":
            self._states.pop(key, None)
            self._generations.pop(key, None)
            self.revisions.pop(key, None)
            return
        if not is_ours(pa):
            return
        if self._generations.get(key) != meta.get("generation"):
            self._generations[key] = meta.get("generation")
            self._wake.set()

    def _on_sks(self, event_type: str, sks: Obj) -> None:
        if event_type == "DELETED":
            # Forget what we wrote: the next tick creates it again.
            meta = sks.get("metadata") or {}
            st = self._states.get((str(meta.get("namespace", "")), str(meta.get("name", ""))))
            if st is not None:
                st.sks = None
                st.rest = None

    def _on_configmap(self, _event_type: str, cm: Obj) -> None:
        name = (cm.get("metadata") or {}).get("name")
        if name in (AUTOSCALER_CONFIGMAP, DEPLOYMENT_CONFIGMAP):
            self._read_knative_config()

    def _read_knative_config(self) -> None:
        ns = self.settings.knative_namespace
        autoscaler = self.configmaps.get(ns, AUTOSCALER_CONFIGMAP)
        deployment = self.configmaps.get(ns, DEPLOYMENT_CONFIGMAP)
        # Each map on its own: a bad edit of one keeps its last good values, not the other's.
        new, problems = self.knative, []
        for parse, cm in ((parse_autoscaler, autoscaler), (parse_deployment, deployment)):
            try:
                new = parse((cm or {}).get("data") or {}, new)
            except KnativeConfigError as e:
                problems.append(str(e))
                log.error("Knative's settings not applied (the last good ones stay): %s", e)
        self.knative_problem = "; ".join(problems) or None
        if new != self.knative:
            log.info("Knative's settings: %s", new)
            self.knative = new
            self._wake.set()

    async def _sync(self) -> None:
        await asyncio.gather(*(i.synced.wait() for i in self.informers))
        self._read_knative_config()
        self.synced.set()

    # -- one PA --------------------------------------------------------------------------------

    async def _scrape(self, address: str) -> ReplicaObservation:
        url = f"http://{address}:{self.settings.engine_port}/metrics"
        try:
            async with self.http.get(
                url, timeout=aiohttp.ClientTimeout(total=self.settings.scrape_timeout_s)
            ) as resp:
                text = await resp.text()
            m = parse_engine_metrics(text)
        except (aiohttp.ClientError, TimeoutError, MetricsParseError) as e:
            log.debug("scrape %s: %r", url, e)
            return ReplicaObservation(address, "ready", None, None, None, None)
        return ReplicaObservation(
            address,
            "sleeping" if m.sleeping else "ready",
            float(m.num_requests_waiting),
            float(m.num_requests_running),
            m.kv_cache_usage_ratio,
            0.0,
        )

    def _resolve(self, st: _PaState, pa: Obj) -> tuple[PodAutoscalerView, Resolved]:
        """The PA's :func:`view` and :func:`resolve`, again only when the PA, the policy or
        Knative's settings changed."""
        rv, known = resource_version(pa), st.resolved
        if (
            known is None
            or known[0] != rv
            or known[1] is not self.config
            or (known[2] is not self.knative)
        ):
            v = view(pa)
            r = resolve(pa, self.config, self.knative, v)
            known = st.resolved = (rv, self.config, self.knative, v, r)
        return known[3], known[4]

    async def _spec_replicas(
        self, st: _PaState, ns: str, api_version: str, kind: str, name: str
    ) -> tuple[int, bool, str]:
        """(spec.replicas, whether the target exists, its scale path). A Deployment's come from
        the cache (its scale subresource reports the same); other kinds are read."""
        base = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        path = f"{base}/namespaces/{ns}/{kind.lower()}s/{name}/scale"
        if (api_version, kind) == ("apps/v1", "Deployment"):
            dep = self.deployments.get(ns, name)
            if dep is None:
                return 0, False, path
            if st.replicas is not None and st.deployment_rv > resource_version(dep):
                return st.replicas, True, path
            return int((dep.get("spec") or {}).get("replicas") or 0), True, path
        try:
            scale = await self.kube.get(path)
        except NotFoundError:
            return 0, False, path
        return int((scale.get("spec") or {}).get("replicas") or 0), True, path

    async def reconcile(
        self, pa: Obj, pods: dict[tuple[str, str], tuple[ReadyPod, ...]] | None = None
    ) -> None:
        """One tick for one PA: observe (from the caches), decide, plan, write what changed
        (SKS, then scale, then status). ``pods``: every revision's ready pods, when the tick
        read them already."""
        meta = pa.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        st = self._states.setdefault(key, _PaState())
        pa = _newest(pa, st.pa) or pa
        v, r = self._resolve(st, pa)
        ns = v.namespace
        sks_collection = _collection(SKS_API, "serverlessservices", ns)
        sks_path = f"{sks_collection}/{v.name}"
        sks = _newest(self.sks.get(ns, v.name), st.sks)
        if sks is not None and not controlled_by(sks, pa):
            log.warning("PA %s/%s: SKS %s exists and is not ours; leaving it", ns, v.name, v.name)
            status = not_owned(pa, "ServerlessService", v.name, self._now_iso())
            if status != (pa.get("status") or {}):
                await self._write_status(st, pa, status)
            return
        t = v.target
        spec_replicas, target_exists, scale_path = await self._spec_replicas(
            st, ns, t.api_version, t.kind, t.name
        )
        revision = v.labels.get(REVISION_LABEL, v.name)
        if pods is None:
            pods = ready_pods(self.slices.values())
        ready = pods.get((ns, revision), ())
        replicas = list(await asyncio.gather(*(self._scrape(p.address) for p in ready)))
        for p_, o in zip(ready, replicas, strict=True):
            # Not scraped: counted busy (the arbiter never sleeps a busy engine for another).
            busy = o.num_requests_running is None or o.num_requests_waiting is None
            self._loads[p_.pod] = (
                1.0 if busy else (o.num_requests_running or 0.0) + (o.num_requests_waiting or 0.0)
            )
        shared = self._arbitrated_pool(v.annotations.get(POOL_ANNOTATION), r.model)
        # On a shared GPU the scale counts sleepers too; KPA's want is the awake engines.
        scale_now = spec_replicas
        if shared is not None:
            scale_now = max(0, spec_replicas - self._asleep.get((ns, revision), 0))
            self._scale_paths[(ns, revision)] = (st, scale_path)
        starting = max(0, scale_now - len(ready))
        replicas += [
            ReplicaObservation(f"starting-{i}", "starting", None, None, None, None)
            for i in range(starting)
        ]
        # An Unreachable revision gets no traffic from its route: never scale it for demand
        # (Knative's ScaleBounds and scaler.scale drop its min and initial scale too).
        buffered = (
            await self.demand.buffered(Revision(ns, revision, r.model))
            if r.settings.reachable
            else 0
        )
        if shared is not None:
            pool, model_cfg = shared
            self._models[(ns, revision)] = r.model
            self._shared[(ns, revision)] = RevisionWant(
                (ns, revision),
                pool.name,
                spec_replicas if target_exists else 0,
                None,
                self._engine_bytes(model_cfg, pool),
                buffered,
                model_cfg.warm_pool if model_cfg is not None else WarmPoolConfig(),
            )
        obs = ModelObservation(r.model, tuple(replicas), buffered)
        now_s = self.clock.monotonic()
        decision, st.decider = decide(obs, r.policy, st.decider, now_s)
        # At rest (the same inputs as a tick that planned no change, in a state where time alone
        # changes nothing) the plan would be the same again: skip it.
        rest = (
            resource_version(pa),
            resource_version(sks),
            scale_now,
            ready,
            decision.desired_replicas,
            buffered,
            r,
        )
        if st.rest == rest:
            return
        st.rest = None
        now_iso = self._now_iso()
        p = plan(
            pa,
            Observed(scale_now, len(ready), sks),
            decision.desired_replicas,
            r.settings,
            r.grace_s,
            r.policy.stable_window_s,
            self.clock.wall(),
            now_iso,
            v,
        )
        if decision.changes or p.scale is not None:
            log.info(
                "PA %s/%s (model %s): want %d, scale %s, SKS %s: %s",
                ns,
                v.name,
                r.model,
                p.want,
                p.scale,
                p.mode,
                decision.reason,
            )

        wrote = sks is None or sks_update(sks, p.sks) is not None or p.scale is not None
        wrote = wrote or p.status != (pa.get("status") or {})
        active = condition_status(p.status, ACTIVE)
        if (
            not wrote
            and p.want == scale_now == decision.desired_replicas
            and ((active == "True" and p.want > 0) or (active == "False" and spec_replicas == 0))
        ):
            st.rest = rest
        # 1. The SKS (Proxy in place before any scale to zero).
        if sks is None:
            st.sks = await self.kube.create(sks_collection, p.sks)
        elif (first := sks_update(sks, p.sks)) is not None:

            async def put_sks() -> Obj:
                current = await self.kube.get(sks_path)
                new = sks_update(current, p.sks)
                return current if new is None else await self.kube.replace(sks_path, new)

            try:
                st.sks = await self.kube.replace(sks_path, first)
            except KubeError as e:
                if e.status != 409:
                    raise
                st.sks = await retry_on_conflict(put_sks)
        # 2. The scale, as Knative's scaler patches it (on a shared GPU: the arbiter's, after
        # this tick's reconciles, see _warm_pool).
        if shared is not None and target_exists:
            want = self._shared[(ns, revision)]
            self._shared[(ns, revision)] = dataclasses.replace(want, awake=p.scale)
            if p.scale is not None and self.reports is not None:
                self.reports.decision(r.model, scale_now, p.scale, decision.reason, decision.panic)
        elif p.scale is not None and target_exists:
            scaled = await self.kube.json_patch(
                scale_path, [{"op": "add", "path": "/spec/replicas", "value": p.scale}]
            )
            st.replicas = p.scale
            st.deployment_rv = resource_version(scaled)
            if self.reports is not None:
                self.reports.decision(
                    r.model, spec_replicas, p.scale, decision.reason, decision.panic
                )
            if spec_replicas == 0 and p.scale > 0:
                st.cold_start_since_s = now_s
            elif p.scale == 0:
                st.cold_start_since_s = None
            spec_replicas = p.scale
        if st.cold_start_since_s is not None and ready:
            if self.reports is not None:
                self.reports.cold_start(r.model, CLUSTER_TIER, now_s - st.cold_start_since_s)
            log.info(
                "PA %s/%s: cold start done in %.1f s", ns, v.name, now_s - st.cold_start_since_s
            )
            st.cold_start_since_s = None
        # 3. The PA status, through the status subresource.
        if p.status != (pa.get("status") or {}):
            await self._write_status(st, pa, p.status)
        sks_status = (sks or {}).get("status") or {}
        self.revisions[key] = RevisionView(
            namespace=ns,
            name=v.name,
            revision=revision,
            model=r.model,
            pool=v.annotations.get(POOL_ANNOTATION),
            reachability=str((pa.get("spec") or {}).get("reachability", "")),
            generation=_int(v.labels.get(GENERATION_LABEL)),
            spec_replicas=spec_replicas,
            ready=ready,
            sks_mode=p.mode,
            sks_ready=sks is not None and sks_is_ready(sks),
            activator_in_path=sks is not None and activator_in_path(sks),
            public_service=str(sks_status.get("serviceName", "")),
            private_service=str(sks_status.get("privateServiceName", "")),
            want=p.want,
            active=condition_status(p.status, ACTIVE),
            buffered=buffered,
        )

    def _now_iso(self) -> str:
        """Condition timestamps: Kubernetes' second-resolution UTC time."""
        second = int(self.clock.wall())
        if self._iso[0] != second:
            wall = datetime.datetime.fromtimestamp(second, datetime.UTC)
            self._iso = (second, wall.strftime("%Y-%m-%dT%H:%M:%SZ"))
        return self._iso[1]

    async def _write_status(self, st: _PaState, pa: Obj, status: Obj) -> None:
        meta = pa["metadata"]
        path = f"{_collection(PA_API, 'podautoscalers', meta['namespace'])}/{meta['name']}"
        first = True

        async def attempt() -> Obj:
            nonlocal first
            body = pa if first else await self.kube.get(path)
            if not first and body.get("status") == status:
                return body  # already written (our own earlier write, seen late)
            first = False
            out = copy.deepcopy(body)
            out["status"] = status
            return await self.kube.replace(path + "/status", out)

        st.pa = await retry_on_conflict(attempt)

    # -- the loops -----------------------------------------------------------------------------

    async def tick(self) -> None:
        """Reconcile every known PA of Thaw's class once, concurrently (leader only); one PA's
        API error or slow scrape does not hold up the others."""
        self.ticks += 1
        self.demand.new_tick()
        pods = ready_pods(self.slices.values())
        pas = [pa for pa in self.pas.values() if is_ours(pa)]
        if self.gateway is not None:
            # The gateway's routes, from the same caches (no API call).
            candidates = revision_candidates(pas, list(self.slices.values()))
            await self.gateway.tick(candidates, self.config)
        # Shared GPUs: read their engines first (asleep or not), unless the last plan is still
        # being carried out (its engines are changing; the next tick reads them again).
        busy = self._warm_task is not None and not self._warm_task.done()
        engines = [] if busy else await self._engine_pods(pas)
        self._shared = {}
        await asyncio.gather(*(self._tick_one(pa, pods) for pa in pas))
        if not busy and self._shared:
            self._warm_pool(engines)

    # -- warm pools on shared GPUs ---------------------------------------------------------------

    def _arbitrated_pool(
        self, pool_name: str | None, model: str
    ) -> tuple[PoolConfig, ModelConfig | None] | None:
        """The pool a revision runs on when the GPU-memory arbiter runs its engines: a shared
        pool, or any pool for a model whose warm pool is on (None: Knative's scale alone)."""
        cluster = self.config.cluster
        if cluster is None or pool_name is None:
            return None
        pool = next((p for p in cluster.pools if p.name == pool_name), None)
        found = next((m for m in self.config.models if m.name == model), None)
        if pool is None or not (pool.shared or (found is not None and found.warm_pool.enabled)):
            return None
        return pool, found

    @staticmethod
    def _engine_bytes(model: ModelConfig | None, pool: PoolConfig) -> int:
        if model is None:  # a model the file does not name: the default share
            return max(1, int(0.9 / pool.share * pool.gpu_memory_bytes))
        return max(1, engine_bytes(model, pool))

    async def _engine_pods(self, pas: list[Obj]) -> list[EnginePod]:
        """The pods of every revision on a shared pool, asleep or not (``GET /is_sleeping``
        with the credential, straight to the pod)."""
        revisions: set[RevisionKey] = set()
        for pa in pas:
            meta = pa.get("metadata") or {}
            anns = meta.get("annotations") or {}
            model = str(anns.get(MODEL_ANNOTATION, ""))
            if self._arbitrated_pool(anns.get(POOL_ANNOTATION), model) is not None:
                labels = meta.get("labels") or {}
                revision = str(labels.get(REVISION_LABEL, meta.get("name", "")))
                revisions.add((str(meta.get("namespace", "")), revision))
        if not revisions:
            return []
        found: list[tuple[RevisionKey, Obj]] = []
        for pod in self.pods.values():
            meta = pod.get("metadata") or {}
            key = (
                str(meta.get("namespace", "")),
                str((meta.get("labels") or {}).get(REVISION_LABEL, "")),
            )
            if key in revisions:
                found.append((key, pod))

        async def asleep(pod: Obj) -> bool | None:
            address = str((pod.get("status") or {}).get("podIP") or "")
            if not address or (pod.get("metadata") or {}).get("deletionTimestamp"):
                return None
            return await self.engines.is_sleeping(address, self.settings.scrape_timeout_s)

        answers = await asyncio.gather(*(asleep(pod) for _, pod in found))
        now_s = self.clock.monotonic()
        out: list[EnginePod] = []
        self._asleep = {}
        for (key, pod), is_asleep in zip(found, answers, strict=True):
            meta = pod.get("metadata") or {}
            anns = meta.get("annotations") or {}
            status = pod.get("status") or {}
            name = str(meta.get("name", ""))
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or []
            )
            level = self._levels.get(name) or _int(anns.get(SLEEP_LEVEL_ANNOTATION))
            stopping = anns.get(DELETION_COST_ANNOTATION) == str(STOP_DELETION_COST)
            e = EnginePod(
                name=name,
                revision=key,
                node=str((pod.get("spec") or {}).get("nodeName") or ""),
                address=str(status.get("podIP") or ""),
                ready=ready,
                deleting=bool(meta.get("deletionTimestamp")) or name in self._stopped,
                asleep=is_asleep,
                sleep_level=2 if level == 2 else (1 if level == 1 else None),
                stopping=stopping,
            )
            state = e.state
            seen = self._since.get(name)
            if seen is None or seen[0] != state:
                self._since[name] = (state, now_s)
            out.append(dataclasses.replace(e, since_s=self._since[name][1]))
            if not e.deleting and (e.asleep or e.stopping):
                self._asleep[key] = self._asleep.get(key, 0) + 1
        live = {e.name for e in out}
        self._stopped &= live
        for gone in set(self._since) - live:
            self._since.pop(gone, None)
            self._levels.pop(gone, None)
            self._loads.pop(gone, None)
        return out

    def _warm_pool(self, engines: list[EnginePod]) -> None:
        """Each shared GPU's arbiter plan, carried out in the background (frees, then gains)."""
        engines = [dataclasses.replace(e, load=self._loads.get(e.name, 0.0)) for e in engines]
        pools: dict[str, SharedPool] = {}
        for p in self.config.cluster.pools if self.config.cluster else ():
            if p.shared:
                pools[p.name] = SharedPool(p.gpu_memory_bytes)
            else:  # each engine holds its replica's GPUs, asleep too
                pools[p.name] = SharedPool(p.gpu_memory_bytes * p.gpus_per_replica, unshared=True)
        wants = [w for key, w in self._shared.items() if key in self._scale_paths]
        plan = plan_shared(engines, wants, pools, self.clock.monotonic())
        for g in plan.gpus:
            if not g.plan.empty or g.plan.unmet:
                log.info(
                    "GPU %s on %s: %s", g.gpu[0], g.gpu[1] or "(unscheduled)", g.plan.describe()
                )
        if plan.frees or plan.gains:
            self._plan_tick = self.ticks
            self._warm_task = asyncio.create_task(
                self._carry_out(plan, {e.name: e for e in engines}), name="warm pool"
            )

    def _note(self, action: Action, outcome: str) -> None:
        """Log what was done, with the tick whose plan it carried out."""
        self.warm_log.append((self._plan_tick, action, outcome))

    async def _patch_pod(self, ns: str, name: str, annotations: dict[str, str | None]) -> None:
        path = f"/api/v1/namespaces/{ns}/pods/{name}"
        await self.kube.merge_patch(path, {"metadata": {"annotations": annotations}})

    async def _scale(self, key: RevisionKey, replicas: int) -> None:
        replicas = max(0, replicas)
        st, path = self._scale_paths[key]
        scaled = await self.kube.json_patch(
            path, [{"op": "add", "path": "/spec/replicas", "value": replicas}]
        )
        st.replicas = replicas
        st.deployment_rv = resource_version(scaled)
        st.rest = None

    async def _until_idle(self, pod: EnginePod) -> None:
        """Let a busy engine finish its requests before it sleeps (vLLM's sleep would pause them
        until a wake), at most ``drain_timeout_s``; an idle one sleeps at once."""
        if pod.load <= 0:
            return
        deadline = self.clock.monotonic() + self.settings.drain_timeout_s
        while self.clock.monotonic() < deadline:
            o = await self._scrape(pod.address)
            if (o.num_requests_running, o.num_requests_waiting) == (0.0, 0.0):
                return
            await asyncio.sleep(0.2)
        log.warning("warm pool: %s still busy after the drain timeout; sleeping it", pod.name)

    async def _free(self, a: Action, pod: EnginePod | None) -> bool:
        """One sleep, retire or stop mark; True once it has answered."""
        ns = a.revision[0]
        try:
            if a.kind in ("stop", "retire") and pod is not None:
                await self._patch_pod(
                    ns, pod.name, {DELETION_COST_ANNOTATION: str(STOP_DELETION_COST)}
                )
            if a.kind in ("sleep", "retire") and pod is not None:
                await self._until_idle(pod)
                level = a.level or 1
                self._levels[pod.name] = level
                await self._patch_pod(ns, pod.name, {SLEEP_LEVEL_ANNOTATION: str(level)})
                await self.engines.sleep(pod.address, level)
        except (KubeError, EngineControlError) as e:
            log.warning("warm pool: %s %s failed: %s", a.kind, a.pod, e)
            self._note(a, f"failed: {e}")
            return False
        self._note(a, "done")
        return True

    async def _gain(self, a: Action, pod: EnginePod | None) -> None:
        if a.kind != "wake" or pod is None:
            return
        started_s = self.clock.monotonic()
        try:
            await self.engines.wake(pod.address, a.level or 2)
            self._levels.pop(pod.name, None)
            await self._patch_pod(a.revision[0], pod.name, {SLEEP_LEVEL_ANNOTATION: None})
        except (KubeError, EngineControlError) as e:
            log.warning("warm pool: wake %s failed: %s", a.pod, e)
            self._note(a, f"failed: {e}")
            return
        self._note(a, "done")
        took_s = self.clock.monotonic() - started_s
        log.info("warm pool: %s awake (level %s) in %.2f s", pod.name, a.level, took_s)
        if self.reports is not None:  # a cold start served by a wake
            self.reports.cold_start(self._models.get(a.revision, a.revision[1]), "wake", took_s)

    async def _carry_out(self, plan: ClusterPlan, pods: dict[str, EnginePod]) -> None:
        """Frees first (sleeps answered, stop marks written, scale-downs patched, the stopped
        pods gone), then each GPU's wakes and starts, only where every free succeeded."""
        try:
            failed: set[tuple[str, str]] = set()
            unmarked: set[RevisionKey] = set()  # a stop mark not written: no scale-down
            for g in plan.gpus:
                results = await asyncio.gather(
                    *(self._free(a, pods.get(a.pod or "")) for a in g.frees)
                )
                if not all(results):
                    failed.add(g.gpu)
                for a, ok in zip(g.frees, results, strict=True):
                    if a.kind == "stop" and not ok:
                        unmarked.add(a.revision)
            for key, n in plan.scale_after_frees.items():
                if key not in unmarked:
                    await self._scale(key, n)
            self._stopped |= {
                a.pod
                for a in plan.frees
                if a.kind == "stop" and a.pod and a.revision not in unmarked
            }
            stopped = {
                a.pod
                for a in plan.frees
                if a.kind == "stop" and a.pod and pods[a.pod].state != "sleeping"
            }
            deadline = self.clock.monotonic() + self.settings.stop_wait_s
            while stopped and self.clock.monotonic() < deadline:
                live = {str((p.get("metadata") or {}).get("name")) for p in self.pods.values()}
                stopped &= live
                if stopped:
                    await asyncio.sleep(0.05)
            if stopped:
                log.warning(
                    "warm pool: %s still not gone; wakes and starts wait for the next plan",
                    ", ".join(sorted(stopped)),
                )
                return
            for g in plan.gpus:
                if g.gpu in failed:
                    continue
                await asyncio.gather(*(self._gain(a, pods.get(a.pod or "")) for a in g.gains))
                for a in g.gains:
                    if a.kind == "start":
                        self._note(a, "scaled up")
            for key, n in plan.scale_after_gains.items():
                if not any(
                    g.gpu in failed for g in plan.gpus if any(a.revision == key for a in g.gains)
                ):
                    await self._scale(key, n)
        except KubeError as e:
            log.warning("warm pool: %s", e)
        except Exception:  # a bug: said now, with its traceback; the next tick plans again
            log.exception("warm pool: carrying out the plan failed")
        finally:
            self._wake.set()  # read the engines again at once

    async def _tick_one(self, pa: Obj, pods: dict[tuple[str, str], tuple[ReadyPod, ...]]) -> None:
        meta = pa.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        st = self._states.setdefault(key, _PaState())
        now_s = self.clock.monotonic()
        if now_s < st.retry_at_s:
            return
        try:
            await self.reconcile(pa, pods)
            st.backoff.succeeded()
        except PodAutoscalerError as e:
            log.warning("PA %s/%s: %s", key[0], key[1], e)
        except KubeError as e:
            delay = st.backoff.failed()
            st.retry_at_s = now_s + delay
            log.warning("PA %s/%s: %s; again in %.1f s", key[0], key[1], e, delay)

    async def run(self, stop: asyncio.Event) -> None:
        """Elect, watch and tick until ``stop`` is set."""
        tasks = [
            asyncio.create_task(self.elector.run(stop), name="leader-election"),
            *(asyncio.create_task(i.run(stop), name=f"watch {i.name}") for i in self.informers),
            asyncio.create_task(self._sync(), name="sync"),
        ]
        try:
            while not stop.is_set():
                if self.gateway is not None:
                    await self.gateway.serve(self.elector.is_leader)
                if self.elector.is_leader and self.synced.is_set():
                    await self.tick()
                self._wake.clear()
                waits = [asyncio.ensure_future(e.wait()) for e in (stop, self._wake)]
                try:
                    await asyncio.wait(
                        waits, timeout=self.settings.tick_s, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for w in waits:
                        w.cancel()
        finally:
            stop.set()
            if self._warm_task is not None:
                tasks.append(self._warm_task)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.settings.release_on_stop:
                await self.elector.release()
