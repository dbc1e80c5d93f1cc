"""Where Thaw's activator sends a model's requests in a cluster: the ready pods of its revisions.

Owns the activator's view of Knative (an :class:`activator.types.EndpointSource`):

- :func:`replicas_by_model` — pure: from the PodAutoscalers and EndpointSlices as listed, the
  ready replicas of each model. A PA of Thaw's class (``autoscaling.knative.dev/class:
  autoscaler.thaw.dev``) maps its ``thaw.dev/model`` annotation to its revision (label
  ``serving.knative.dev/revision``); every ready endpoint of that revision's *private*
  EndpointSlices (label ``networking.internal.knative.dev/serviceType: Private``, the Service
  Knative selects the revision's pods with) becomes a replica at ``http://IP:PORT``, PORT being
  the slice's ``http`` port: the queue-proxy, so Knative still counts each pod's concurrency.
  The *public* slices are never used: in Proxy mode they point at Knative's activator.
- :class:`KnativeEndpoints` — the thin adapter: lists both every ``refresh_s`` (two list calls
  a second, whatever the number of models) through :class:`~knative.kube.KubeClient`,
  swaps the snapshot, and tells the activator which models changed (which releases their
  buffered requests at once). After an API error it keeps the last snapshot and backs off.
- :class:`ScrapedDemand` — the activator's :class:`activator.types.DemandSink` here: a no-op,
  since the controller scrapes the activator's ``/metrics`` (``thaw_activator_buffered_requests``)
  every tick and has no endpoint to be nudged on.
- :data:`ACTIVATOR_RULES` — the Kubernetes API calls this makes, as RBAC rules (least privilege:
  ``manifests/activator-rbac.yaml`` grants exactly these; ``tests/test_knative_activator.py``
  checks both directions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from activator.types import Replica
from knative.contract import (
    AUTOSCALER_CLASS,
    CLASS_ANNOTATION,
    MODEL_ANNOTATION,
    PRIVATE,
    REVISION_LABEL,
    SERVICE_TYPE_LABEL,
)
from knative.kube import Backoff, KubeClient, KubeError
from knative.rbac import Rule

log = logging.getLogger(__name__)

Obj = dict[str, Any]

#: The private Service's port to the queue-proxy for HTTP/1 revisions (target port 8012).
QUEUE_PORT_NAME = "http"

PA_PATH = "/apis/autoscaling.internal.knative.dev/v1alpha1/namespaces/{ns}/podautoscalers"
SLICES_PATH = "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"

#: What the activator reads, in one namespace: list only (it polls; it never gets, watches or
#: writes anything).
ACTIVATOR_RULES: tuple[Rule, ...] = (
    Rule("autoscaling.internal.knative.dev", "podautoscalers", frozenset({"list"})),
    Rule("discovery.k8s.io", "endpointslices", frozenset({"list"})),
)


def activator_rule_set() -> frozenset[tuple[str, str, str]]:
    """:data:`ACTIVATOR_RULES` flattened to (api_group, resource, verb) triples."""
    return frozenset((r.api_group, r.resource, v) for r in ACTIVATOR_RULES for v in r.verbs)


def model_of_revision(pas: Sequence[Obj]) -> dict[str, str]:
    """revision -> model, for the PAs of Thaw's class that name a model."""
    out: dict[str, str] = {}
    for pa in pas:
        meta = pa.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        if annotations.get(CLASS_ANNOTATION) != AUTOSCALER_CLASS:
            continue
        model = annotations.get(MODEL_ANNOTATION)
        if not isinstance(model, str) or not model:
            continue
        revision = (meta.get("labels") or {}).get(REVISION_LABEL) or meta.get("name")
        if revision:
            out[str(revision)] = model
    return out


def _queue_port(eps: Obj) -> int | None:
    for p in eps.get("ports") or []:
        if p.get("name") == QUEUE_PORT_NAME and isinstance(p.get("port"), int):
            return int(p["port"])
    return None


