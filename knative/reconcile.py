"""The PodAutoscaler reconcile, pure: observed objects and a decision in, desired objects out.

Owns what Thaw's controller writes to Kubernetes, computed without I/O or a clock (time comes in
as ``now_s``, wall seconds, and ``now_iso`` for condition timestamps):

- :func:`is_ours` — the class filter (``autoscaling.knative.dev/class: autoscaler.thaw.dev``);
- :func:`resolve` — the PA's model, policy, Knative scale settings (``ScaleBounds``,
  ``GetInitialScale``, ``spec.reachability``, ``config-autoscaler``) and grace, with the
  precedence stated there;
- :func:`desired_sks` — the ServerlessService for a PA, as Knative's ``resources.MakeSKS`` shapes
  it (named after the PA, controller ownerRef, labels copied, annotations copied but the metric
  one, ``objectRef`` = ``scaleTargetRef``, ``protocolType``, ``mode``, ``numActivators``);
- :func:`plan` — Knative's KPA steps (``kpa.go`` / ``scaler.go``) around Thaw's decision: the scale
  to apply (or none), the SKS mode, and the PA status (``serviceName``, ``metricsServiceName``,
  conditions ``SKSReady``, ``ScaleTargetInitialized``, ``Active``, ``Ready``, ``desiredScale``,
  ``actualScale``, ``observedGeneration``).

Scale to zero follows Knative's ``handleScaleToZero``: when the decision is 0 an active PA (active
for a stable window) is first marked inactive (``Active`` False, ``NoTraffic``) and the SKS put in
``Proxy`` (Knative's activator then holds traffic); the replicas go to 0 once the PA has been
inactive for the grace and the activator is in the path (:mod:`autoscaler.scale_to_zero`, the
rule every runtime shares). While activating (``Active`` Unknown ``Queued``) a decision of 0
waits for the revision's progress deadline + 30 s before it gives up (``TimedOut``: Knative then
fails the revision), so a slow GPU cold start is not cut short.
"""

from __future__ import annotations

import copy
import datetime
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from autoscaler.policy import AutoscalingPolicy
from autoscaler.scale_to_zero import grace_step
from kernel.config_errors import problem
from knative.cluster_config import KnativeConfig, go_duration_s
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
    max_scale: int
    initial_scale: int | None
    #: Whether ``max-scale`` is annotated (0 = unbounded either way).
    max_annotated: bool = False


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
        max_scale=max_scale or 0,
        max_annotated=MAX_SCALE_ANNOTATION in annotations,
        initial_scale=initial_scale,
    )


def model_of(pa: Obj, v: PodAutoscalerView | None = None) -> str:
    """The PA's model: ``thaw.dev/model``, else its service or revision label, else its name
    (``v``: the PA's :func:`view`, when the caller has it)."""
    v = v or view(pa)
    return (
        v.annotations.get(MODEL_ANNOTATION)
        or v.labels.get(SERVICE_LABEL)
        or v.labels.get(REVISION_LABEL)
        or v.name
    )


@dataclass(frozen=True)
class Resolved:
    """What one PA runs with this tick: its model, the policy the decider gets, Knative's scale
    settings and the scale-to-zero grace (:func:`resolve`)."""

    model: str
    policy: AutoscalingPolicy
    settings: ScaleSettings
    grace_s: float


