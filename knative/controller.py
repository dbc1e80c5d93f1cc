"""Thaw's PodAutoscaler-class controller: the Kubernetes adapter around the pure decider.

Owns the loops and the I/O; the decisions are :func:`autoscaler.decider.decide` (how many
replicas) and :func:`knative.reconcile.plan` (Knative's KPA steps: SKS mode, scale to
apply, PA status). Each tick, for every PodAutoscaler of class ``autoscaler.thaw.dev`` (others
are never written, nor cached):

1. read the SKS named after the PA and the scale subresource of its ``scaleTargetRef``; the
   revisions' EndpointSlices (label ``serving.knative.dev/revision``) are listed once per
   namespace per tick;
2. scrape each ready endpoint's engine ``/metrics`` directly (``engine_port``), and read the
   demand held in front of the revision (Knative's activator pods, :mod:`knative.demand`);
3. decide, plan, then write in Knative's order: the SKS (create, or PUT its spec: Proxy goes
   in *before* a scale to 0), the scale (JSON patch of ``/spec/replicas`` on ``/scale``), and the
   PA status through ``/status`` (only when it changed). PUTs are retried on 409 after a re-read.

PAs come from a list+watch (re-listed when the watch ends or fails, with backoff). Only the
replica holding the Lease acts (:class:`~knative.leader.LeaderElector`). With a
:class:`~knative.gateway.Gateway`, each tick also publishes the gateway's routes (one call, from
the PAs and slices the tick read), and only the leader serves them.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from autoscaler.decider import DeciderState, ModelObservation, ReplicaObservation, decide
from autoscaler.policy import AutoscalingPolicy
from engine.metrics import MetricsParseError, parse_engine_metrics
from kernel.clock import Clock
from kernel.vocab import UNKNOWN_TIER, ReportedTier
from knative.contract import PRIVATE, REVISION_LABEL, SERVICE_TYPE_LABEL
from knative.demand import DemandSource, Revision
from knative.endpoints import revision_candidates
from knative.gateway import Gateway
from knative.kube import Backoff, KubeClient, KubeError, NotFoundError, retry_on_conflict
from knative.leader import LeaderElector
from knative.reconcile import (
    PA_GROUP,
    PA_VERSION,
    SKS_GROUP,
    SKS_VERSION,
    Observed,
    PodAutoscalerError,
    activator_in_path,
    controlled_by,
    is_ours,
    not_owned,
    plan,
    policy_for,
    ready_endpoint_addresses,
    sks_update,
    view,
)
from policy_file.schema import ThawConfig

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
    #: Give the Lease up when stopped cleanly, so a standby takes over at once.
    release_on_stop: bool = True


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
    proxy_since_s: float | None = None
    retry_at_s: float = 0.0
    cold_start_since_s: float | None = None
    backoff: Backoff = field(default_factory=Backoff)


def _rv(obj: Obj) -> int:
    try:
        return int(obj.get("metadata", {}).get("resourceVersion", "0"))
    except ValueError:
        return 0


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
        self.pas: dict[tuple[str, str], Obj] = {}
        self._states: dict[tuple[str, str], _PaState] = {}
        self._wake = asyncio.Event()
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

    # -- paths ---------------------------------------------------------------------------------

    def _pa_collection(self) -> str:
        base = f"/apis/{PA_GROUP}/{PA_VERSION}"
        ns = self.settings.namespace
        return f"{base}/namespaces/{ns}/podautoscalers" if ns else f"{base}/podautoscalers"

    @staticmethod
    def _pa_path(ns: str, name: str) -> str:
        return f"/apis/{PA_GROUP}/{PA_VERSION}/namespaces/{ns}/podautoscalers/{name}"

    @staticmethod
    def _sks_collection(ns: str) -> str:
        return f"/apis/{SKS_GROUP}/{SKS_VERSION}/namespaces/{ns}/serverlessservices"

    # -- the watch -----------------------------------------------------------------------------

    def _observe_pa(self, event_type: str, pa: Obj) -> None:
        if not is_ours(pa):
            return
        meta = pa.get("metadata", {})
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        if event_type == "DELETED":
            self.pas.pop(key, None)
            self._states.pop(key, None)
            return
        old = self.pas.get(key)
        if old is not None and _rv(old) > _rv(pa):
            return  # we already hold a newer copy (our own status write)
        self.pas[key] = pa
        if old is None or old.get("metadata", {}).get("generation") != meta.get("generation"):
            self._wake.set()

    async def watch_pas(self, stop: asyncio.Event) -> None:
        """List, then watch, PodAutoscalers; again after the stream ends; backoff on errors."""
        backoff = Backoff()
        while not stop.is_set():
            try:
                listing = await self.kube.list_objects(self._pa_collection())
                seen = set()
                for pa in listing.get("items") or []:
                    self._observe_pa("ADDED", pa)
                    meta = pa.get("metadata", {})
                    seen.add((meta.get("namespace", ""), meta.get("name", "")))
                for key in set(self.pas) - seen:
                    self.pas.pop(key, None)
                    self._states.pop(key, None)
                self.synced.set()
                rv = str(listing.get("metadata", {}).get("resourceVersion", ""))
                async for event in self.kube.watch(
                    self._pa_collection(), rv, self.settings.watch_timeout_s
                ):
                    if stop.is_set():
                        return
                    etype = str(event.get("type", ""))
                    if etype == "ERROR":
                        log.warning("PodAutoscaler watch: %s", event.get("object"))
                        break
                    if etype in ("ADDED", "MODIFIED", "DELETED"):
                        self._observe_pa(etype, event.get("object") or {})
                backoff.succeeded()
            except KubeError as e:
                delay = backoff.failed()
                log.warning("PodAutoscaler list/watch: %s; again in %.1f s", e, delay)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except TimeoutError:
                    pass

    # -- one PA --------------------------------------------------------------------------------

    def policy_for(self, pa: Obj) -> tuple[str, AutoscalingPolicy]:
        """The model name and its autoscaling policy (:func:`reconcile.policy_for`)."""
        model, policy, problem = policy_for(pa, self.config)
        if problem:
            meta = pa.get("metadata", {})
            log.warning("PA %s/%s: %s", meta.get("namespace"), meta.get("name"), problem)
        return model, policy

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

    async def _slices(self, ns: str) -> list[Obj]:
        """The namespace's EndpointSlices of revisions' private Services (one list for all PAs).

        Only the private Service's slices list the revision's pods: the public one (the SKS's)
        lists Knative's activator while the SKS is in Proxy mode.
        """
        listing = await self.kube.list_objects(
            f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
            label_selector=f"{REVISION_LABEL},{SERVICE_TYPE_LABEL}={PRIVATE}",
        )
        return list(listing.get("items") or [])

    async def reconcile(self, pa: Obj, slices: list[Obj] | None = None) -> None:
        """One tick for one PA: observe, decide, plan, write (SKS, then scale, then status).

        ``slices``: the namespace's revision EndpointSlices when the tick listed them already.
        """
        v = view(pa)
        key = (v.namespace, v.name)
        st = self._states.setdefault(key, _PaState())
        ns = v.namespace
        sks_path = f"{self._sks_collection(ns)}/{v.name}"
        try:
            sks: Obj | None = await self.kube.get(sks_path)
        except NotFoundError:
            sks = None
        if sks is not None and not controlled_by(sks, pa):
            log.warning("PA %s/%s: SKS %s exists and is not ours; leaving it", ns, v.name, v.name)
            status = not_owned(pa, "ServerlessService", v.name, self._now_iso())
            if status != (pa.get("status") or {}):
                await self._write_status(pa, status)
            return
        t = v.target
        group_version = t.api_version
        scale_path = (
            f"/apis/{group_version}/namespaces/{ns}/{t.resource}/{t.name}/scale"
            if "/" in group_version
            else f"/api/{group_version}/namespaces/{ns}/{t.resource}/{t.name}/scale"
        )
        try:
            scale_obj: Obj | None = await self.kube.get(scale_path)
        except NotFoundError:
            scale_obj = None
        spec_replicas = int(((scale_obj or {}).get("spec") or {}).get("replicas") or 0)
        revision = v.labels.get(REVISION_LABEL, v.name)
        if slices is None:
            slices = await self._slices(ns)
        mine = [
            s
            for s in slices
            if (s.get("metadata") or {}).get("labels", {}).get(REVISION_LABEL) == revision
        ]
        ready, _ = ready_endpoint_addresses(mine)
        replicas = list(await asyncio.gather(*(self._scrape(addr) for _, addr in ready)))
        starting = max(0, spec_replicas - len(ready))
        replicas += [
            ReplicaObservation(f"starting-{i}", "starting", None, None, None, None)
            for i in range(starting)
        ]
        model, policy = self.policy_for(pa)
        buffered = await self.demand.buffered(Revision(ns, revision, model))
        obs = ModelObservation(model, tuple(replicas), buffered)
        now_s = self.clock.monotonic()
        decision, st.decider = decide(obs, policy, st.decider, now_s)

        # The grace in Proxy counts from when Knative's networking controller has put the
        # activator in the path (our stand-in for Knative's activator probe).
        if sks is not None and activator_in_path(sks):
            if st.proxy_since_s is None:
                st.proxy_since_s = now_s
        else:
            st.proxy_since_s = None
        now_iso = self._now_iso()
        p = plan(
            pa,
            Observed(spec_replicas, len(ready), sks, st.proxy_since_s),
            decision.desired_replicas,
            policy.scale_to_zero_grace_s,
            now_s,
            now_iso,
            min_scale=policy.min_replicas,
            initial_scale=policy.initial_replicas,
        )
        if decision.changes or p.scale is not None:
            log.info(
                "PA %s/%s (model %s): want %d, scale %s, SKS %s: %s",
                ns,
                v.name,
                model,
                p.want,
                p.scale,
                p.mode,
                decision.reason,
            )

        # 1. The SKS (Proxy in place before any scale to zero).
        if sks is None:
            await self.kube.create(self._sks_collection(ns), p.sks)
        elif sks_update(sks, p.sks) is not None:

            async def put_sks() -> Obj:
                current = await self.kube.get(sks_path)
                new = sks_update(current, p.sks)
                return current if new is None else await self.kube.replace(sks_path, new)

            first = sks_update(sks, p.sks)
            assert first is not None
            try:
                await self.kube.replace(sks_path, first)
            except KubeError as e:
                if e.status != 409:
                    raise
                await retry_on_conflict(put_sks)
        # 2. The scale, as Knative's scaler patches it.
        if p.scale is not None and scale_obj is not None:
            await self.kube.json_patch(
                scale_path, [{"op": "add", "path": "/spec/replicas", "value": p.scale}]
            )
            if self.reports is not None:
                self.reports.decision(
                    model, spec_replicas, p.scale, decision.reason, decision.panic
                )
            if spec_replicas == 0 and p.scale > 0:
                st.cold_start_since_s = now_s
            elif p.scale == 0:
                st.cold_start_since_s = None
        if st.cold_start_since_s is not None and ready:
            if self.reports is not None:
                self.reports.cold_start(model, CLUSTER_TIER, now_s - st.cold_start_since_s)
            log.info(
                "PA %s/%s: cold start done in %.1f s", ns, v.name, now_s - st.cold_start_since_s
            )
            st.cold_start_since_s = None
        # 3. The PA status, through the status subresource.
        if p.status != (pa.get("status") or {}):
            await self._write_status(pa, p.status)

    def _now_iso(self) -> str:
        """Condition timestamps: Kubernetes' second-resolution UTC time."""
        wall = datetime.datetime.fromtimestamp(self.clock.wall(), datetime.UTC)
        return wall.strftime("%Y-%m-%dT%H:%M:%SZ")

    async def _write_status(self, pa: Obj, status: Obj) -> None:
        meta = pa["metadata"]
        path = self._pa_path(meta["namespace"], meta["name"]) + "/status"
        first = True

        async def attempt() -> Obj:
            nonlocal first
            body = (
                pa if first else await self.kube.get(self._pa_path(meta["namespace"], meta["name"]))
            )
            first = False
            out = copy.deepcopy(body)
            out["status"] = status
            return await self.kube.replace(path, out)

        written = await retry_on_conflict(attempt)
        self._observe_pa("MODIFIED", written)

    # -- the loops -----------------------------------------------------------------------------

    async def tick(self) -> None:
        """Reconcile every known PA once, concurrently (leader only); one PA's API error or slow
        scrape does not hold up the others."""
        self.demand.new_tick()
        pas = list(self.pas.items())
        slices: dict[str, list[Obj] | None] = {}
        for ns in sorted({key[0] for key, _ in pas}):
            try:
                slices[ns] = await self._slices(ns)
            except KubeError as e:
                log.warning("EndpointSlices in %s: %s", ns, e)
                slices[ns] = None  # each PA lists (and backs off) on its own
        if self.gateway is not None and all(v is not None for v in slices.values()):
            listed = [s for ns_slices in slices.values() for s in ns_slices or []]
            await self.gateway.tick(revision_candidates([pa for _, pa in pas], listed), self.config)
        await asyncio.gather(*(self._tick_one(key, pa, slices[key[0]]) for key, pa in pas))

    async def _tick_one(self, key: tuple[str, str], pa: Obj, slices: list[Obj] | None) -> None:
        st = self._states.setdefault(key, _PaState())
        now_s = self.clock.monotonic()
        if now_s < st.retry_at_s:
            return
        try:
            await self.reconcile(pa, slices)
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
            asyncio.create_task(self.watch_pas(stop), name="pa-watch"),
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
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.settings.release_on_stop:
                await self.elector.release()