def replicas_by_model(pas: Sequence[Obj], slices: Sequence[Obj]) -> dict[str, tuple[Replica, ...]]:
    """The ready replicas of each model (only models with at least one), sorted by id.

    An endpoint is ready unless ``conditions.ready`` is false (the API says an unset one is to
    be read as ready; a terminating pod is never ready). A pod listed in two slices (dual stack)
    counts once. Slices that are public, of another revision, without an ``http`` port or of
    addressType FQDN are skipped."""
    revisions = model_of_revision(pas)
    found: dict[str, dict[str, Replica]] = {}
    for eps in slices:
        labels = (eps.get("metadata") or {}).get("labels") or {}
        model = revisions.get(str(labels.get(REVISION_LABEL, "")))
        if model is None or labels.get(SERVICE_TYPE_LABEL) != PRIVATE:
            continue
        family = eps.get("addressType")
        port = _queue_port(eps)
        if family not in ("IPv4", "IPv6") or port is None:
            continue
        revision = labels[REVISION_LABEL]
        for ep in eps.get("endpoints") or []:
            addresses = ep.get("addresses") or []
            if not addresses or (ep.get("conditions") or {}).get("ready") is False:
                continue
            address = str(addresses[0])
            pod = (ep.get("targetRef") or {}).get("name")
            replica_id = f"{revision}/{pod}" if pod else f"{revision}/{address}:{port}"
            host = f"[{address}]" if family == "IPv6" else address
            found.setdefault(model, {}).setdefault(
                replica_id, Replica(replica_id=replica_id, base_url=f"http://{host}:{port}")
            )
    return {m: tuple(r for _, r in sorted(reps.items())) for m, reps in found.items()}


def changed_models(
    old: Mapping[str, tuple[Replica, ...]], new: Mapping[str, tuple[Replica, ...]]
) -> set[str]:
    """Models whose ready replicas differ between two snapshots."""
    return {m for m in set(old) | set(new) if old.get(m, ()) != new.get(m, ())}


class KnativeEndpoints:
    """The activator's endpoint source in a cluster: polls PAs and EndpointSlices of one
    namespace and keeps the latest :func:`replicas_by_model` snapshot."""

    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.on_change = on_change
        self._replicas: dict[str, tuple[Replica, ...]] = {}
        #: Whether one refresh has succeeded (until then every model has no replica).
        self.synced = False

    def ready_replicas(self, model: str) -> Sequence[Replica]:
        return self._replicas.get(model, ())

    async def refresh(self) -> set[str]:
        """List, swap the snapshot, tell ``on_change`` of each changed model; those models.
        Raises :class:`KubeError` (the snapshot is then kept)."""
        pas = await self.kube.list_objects(PA_PATH.format(ns=self.namespace))
        slices = await self.kube.list_objects(
            SLICES_PATH.format(ns=self.namespace), label_selector=f"{SERVICE_TYPE_LABEL}={PRIVATE}"
        )
        new = replicas_by_model(pas.get("items") or [], slices.get("items") or [])
        changed = changed_models(self._replicas, new)
        self._replicas = new
        self.synced = True
        for model in sorted(changed):
            log.info(
                "model %s: %d ready replicas (%s)",
                model,
                len(new.get(model, ())),
                ", ".join(r.base_url for r in new.get(model, ())) or "none",
            )
            if self.on_change is not None:
                self.on_change(model)
        return changed

    async def run(self, stop: asyncio.Event, refresh_s: float = 1.0) -> None:
        """Refresh every ``refresh_s`` until ``stop``; after an API error keep the last snapshot
        (a pod that went away fails fast and the activator retries elsewhere) and back off."""
        backoff = Backoff(first_s=refresh_s, max_s=max(30.0, refresh_s))
        while not stop.is_set():
            try:
                await self.refresh()
                backoff.succeeded()
                delay_s = refresh_s
            except KubeError as e:
                delay_s = backoff.failed()
                log.warning(
                    "listing endpoints in %s: %s (again in %.1f s)", self.namespace, e, delay_s
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay_s)


class ScrapedDemand:
    """No poke: Thaw's controller learns of a request buffered at zero by scraping the
    activator's ``/metrics`` each tick (it serves no endpoint to be nudged on)."""

    async def poke(self, model: str) -> None:
        return None