def resolve(
    pa: Obj, config: ThawConfig, cfg: KnativeConfig, v: PodAutoscalerView | None = None
) -> Resolved:
    """The PA's settings, in this precedence (highest first):

    - scale bounds are Knative's, as KPA resolves them (:func:`scale_settings`): the PA's
      ``min-scale`` / ``max-scale`` / ``initial-scale`` annotations, else ``config-autoscaler``;
      an Unreachable revision has no minimum and no initial scale. The policy file's
      ``min_replicas`` / ``initial_replicas`` / ``max_replicas`` reach a revision as those
      annotations (``thaw knative render`` writes them); where Knative leaves max unbounded, the
      policy's ``max_replicas`` caps it;
    - ``scale_to_zero_grace_s``: the model's, when the policy file sets it; else
      ``config-autoscaler``'s ``scale-to-zero-grace-period``;
    - every other autoscaling key: the policy file (the model's, else the defaults).

    An Unreachable revision's decider has no scale-down rate limit and no scale-down delay
    (Knative's decider with ``Reachable`` false)."""
    v = v or view(pa)
    model = model_of(pa, v)
    found = next((m.autoscaling for m in config.models if m.name == model), None)
    base = found if found is not None else AutoscalingPolicy()
    s = scale_settings(pa, cfg, v)
    high = s.max_scale if s.max_scale > 0 else base.max_replicas
    high = max(high, s.min_scale)
    update: dict[str, Any] = {
        "min_replicas": s.min_scale,
        "max_replicas": high,
        "initial_replicas": min(s.initial_scale, high) if s.reachable else 0,
    }
    if not s.reachable:
        update["max_scale_down_rate"] = math.inf
        update["scale_down_delay_s"] = 0.0
    grace_s = (
        base.scale_to_zero_grace_s
        if found is not None and "scale_to_zero_grace_s" in found.model_fields_set
        else cfg.scale_to_zero_grace_period_s
    )
    return Resolved(model, base.model_copy(update=update), s, grace_s)


# -- the ServerlessService ------------------------------------------------------------------


def desired_sks(
    pa: Obj, mode: SksMode, num_activators: int, v: PodAutoscalerView | None = None
) -> Obj:
    """The SKS Knative's ``MakeSKS`` would build for this PA."""
    v = v or view(pa)
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


# -- Knative's scale settings for one PA ------------------------------------------------------

UNREACHABLE = "Unreachable"
#: Knative's ``activationTimeoutBuffer`` (``kpa/scaler.go``): KPA gives up activating only after
#: the revision's progress deadline and this margin.
ACTIVATION_TIMEOUT_BUFFER_S = 30.0
PROGRESS_DEADLINE_ANNOTATION = "serving.knative.dev/progress-deadline"
RETENTION_ANNOTATION = "autoscaling.knative.dev/scale-to-zero-pod-retention-period"
TARGET_ANNOTATION = "autoscaling.knative.dev/target"
TBC_ANNOTATION = "autoscaling.knative.dev/target-burst-capacity"


@dataclass(frozen=True)
class ScaleSettings:
    """Knative's scale settings for one PA, resolved from its annotations over
    ``config-autoscaler`` / ``config-deployment`` (:func:`scale_settings`).

    ``min_scale``/``max_scale``: ``ScaleBounds`` (``pa_lifecycle.go``: min dropped when
    Unreachable; max 0 = unbounded, within ``max-scale-limit``); ``initial_scale``:
    ``GetInitialScale`` (``kpa/resources/decider.go``); ``activation_timeout_s``: the progress
    deadline + 30 s (``scaler.go``); ``retention_s``: the last-pod retention (0 when
    Unreachable); ``total_value``/``target_burst_capacity``/``activator_capacity``: what
    ``computeNumActivators`` reads (``kpa.go``, ``ResolveMetricTarget``'s total for concurrency).
    """

    reachable: bool
    min_scale: int
    max_scale: int
    initial_scale: int
    enable_scale_to_zero: bool
    activation_timeout_s: float
    retention_s: float
    total_value: float
    target_burst_capacity: float
    activator_capacity: float


def _float_annotation(annotations: Mapping[str, str], key: str) -> float | None:
    raw = annotations.get(key)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise PodAutoscalerError(problem(f"annotation {key}", raw, "must be a number")) from None


def _duration_annotation(annotations: Mapping[str, str], key: str) -> float | None:
    raw = annotations.get(key)
    if raw is None:
        return None
    try:
        return go_duration_s(raw)
    except ValueError:
        raise PodAutoscalerError(
            problem(f"annotation {key}", raw, "must be a Go duration, e.g. 30s")
        ) from None


