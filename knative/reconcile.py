"""The PodAutoscaler reconcile, pure: observed objects and a decision in, desired objects out.

Owns what Thaw's controller writes to Kubernetes, computed without I/O or a clock (time comes in
as ``now_s`` on a monotonic clock and ``now_iso`` for condition timestamps):

- :func:`is_ours` — the class filter (``autoscaling.knative.dev/class: autoscaler.thaw.dev``);
- :func:`desired_sks` — the ServerlessService for a PA, as Knative's ``resources.MakeSKS`` shapes
  it (named after the PA, controller ownerRef, labels copied, annotations copied but the metric
  one, ``objectRef`` = ``scaleTargetRef``, ``protocolType``, ``mode``, ``numActivators``);
- :func:`plan` — Knative's KPA steps (``kpa.go`` / ``scaler.go``) around Thaw's decision: the scale
  to apply (or none), the SKS mode, and the PA status (``serviceName``, ``metricsServiceName``,
  conditions ``SKSReady``, ``ScaleTargetInitialized``, ``Active``, ``Ready``, ``desiredScale``,
  ``actualScale``, ``observedGeneration``).

Scale to zero follows Knative: when the decision is 0 the PA is first marked inactive (``Active``
False, ``NoTraffic``) and the SKS put in ``Proxy`` (Knative's activator then holds traffic); the
replicas go to 0 only once the SKS has been in Proxy for the scale-to-zero grace period. While
scaling up, ``Active`` is Unknown ``Queued`` however long the cold start takes; it is never False
then (Knative fails a revision whose PA goes inactive while activating).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from autoscaler.policy import AutoscalingPolicy
from kernel.config_errors import problem, validation_problems
from knative.contract import (
    AUTOSCALER_CLASS,
    CLASS_ANNOTATION,
    INITIAL_SCALE_ANNOTATION,
    MAX_SCALE_ANNOTATION,
    MIN_SCALE_ANNOTATION,
    MODEL_ANNOTATION,
    REVISION_LABEL,
    SERVICE_LABEL,
)
from policy_file.schema import ThawConfig

Obj = dict[str, Any]
SksMode = Literal["Serve", "Proxy"]

PA_GROUP = "autoscaling.internal.knative.dev"
PA_VERSION = "v1alpha1"
SKS_GROUP = "networking.internal.knative.dev"
SKS_VERSION = "v1alpha1"

#: Knative's ``minActivators``: activators put in the path of a revision at least.
MIN_ACTIVATORS = 2
#: Knative's metric annotation: the only PA annotation ``MakeSKS`` does not copy onto the SKS.
METRIC_ANNOTATION = "autoscaling.knative.dev/metric"

ACTIVE = "Active"
SKS_READY = "SKSReady"
SCALE_TARGET_INITIALIZED = "ScaleTargetInitialized"
READY = "Ready"
#: Knative's condition set for a PA: Ready is the conjunction of these (a living condition set).
DEPENDENTS = (ACTIVE, SCALE_TARGET_INITIALIZED, SKS_READY)

NO_TRAFFIC = "NoTraffic"
NO_TRAFFIC_MESSAGE = "The target is not receiving traffic."
QUEUED = "Queued"
QUEUED_MESSAGE = "Requests to the target are being buffered as resources are provisioned."
TIMED_OUT = "TimedOut"
NO_PRIVATE_SERVICE_NAME = "No Private Service Name"
#: ``desiredScale`` when the controller does not know yet (Knative's ``scaleUnknown``).
SCALE_UNKNOWN = -1


class PodAutoscalerError(ValueError):
    """A PodAutoscaler lacks what the controller needs; the message names the field, the value
    and what is accepted (the kernel's one format, :mod:`kernel.config_errors`)."""


#: The policy field each of Knative's per-revision scale annotations sets.
SCALE_ANNOTATIONS = {
    "min_replicas": MIN_SCALE_ANNOTATION,
    "initial_replicas": INITIAL_SCALE_ANNOTATION,
    "max_replicas": MAX_SCALE_ANNOTATION,
}


@dataclass(frozen=True)
class ScaleTarget:
    """The PA's ``scaleTargetRef`` (Knative: always an apps/v1 Deployment)."""

    api_version: str
    kind: str
    name: str

    @property
    def group(self) -> str:
        return self.api_version.split("/")[0] if "/" in self.api_version else ""

    @property
    def resource(self) -> str:
        """The plural resource name of the target's kind (Deployment -> deployments)."""
        return self.kind.lower() + "s"


@dataclass(frozen=True)
class PodAutoscalerView:
    """The parts of a PA the controller reads."""

    namespace: str
    name: str
    uid: str
    generation: int
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    target: ScaleTarget
    protocol_type: str
    min_scale: int | None
    max_scale: int | None
    initial_scale: int | None


def is_ours(pa: Obj) -> bool:
    """True for a PA whose class annotation is Thaw's."""
    annotations = pa.get("metadata", {}).get("annotations") or {}
    return bool(annotations.get(CLASS_ANNOTATION) == AUTOSCALER_CLASS)


def _int_annotation(annotations: Mapping[str, str], key: str, default: int | None) -> int | None:
    raw = annotations.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise PodAutoscalerError(problem(f"annotation {key}", raw, "must be an integer >= 0"))
    return value


def view(pa: Obj) -> PodAutoscalerView:
    """Read a PA object; raise :class:`PodAutoscalerError` naming a missing or bad field.

    An annotation that is absent is None (the policy file then applies, as Knative's
    ``config-autoscaler`` does); ``max-scale`` 0 means unbounded (Knative's convention).
    """
    meta = pa.get("metadata") or {}
    spec = pa.get("spec") or {}
    ref = spec.get("scaleTargetRef") or {}
    for key in ("apiVersion", "kind", "name"):
        if not ref.get(key):
            raise PodAutoscalerError(
                problem(f"spec.scaleTargetRef.{key}", ref.get(key), "must be a non-empty string")
            )
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    min_scale = _int_annotation(annotations, MIN_SCALE_ANNOTATION, None)
    max_scale = _int_annotation(annotations, MAX_SCALE_ANNOTATION, 0)
    initial_scale = _int_annotation(annotations, INITIAL_SCALE_ANNOTATION, None)
    return PodAutoscalerView(
        namespace=str(meta.get("namespace", "default")),
        name=str(meta["name"]),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation", 0)),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(annotations),
        target=ScaleTarget(str(ref["apiVersion"]), str(ref["kind"]), str(ref["name"])),
        protocol_type=str(spec.get("protocolType", "http1")),
        min_scale=min_scale,
        max_scale=max_scale or None,
        initial_scale=initial_scale,
    )


def policy_for(pa: Obj, config: ThawConfig) -> tuple[str, AutoscalingPolicy, str | None]:
    """(model, policy, problem): the PA's model (``thaw.dev/model``, else its service or
    revision label, else its name), that model's autoscaling policy from the policy file (the
    defaults when the file has no such model), with the PA's ``min-scale``, ``max-scale`` and
    ``initial-scale`` annotations applied when present (Knative's per-revision settings win, as
    over ``config-autoscaler``). ``problem`` says why annotations were not applied, else None."""
    v = view(pa)
    model = (
        v.annotations.get(MODEL_ANNOTATION)
        or v.labels.get(SERVICE_LABEL)
        or v.labels.get(REVISION_LABEL)
        or v.name
    )
    policy = next((m.autoscaling for m in config.models if m.name == model), AutoscalingPolicy())
    update: dict[str, int] = {}
    if v.min_scale is not None:
        update["min_replicas"] = v.min_scale
    if v.initial_scale is not None:
        update["initial_replicas"] = v.initial_scale
    if v.max_scale is not None:
        update["max_replicas"] = v.max_scale
    if not update:
        return model, policy, None
    try:
        return model, AutoscalingPolicy.model_validate({**policy.model_dump(), **update}), None
    except ValidationError as e:
        names = {f: f"annotation {SCALE_ANNOTATIONS[f]}" for f in update}
        bad = "; ".join(validation_problems(e, AutoscalingPolicy, names=names))
        given = ", ".join(f"{SCALE_ANNOTATIONS[f]} = {v}" for f, v in update.items())
        return model, policy, f"scale annotations not applied ({given}): {bad}; the policy stays"


# -- the ServerlessService ------------------------------------------------------------------


def desired_sks(pa: Obj, mode: SksMode, num_activators: int) -> Obj:
    """The SKS Knative's ``MakeSKS`` would build for this PA."""
    v = view(pa)
    return {
        "apiVersion": f"{SKS_GROUP}/{SKS_VERSION}",
        "kind": "ServerlessService",
        "metadata": {
            "name": v.name,
            "namespace": v.namespace,
            "labels": dict(v.labels),
            "annotations": {k: s for k, s in v.annotations.items() if k != METRIC_ANNOTATION},
            "ownerReferences": [
                {
                    "apiVersion": f"{PA_GROUP}/{PA_VERSION}",
                    "kind": "PodAutoscaler",
                    "name": v.name,
                    "uid": v.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "mode": mode,
            "objectRef": dict(pa["spec"]["scaleTargetRef"]),
            "protocolType": v.protocol_type,
            "numActivators": num_activators,
        },
    }


def sks_update(existing: Obj, desired: Obj) -> Obj | None:
    """The object to PUT when the existing SKS's spec differs from the desired one, else None.

    Like Knative's ``ReconcileSKS``: only the spec is reconciled; metadata and status stay.
    """
    if existing.get("spec") == desired["spec"]:
        return None
    out = copy.deepcopy(existing)
    out["spec"] = copy.deepcopy(desired["spec"])
    return out


def controlled_by(obj: Obj, pa: Obj) -> bool:
    """True when ``obj``'s controller ownerRef is this PA (Knative's ``IsControlledBy``)."""
    uid = pa.get("metadata", {}).get("uid")
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("uid") == uid:
            return True
    return False


def _sks_ready(sks: Obj) -> tuple[bool, str]:
    """(Ready, message) from the SKS status's Ready condition."""
    for c in (sks.get("status") or {}).get("conditions") or []:
        if c.get("type") == READY:
            return c.get("status") == "True", str(c.get("message", ""))
    return False, ""


def activator_in_path(sks: Obj) -> bool:
    """True once Knative's networking controller has acted on an SKS in Proxy: its status has
    caught up with the spec (``observedGeneration``) and ``ActivatorEndpointsPopulated`` is True.
    Knative probes its activator for the same fact before scaling to zero."""
    if ((sks.get("spec") or {}).get("mode")) != "Proxy":
        return False
    status = sks.get("status") or {}
    generation = (sks.get("metadata") or {}).get("generation")
    if generation is not None and status.get("observedGeneration") != generation:
        return False
    return condition_status(status, "ActivatorEndpointsPopulated") == "True"


# -- conditions -----------------------------------------------------------------------------


def get_condition(status: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for c in status.get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return None


def condition_status(status: Mapping[str, Any], ctype: str) -> str:
    """ "True", "False" or "Unknown" (a missing condition is Unknown)."""
    c = get_condition(status, ctype)
    return str(c.get("status", "Unknown")) if c else "Unknown"


def _set(
    conditions: dict[str, Obj], ctype: str, status: str, reason: str, message: str, now_iso: str
) -> None:
    old = conditions.get(ctype)
    new: Obj = {"type": ctype, "status": status}
    if reason:
        new["reason"] = reason
    if message:
        new["message"] = message
    if old is not None and old.get("status") == status:
        # Knative keeps lastTransitionTime while the status is unchanged.
        new["lastTransitionTime"] = old.get("lastTransitionTime", now_iso)
    else:
        new["lastTransitionTime"] = now_iso
    if old is not None and {k: v for k, v in old.items() if k != "lastTransitionTime"} == {
        k: v for k, v in new.items() if k != "lastTransitionTime"
    }:
        new = dict(old)
    conditions[ctype] = new


def _ready(conditions: dict[str, Obj], now_iso: str) -> None:
    """Ready as Knative's living condition set computes it: True when every dependent is True;
    else False with the first False dependent's reason, else Unknown with the first Unknown's."""
    deps = [conditions.get(t) or {"type": t, "status": "Unknown"} for t in DEPENDENTS]
    failed = next((c for c in deps if c.get("status") == "False"), None)
    unknown = next((c for c in deps if c.get("status") != "True"), None)
    if failed is not None:
        _set(
            conditions, READY, "False", failed.get("reason", ""), failed.get("message", ""), now_iso
        )
    elif unknown is not None:
        _set(
            conditions,
            READY,
            "Unknown",
            unknown.get("reason", ""),
            unknown.get("message", ""),
            now_iso,
        )
    else:
        _set(conditions, READY, "True", "", "", now_iso)


# -- the plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """What the controller saw of one PA's world this tick.

    ``spec_replicas``: the scale subresource's ``spec.replicas``; ``ready_pods``: ready endpoints
    of the revision; ``sks``: the SKS (None when absent); ``proxy_since_s``: when the controller
    found the SKS in Proxy with the activator in its path (:func:`activator_in_path`), on the
    monotonic clock (None when not).
    """

    spec_replicas: int
    ready_pods: int
    sks: Obj | None
    proxy_since_s: float | None


@dataclass(frozen=True)
class Plan:
    """What to write for one PA this tick.

    ``scale``: the replicas to set on the scale subresource, None to leave it. ``sks``: the SKS
    as it should be (create it when absent, PUT it when its spec differs). ``status``: the PA's
    whole new status. ``mode``: the SKS mode chosen. ``want``: the scale Knative would call
    ``want`` (-1 unknown).
    """

    scale: int | None
    sks: Obj
    status: Obj
    mode: SksMode
    want: int


def plan(
    pa: Obj,
    observed: Observed,
    desired_replicas: int | None,
    grace_s: float,
    now_s: float,
    now_iso: str,
    min_scale: int = 0,
    initial_scale: int = 1,
) -> Plan:
    """Knative's KPA reconcile around Thaw's decision (``desired_replicas``; None: not known yet,
    e.g. before the SKS has a private service). ``min_scale`` and ``initial_scale`` are the
    effective bounds (the controller passes its policy's, with the PA's annotations applied);
    they decide when the PA counts as initialized and active."""
    v = view(pa)
    old_status: Obj = copy.deepcopy(pa.get("status") or {})
    conditions: dict[str, Obj] = {
        c["type"]: dict(c) for c in old_status.get("conditions") or [] if "type" in c
    }
    status: Obj = {k: w for k, w in old_status.items() if k != "conditions"}
    status["observedGeneration"] = v.generation
    # Required by the CRD (Go strings without omitempty): "" until the SKS names them.
    status.setdefault("serviceName", "")
    status.setdefault("metricsServiceName", "")

    sks = observed.sks
    private = str((sks or {}).get("status", {}).get("privateServiceName", ""))
    inactive = conditions.get(ACTIVE, {}).get("status") == "False"
    activating = conditions.get(ACTIVE, {}).get("status", "Unknown") == "Unknown"

    if sks is None or not private:
        # Knative: an SKS in Proxy first; nothing else until it has a private service.
        want = SCALE_UNKNOWN
        mode: SksMode = "Proxy"
        scale: int | None = None
        _set(conditions, SKS_READY, "Unknown", "NotReady", NO_PRIVATE_SERVICE_NAME, now_iso)
    else:
        status["metricsServiceName"] = private
        want = SCALE_UNKNOWN if desired_replicas is None else desired_replicas
        scale, mode = _scale_and_mode(
            want,
            observed,
            inactive=inactive,
            activating=activating,
            grace_s=grace_s,
            now_s=now_s,
        )
        status["serviceName"] = str(sks.get("status", {}).get("serviceName", ""))
        ok, message = _sks_ready(sks)
        if ok:
            _set(conditions, SKS_READY, "True", "", "", now_iso)
        else:
            _set(conditions, SKS_READY, "Unknown", "NotReady", message, now_iso)

    status["actualScale"] = observed.ready_pods
    old_desired = old_status.get("desiredScale")
    if not (want == SCALE_UNKNOWN and isinstance(old_desired, int) and old_desired >= 0):
        status["desiredScale"] = want
    _active(conditions, min_scale, initial_scale, status, want, observed.ready_pods, now_iso)
    _ready(conditions, now_iso)
    status["conditions"] = [conditions[t] for t in (*DEPENDENTS, READY) if t in conditions] + [
        c for t, c in conditions.items() if t not in (*DEPENDENTS, READY)
    ]
    return Plan(
        scale=scale,
        sks=desired_sks(pa, mode, MIN_ACTIVATORS),
        status=status,
        mode=mode,
        want=want,
    )


def _scale_and_mode(
    want: int,
    observed: Observed,
    *,
    inactive: bool,
    activating: bool,
    grace_s: float,
    now_s: float,
) -> tuple[int | None, SksMode]:
    """Knative's ``scaler.scale`` and mode choice: the scale to apply and the SKS mode."""
    if want == SCALE_UNKNOWN:
        return None, "Proxy" if inactive else ("Serve" if observed.ready_pods > 0 else "Proxy")
    if want > 0:
        # The activator leaves the path only once a pod is ready to take the traffic.
        mode: SksMode = "Serve" if observed.ready_pods > 0 else "Proxy"
        return (want if want != observed.spec_replicas else None), mode
    # want == 0: mark inactive and proxy first; scale to 0 only after the grace in Proxy.
    if observed.spec_replicas == 0:
        return None, "Proxy"
    if not inactive and not activating:
        return None, "Proxy"
    proxy_for_s = None if observed.proxy_since_s is None else now_s - observed.proxy_since_s
    sks_mode = ((observed.sks or {}).get("spec") or {}).get("mode")
    if sks_mode == "Proxy" and proxy_for_s is not None and proxy_for_s >= grace_s:
        return 0, "Proxy"
    return None, "Proxy"


def not_owned(pa: Obj, kind: str, name: str, now_iso: str) -> Obj:
    """The PA status when an object it needs exists but belongs to someone else (Knative's
    ``MarkResourceNotOwned``: Active False ``NotOwned``; Ready follows)."""
    old_status: Obj = copy.deepcopy(pa.get("status") or {})
    conditions: dict[str, Obj] = {
        c["type"]: dict(c) for c in old_status.get("conditions") or [] if "type" in c
    }
    message = f'There is an existing {kind} "{name}" that we do not own.'
    _set(conditions, ACTIVE, "False", "NotOwned", message, now_iso)
    _ready(conditions, now_iso)
    status = {k: w for k, w in old_status.items() if k != "conditions"}
    status["observedGeneration"] = view(pa).generation
    status.setdefault("serviceName", "")
    status.setdefault("metricsServiceName", "")
    status["conditions"] = [conditions[t] for t in (*DEPENDENTS, READY) if t in conditions]
    return status


def _active(
    conditions: dict[str, Obj],
    min_scale: int,
    initial_scale: int,
    status: Obj,
    want: int,
    ready: int,
    now_iso: str,
) -> None:
    """Knative's ``computeActiveCondition`` (its table in ``kpa.go``), and
    ``ScaleTargetInitialized`` once ready pods reach max(min-scale, initial-scale)."""
    initialized = conditions.get(SCALE_TARGET_INITIALIZED, {}).get("status") == "True"
    if initialized:
        min_ready = max(min_scale, 1)
    else:
        min_ready = max(min_scale, initial_scale)
    if ready >= min_ready and status.get("serviceName"):
        _set(conditions, SCALE_TARGET_INITIALIZED, "True", "", "", now_iso)
    elif not initialized:
        _set(conditions, SCALE_TARGET_INITIALIZED, "Unknown", "", "", now_iso)
    if want > 0:
        # Thaw knows demand on the first pass (Knative's decider does not: its want is -1 then):
        # with a scale-up asked for, activation waits for a ready pod, even at initial-scale 0.
        min_ready = max(min_ready, 1)
    active = conditions.get(ACTIVE, {}).get("status", "Unknown")
    is_inactive = active == "False"
    is_activating = active == "Unknown" and ACTIVE in conditions
    if want == 0 or min_ready == 0:
        if is_activating and min_ready > 0:
            _set(
                conditions,
                ACTIVE,
                "False",
                TIMED_OUT,
                "The target could not be activated.",
                now_iso,
            )
        else:
            _set(conditions, ACTIVE, "False", NO_TRAFFIC, NO_TRAFFIC_MESSAGE, now_iso)
    elif ready < min_ready:
        if want > 0 or not is_inactive:
            _set(conditions, ACTIVE, "Unknown", QUEUED, QUEUED_MESSAGE, now_iso)
        else:
            _set(conditions, ACTIVE, "False", NO_TRAFFIC, NO_TRAFFIC_MESSAGE, now_iso)
    elif want > 0 or not is_inactive:
        _set(conditions, ACTIVE, "True", "", "", now_iso)


def ready_endpoint_addresses(slices: Sequence[Obj]) -> tuple[list[tuple[str, str]], int]:
    """(ready (pod name or address, address) pairs, not-ready count) over EndpointSlices."""
    ready: list[tuple[str, str]] = []
    not_ready = 0
    for s in slices:
        for ep in s.get("endpoints") or []:
            addrs = ep.get("addresses") or []
            if not addrs:
                continue
            cond = ep.get("conditions") or {}
            if cond.get("ready", True) is False:
                not_ready += 1
                continue
            name = str((ep.get("targetRef") or {}).get("name") or addrs[0])
            ready.append((name, str(addrs[0])))
    return ready, not_ready