def scale_settings(
    pa: Obj, cfg: KnativeConfig, v: PodAutoscalerView | None = None
) -> ScaleSettings:
    """The PA's scale settings as Knative's KPA resolves them (see :class:`ScaleSettings`)."""
    v = v or view(pa)
    reachable = str((pa.get("spec") or {}).get("reachability", "")) != UNREACHABLE
    min_scale = 0
    if reachable:
        min_scale = v.min_scale if v.min_scale is not None else cfg.min_scale
    max_scale = v.max_scale if v.max_annotated else cfg.max_scale
    if cfg.max_scale_limit > 0:
        # Knative's webhook refuses a max-scale above the limit (or unbounded): cap it.
        max_scale = cfg.max_scale_limit if max_scale == 0 else min(max_scale, cfg.max_scale_limit)
    initial = v.initial_scale
    if initial is None or (initial == 0 and not cfg.allow_zero_initial_scale):
        initial = cfg.initial_scale
    deadline_s = _duration_annotation(v.annotations, PROGRESS_DEADLINE_ANNOTATION)
    retention_s = _duration_annotation(v.annotations, RETENTION_ANNOTATION)
    concurrency = int((pa.get("spec") or {}).get("containerConcurrency") or 0)
    total = float(concurrency) if concurrency > 0 else cfg.container_concurrency_target_default
    target = _float_annotation(v.annotations, TARGET_ANNOTATION)
    if target is not None:
        total = min(target, float(concurrency)) if concurrency > 0 else target
    tbc = _float_annotation(v.annotations, TBC_ANNOTATION)
    return ScaleSettings(
        reachable=reachable,
        min_scale=min_scale,
        max_scale=max_scale,
        initial_scale=initial,
        enable_scale_to_zero=cfg.enable_scale_to_zero,
        activation_timeout_s=(cfg.progress_deadline_s if deadline_s is None else deadline_s)
        + ACTIVATION_TIMEOUT_BUFFER_S,
        retention_s=0.0
        if not reachable
        else (cfg.scale_to_zero_pod_retention_period_s if retention_s is None else retention_s),
        total_value=total,
        target_burst_capacity=cfg.target_burst_capacity if tbc is None else tbc,
        activator_capacity=cfg.activator_capacity,
    )


def compute_num_activators(ready_pods: int, s: ScaleSettings) -> int:
    """Knative's ``computeNumActivators`` (``kpa.go``): enough activators to cover the ready
    pods' capacity plus the burst capacity, at least :data:`MIN_ACTIVATORS`."""
    if s.target_burst_capacity == 0:
        return MIN_ACTIVATORS
    capacity = ready_pods * s.total_value
    if s.target_burst_capacity > 0:
        capacity += s.target_burst_capacity
    return max(MIN_ACTIVATORS, math.ceil(capacity / s.activator_capacity))


def _parse_iso_s(text: str) -> float | None:
    try:
        when = datetime.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def in_status_for_s(status: Mapping[str, Any], want: str, now_s: float) -> float:
    """How long the ``Active`` condition has been ``want`` ("True"/"False"/"Unknown") at wall
    time ``now_s``; -1 when it is not, or has no transition time (Knative's ``inStatusFor``)."""
    c = get_condition(status, ACTIVE)
    if c is None or c.get("status") != want:
        return -1.0
    since = _parse_iso_s(str(c.get("lastTransitionTime", "")))
    return -1.0 if since is None else now_s - since


# -- the plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """What the controller saw of one PA's world this tick.

    ``spec_replicas``: the scale subresource's ``spec.replicas``; ``ready_pods``: ready endpoints
    of the revision; ``sks``: the SKS (None when absent).
    """

    spec_replicas: int
    ready_pods: int
    sks: Obj | None


@dataclass(frozen=True)
class Plan:
    """What to write for one PA this tick.

    ``scale``: the replicas to set on the scale subresource, None to leave it. ``sks``: the SKS
    as it should be (create it when absent, PUT it when its spec differs). ``status``: the PA's
    whole new status. ``mode``: the SKS mode chosen. ``want``: the scale Knative would call
    ``want`` (-1 unknown). ``num_activators``: the SKS's ``numActivators``.
    """

    scale: int | None
    sks: Obj
    status: Obj
    mode: SksMode
    want: int
    num_activators: int


def sks_is_ready(sks: Obj) -> bool:
    """Knative's ``ServerlessService.IsReady``: Ready True for the latest spec."""
    status = sks.get("status") or {}
    generation = (sks.get("metadata") or {}).get("generation")
    if generation is not None and status.get("observedGeneration") != generation:
        return False
    return condition_status(status, READY) == "True"


def plan(
    pa: Obj,
    observed: Observed,
    desired_replicas: int | None,
    settings: ScaleSettings,
    grace_s: float,
    stable_window_s: float,
    now_s: float,
    now_iso: str,
    v: PodAutoscalerView | None = None,
) -> Plan:
    """Knative's KPA reconcile (``kpa.go`` ``ReconcileKind``) around Thaw's decision
    (``desired_replicas``; None: not known yet). ``now_s`` is wall time in seconds (the PA's
    condition times are wall times); ``grace_s`` the scale-to-zero grace and ``stable_window_s``
    how long a PA stays active before it may go inactive."""
    v = v or view(pa)
    old_status: Obj = pa.get("status") or {}  # read only: the new status is built beside it
    conditions: dict[str, Obj] = {
        c["type"]: dict(c) for c in old_status.get("conditions") or [] if "type" in c
    }
    status: Obj = {k: copy.deepcopy(w) for k, w in old_status.items() if k != "conditions"}
    status["observedGeneration"] = v.generation
    # Required by the CRD (Go strings without omitempty): "" until the SKS names them.
    status.setdefault("serviceName", "")
    status.setdefault("metricsServiceName", "")

    sks = observed.sks
    private = str((sks or {}).get("status", {}).get("privateServiceName", ""))
    num_activators = MIN_ACTIVATORS
    if sks is None or not private:
        # Knative: an SKS in Proxy first; nothing else until it has a private service.
        want = SCALE_UNKNOWN
        mode: SksMode = "Proxy"
        scale: int | None = None
        _set(conditions, SKS_READY, "Unknown", "NotReady", NO_PRIVATE_SERVICE_NAME, now_iso)
    else:
        status["metricsServiceName"] = private
        want, scale = _scale(
            old_status,
            SCALE_UNKNOWN if desired_replicas is None else desired_replicas,
            observed,
            settings,
            grace_s,
            stable_window_s,
            now_s,
        )
        inactive = condition_status(old_status, ACTIVE) == "False"
        if want == SCALE_UNKNOWN and inactive:
            mode = "Proxy"
        elif want > 0 and observed.ready_pods > 0 and settings.target_burst_capacity != -1:
            # Knative leaves Proxy when its decider's excess burst capacity is >= 0; Thaw has no
            # such figure, so the activator leaves the path once a pod is ready to take traffic
            # (target-burst-capacity -1 keeps it in the path, as in Knative).
            mode = "Serve"
        else:
            mode = "Proxy"
        num_activators = compute_num_activators(observed.ready_pods, settings)
        status["serviceName"] = str(sks.get("status", {}).get("serviceName", ""))
        if sks_is_ready(sks):
            _set(conditions, SKS_READY, "True", "", "", now_iso)
        else:
            message = str((get_condition(sks.get("status") or {}, READY) or {}).get("message", ""))
            _set(conditions, SKS_READY, "Unknown", "NotReady", message, now_iso)

    status["actualScale"] = observed.ready_pods
    old_desired = old_status.get("desiredScale")
    if not (want == SCALE_UNKNOWN and isinstance(old_desired, int) and old_desired >= 0):
        status["desiredScale"] = want
    _active(conditions, settings, status, want, observed.ready_pods, now_iso)
    _ready(conditions, now_iso)
    status["conditions"] = [conditions[t] for t in (*DEPENDENTS, READY) if t in conditions] + [
        c for t, c in conditions.items() if t not in (*DEPENDENTS, READY)
    ]
    return Plan(
        scale=scale,
        sks=desired_sks(pa, mode, num_activators, v),
        status=status,
        mode=mode,
        want=want,
        num_activators=num_activators,
    )


def _apply_bounds(low: int, high: int, x: int) -> int:
    """Knative's ``applyBounds``: min first, then max (0 = unbounded)."""
    if x < low:
        return low
    if high != 0 and x > high:
        return high
    return x


def _scale(
    status: Obj,
    desired: int,
    observed: Observed,
    s: ScaleSettings,
    grace_s: float,
    stable_window_s: float,
    now_s: float,
) -> tuple[int, int | None]:
    """Knative's ``scaler.scale`` (``kpa/scaler.go``): (want, the scale to apply or None)."""
    activating = condition_status(status, ACTIVE) == "Unknown"
    if desired < 0 and not activating:
        return desired, None  # no metrics yet
    low = s.min_scale
    initialized = condition_status(status, SCALE_TARGET_INITIALIZED) == "True"
    if s.initial_scale > 1 and not initialized and s.reachable:
        low = max(low, s.initial_scale)  # initial scale not attained yet: a floor
    desired = _apply_bounds(low, s.max_scale, desired)
    desired, apply = _handle_scale_to_zero(
        status, desired, observed, s, grace_s, stable_window_s, now_s
    )
    if not apply or desired == observed.spec_replicas:
        return desired, None
    return desired, desired


def _handle_scale_to_zero(
    status: Obj,
    desired: int,
    observed: Observed,
    s: ScaleSettings,
    grace_s: float,
    stable_window_s: float,
    now_s: float,
) -> tuple[int, bool]:
    """Knative's ``handleScaleToZero``: (the scale, whether to apply it)."""
    if desired != 0:
        return desired, True
    if not s.enable_scale_to_zero:
        return 1, True
    active = condition_status(status, ACTIVE)
    if active == "Unknown":
        # Activating: wait for the revision's progress deadline (+ margin) before giving up.
        if in_status_for_s(status, "Unknown", now_s) > s.activation_timeout_s:
            return 0, True
        return SCALE_UNKNOWN, False
    if active == "True":
        # Active for at least a stable window: mark inactive first (the replicas stay);
        # else at most one replica for the rest of it.
        if in_status_for_s(status, "True", now_s) >= stable_window_s:
            return 0, False
        return 1, True
    # Inactive: the one scale-to-zero rule every runtime shares, counted from Active=False,
    # with the activator in the path as the SKS reports it.
    inactive_for_s = max(0.0, in_status_for_s(status, "False", now_s))
    step = grace_step(
        0,
        observed.spec_replicas,
        now_s - inactive_for_s,
        activator_in_path(observed.sks or {}),
        now_s,
        max(grace_s, s.retention_s),
    )
    return 0, step.replicas == 0


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
    s: ScaleSettings,
    status: Obj,
    want: int,
    ready: int,
    now_iso: str,
) -> None:
    """Knative's ``computeActiveCondition`` (its table in ``kpa.go``), with ``activeThreshold``:
    max(min, initial) until ``ScaleTargetInitialized``, then max(min, 1)."""
    initialized = conditions.get(SCALE_TARGET_INITIALIZED, {}).get("status") == "True"
    if initialized:
        min_ready = max(s.min_scale, 1)
    else:
        min_ready = max(s.min_scale, s.initial_scale)
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
    is_activating = active == "Unknown"
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
