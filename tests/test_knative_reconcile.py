"""Knative's KPA steps as Thaw's reconcile ports them (:mod:`knative.reconcile`), pure, on
explicit wall times: reachability, activation, initial scale, config-autoscaler, the grace counted
once, numActivators, and the precedence of scale settings. Each table cites the Knative file it
follows (knative/serving at the commit in tests/data/knative/SOURCES.txt)."""

from __future__ import annotations

import datetime
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from knative_world import MODEL, config, crd_schema, podautoscaler

from knative import reconcile
from knative.cluster_config import KnativeConfig, KnativeConfigError, go_duration_s, knative_config
from knative.contract import MODEL_ANNOTATION

PA_SCHEMA = crd_schema("podautoscaler.yaml")
SKS_SCHEMA = crd_schema("serverlessservice.yaml")
T0 = 1_800_000_000.0  # wall seconds
SHIPPED = KnativeConfig(allow_zero_initial_scale=True)  # manifests/knative/config-autoscaler


def iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((dict(c) for c in status.get("conditions") or [] if c["type"] == ctype), {})


def pa_with(
    annotations: dict[str, str] | None = None,
    reachability: str = "Reachable",
    active: tuple[str, float] | None = None,
    initialized: bool = True,
) -> dict[str, Any]:
    pa = podautoscaler("r")
    pa["metadata"].update(uid="u1", generation=1)
    pa["metadata"]["annotations"].update(annotations or {})
    pa["spec"]["reachability"] = reachability
    conditions = []
    if active is not None:
        conditions.append(
            {"type": "Active", "status": active[0], "lastTransitionTime": iso(active[1])}
        )
    if initialized:
        conditions.append(
            {"type": "ScaleTargetInitialized", "status": "True", "lastTransitionTime": iso(T0)}
        )
    pa["status"] = {"conditions": conditions, "serviceName": "r"}
    return pa


def sks_for(pa: dict[str, Any], mode: str, activator: bool = True, ready: bool = True) -> Any:
    sks = reconcile.desired_sks(pa, mode, 2)  # type: ignore[arg-type]
    sks["metadata"]["generation"] = 1
    sks["status"] = {
        "serviceName": "r",
        "privateServiceName": "r-private",
        "observedGeneration": 1,
        "conditions": [
            {"type": "Ready", "status": "True" if ready else "Unknown"},
            {"type": "ActivatorEndpointsPopulated", "status": "True" if activator else "False"},
        ],
    }
    return sks


def run_plan(
    pa: dict[str, Any],
    desired: int | None,
    now_s: float,
    *,
    spec: int = 1,
    ready: int = 1,
    mode: str = "Proxy",
    activator: bool = True,
    cfg: KnativeConfig = SHIPPED,
    grace_s: float = 30.0,
) -> reconcile.Plan:
    return reconcile.plan(
        pa,
        reconcile.Observed(spec, ready, sks_for(pa, mode, activator)),
        desired,
        reconcile.scale_settings(pa, cfg),
        grace_s,
        60.0,
        now_s,
        iso(now_s),
    )


# -- defect 4: activation waits for the progress deadline (kpa/scaler.go handleScaleToZero) ----


def test_activation_waits_for_the_progress_deadline_then_times_out() -> None:
    """A pod still starting 61 s after activation began (initial-scale 1): the decider wants 0,
    KPA holds (want -1, no scale, Active stays Unknown) until progress deadline + 30 s."""
    pa = pa_with({"autoscaling.knative.dev/initial-scale": "1"}, active=("Unknown", T0),
                 initialized=False)  # fmt: skip
    held = run_plan(pa, 0, T0 + 61.0, spec=1, ready=0)
    assert held.scale is None and held.want == -1
    assert cond(held.status, "Active")["status"] == "Unknown"
    assert cond(held.status, "Active")["reason"] == "Queued"
    still = run_plan(pa, 0, T0 + 630.0, spec=1, ready=0)
    assert still.scale is None and cond(still.status, "Active")["status"] == "Unknown"
    out = run_plan(pa, 0, T0 + 631.0, spec=1, ready=0)
    assert out.scale == 0
    assert cond(out.status, "Active")["reason"] == "TimedOut"


def test_the_progress_deadline_comes_from_the_annotation_or_config_deployment() -> None:
    pa = pa_with({"serving.knative.dev/progress-deadline": "20m"}, active=("Unknown", T0),
                 initialized=False)  # fmt: skip
    assert run_plan(pa, 0, T0 + 1200.0, ready=0).scale is None
    assert run_plan(pa, 0, T0 + 1231.0, ready=0).scale == 0
    cfg = knative_config({"allow-zero-initial-scale": "true"}, {"progress-deadline": "120s"})
    plain = pa_with(active=("Unknown", T0), initialized=False)
    assert run_plan(plain, 0, T0 + 149.0, ready=0, cfg=cfg).scale is None
    assert run_plan(plain, 0, T0 + 151.0, ready=0, cfg=cfg).scale == 0


# -- defect 7: the grace counted once, from Active=False, with the activator in the path ------


def test_active_for_a_stable_window_goes_inactive_first_and_keeps_its_replica() -> None:
    young = pa_with(active=("True", T0))
    p = run_plan(young, 0, T0 + 30.0, mode="Serve")
    assert p.scale is None and cond(p.status, "Active")["status"] == "True"  # at most 1 stays
    old = pa_with(active=("True", T0))
    p = run_plan(old, 0, T0 + 60.0, mode="Serve")
    assert p.scale is None and p.mode == "Proxy" and p.want == 0
    assert cond(p.status, "Active")["reason"] == "NoTraffic"


@pytest.mark.parametrize(
    ("inactive_for_s", "activator", "scaled"),
    [(29.0, True, None), (30.0, True, 0), (300.0, False, None)],
)
def test_to_zero_after_the_grace_counted_from_inactive_with_the_activator_in_path(
    inactive_for_s: float, activator: bool, scaled: int | None
) -> None:
    pa = pa_with(active=("False", T0))
    p = run_plan(pa, 0, T0 + inactive_for_s, activator=activator)
    assert p.scale == scaled


def test_the_pod_retention_period_lengthens_the_grace_unless_unreachable() -> None:
    ann = {"autoscaling.knative.dev/scale-to-zero-pod-retention-period": "2m"}
    pa = pa_with(ann, active=("False", T0))
    assert run_plan(pa, 0, T0 + 119.0).scale is None
    assert run_plan(pa, 0, T0 + 120.0).scale == 0
    gone = pa_with(ann, reachability="Unreachable", active=("False", T0))
    assert run_plan(gone, 0, T0 + 30.0).scale == 0


def test_enable_scale_to_zero_false_keeps_one() -> None:
    cfg = knative_config({"enable-scale-to-zero": "false"}, None)
    pa = pa_with(active=("False", T0))
    p = run_plan(pa, 0, T0 + 3600.0, spec=2, ready=2, cfg=cfg)
    assert p.scale == 1


# -- defect 3: spec.reachability (ScaleBounds, scaler.scale) --------------------------------


def test_an_unreachable_revision_has_no_minimum_and_no_initial_scale() -> None:
    ann = {"autoscaling.knative.dev/min-scale": "2", "autoscaling.knative.dev/initial-scale": "3"}
    live = reconcile.scale_settings(pa_with(ann), SHIPPED)
    assert (live.min_scale, live.initial_scale, live.reachable) == (2, 3, True)
    gone = reconcile.scale_settings(pa_with(ann, reachability="Unreachable"), SHIPPED)
    assert (gone.min_scale, gone.reachable, gone.retention_s) == (0, False, 0.0)
    r = reconcile.resolve(pa_with(ann, reachability="Unreachable"), config(), SHIPPED)
    assert (r.policy.min_replicas, r.policy.initial_replicas) == (0, 0)
    assert r.policy.scale_down_delay_s == 0.0  # Knative's decider: no delay when unreachable
    # min-scale 2 holds two replicas of a reachable revision; an unreachable one goes to 0.
    reachable = pa_with(ann, active=("False", T0))
    assert run_plan(reachable, 0, T0 + 600.0, spec=2, ready=2).scale is None
    unreachable = pa_with(ann, reachability="Unreachable", active=("False", T0))
    assert run_plan(unreachable, 0, T0 + 30.0, spec=2, ready=2).scale == 0


def test_initial_scale_above_one_is_a_floor_until_initialized() -> None:
    ann = {"autoscaling.knative.dev/initial-scale": "3"}
    fresh = pa_with(ann, active=("Unknown", T0), initialized=False)
    assert run_plan(fresh, 1, T0 + 1.0, spec=1, ready=0).scale == 3
    done = pa_with(ann, active=("True", T0))
    assert run_plan(done, 1, T0 + 1.0, spec=3, ready=3, mode="Serve").scale == 1
    gone = pa_with(ann, reachability="Unreachable", active=("Unknown", T0), initialized=False)
    assert run_plan(gone, 1, T0 + 1.0, spec=1, ready=0).scale is None


# -- defect 6: config-autoscaler (config.go, GetInitialScale, activeThreshold) ----------------


@pytest.mark.parametrize(
    ("annotation", "cfg", "initial"),
    [
        (None, KnativeConfig(), 1),  # no annotation: the cluster's initial-scale (1)
        (None, KnativeConfig(initial_scale=2), 2),
        ("0", KnativeConfig(), 1),  # 0 only where allow-zero-initial-scale
        ("0", KnativeConfig(allow_zero_initial_scale=True), 0),
        ("4", KnativeConfig(), 4),
    ],
)
def test_initial_scale_as_knative_resolves_it(
    annotation: str | None, cfg: KnativeConfig, initial: int
) -> None:
    pa = podautoscaler("r")
    del pa["metadata"]["annotations"]["autoscaling.knative.dev/initial-scale"]
    if annotation is not None:
        pa["metadata"]["annotations"]["autoscaling.knative.dev/initial-scale"] = annotation
    assert reconcile.scale_settings(pa, cfg).initial_scale == initial


def test_without_an_annotation_no_pod_means_not_initialized() -> None:
    """Knative created the Deployment at the cluster's initial-scale (1): with no pod ready the
    scale target is not initialized (Thaw marked it initialized at 0 before)."""
    pa = pa_with(initialized=False)
    del pa["metadata"]["annotations"]["autoscaling.knative.dev/initial-scale"]
    p = run_plan(pa, None, T0, spec=1, ready=0, cfg=KnativeConfig())
    assert cond(p.status, "ScaleTargetInitialized")["status"] == "Unknown"
    p = run_plan(pa, None, T0, spec=1, ready=1, cfg=KnativeConfig())
    assert cond(p.status, "ScaleTargetInitialized")["status"] == "True"


def test_max_scale_limit_and_cluster_bounds() -> None:
    cfg = knative_config({"max-scale": "5", "max-scale-limit": "8", "min-scale": "1"}, None)
    pa = podautoscaler("r")
    for k in ("min-scale", "initial-scale"):
        pa["metadata"]["annotations"].pop(f"autoscaling.knative.dev/{k}", None)
    s = reconcile.scale_settings(pa, cfg)
    assert (s.min_scale, s.max_scale) == (1, 5)
    pa["metadata"]["annotations"]["autoscaling.knative.dev/max-scale"] = "0"
    assert reconcile.scale_settings(pa, cfg).max_scale == 8  # unbounded: the limit


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"scale-to-zero-grace-period": "0s"},
         "config-autoscaler scale-to-zero-grace-period: value '0s': must be positive"),
        ({"initial-scale": "0"},
         "config-autoscaler initial-scale: value '0': must be at least 0 (or at least 1 when "
         "allow-zero-initial-scale is false)"),
        ({"enable-scale-to-zero": "maybe"},
         "config-autoscaler enable-scale-to-zero: value 'maybe': must be a boolean"),
        ({"max-scale": "9", "max-scale-limit": "4"},
         "config-autoscaler max-scale: value '9': must be in [1, max-scale-limit (4)]"),
        ({"target-burst-capacity": "-2"},
         "config-autoscaler target-burst-capacity: value '-2': must be either non-negative or "
         "-1"),
    ],
)  # fmt: skip
def test_config_autoscaler_errors_name_the_key_and_value(
    data: dict[str, str], message: str
) -> None:
    with pytest.raises(KnativeConfigError) as e:
        knative_config(data, None)
    assert str(e.value).startswith(message)


def test_config_autoscaler_defaults_and_durations() -> None:
    assert knative_config(None, None) == KnativeConfig()
    cfg = knative_config(
        {"scale-to-zero-grace-period": "1m30s", "allow-zero-initial-scale": "true"},
        {"progress-deadline": "15m"},
    )
    assert (cfg.scale_to_zero_grace_period_s, cfg.progress_deadline_s) == (90.0, 900.0)
    assert [go_duration_s(t) for t in ("500ms", "1h", "0", "2.5s")] == [0.5, 3600.0, 0.0, 2.5]
    with pytest.raises(ValueError):
        go_duration_s("30")


# -- defect 5 and the precedence ------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "cfg", "expected"),
    [
        # render's annotations win: min, initial, max as written from the policy file.
        ({"autoscaling.knative.dev/min-scale": "1", "autoscaling.knative.dev/initial-scale": "1",
          "autoscaling.knative.dev/max-scale": "4"}, SHIPPED, (1, 1, 4)),
        # no annotations: config-autoscaler's min and initial; max unbounded -> the policy's (2).
        ({}, KnativeConfig(initial_scale=1), (0, 1, 2)),
        ({}, KnativeConfig(min_scale=1, max_scale=3), (1, 1, 3)),
    ],
)  # fmt: skip
def test_resolve_precedence(
    annotations: dict[str, str], cfg: KnativeConfig, expected: tuple[int, int, int]
) -> None:
    pa = podautoscaler("r")
    for k in ("min-scale", "initial-scale", "max-scale"):
        pa["metadata"]["annotations"].pop(f"autoscaling.knative.dev/{k}", None)
    pa["metadata"]["annotations"].update(annotations)
    r = reconcile.resolve(pa, config(), cfg)
    assert r.model == MODEL
    p = r.policy
    assert (p.min_replicas, p.initial_replicas, p.max_replicas) == expected


def test_the_grace_is_the_policy_files_when_set_else_config_autoscalers() -> None:
    cfg = KnativeConfig(scale_to_zero_grace_period_s=45.0)
    assert reconcile.resolve(podautoscaler("r"), config(grace_s=7.0), cfg).grace_s == 7.0
    pa = podautoscaler("r")
    pa["metadata"]["annotations"][MODEL_ANNOTATION] = "not-in-the-file"
    assert reconcile.resolve(pa, config(), cfg).grace_s == 45.0


# -- defect 8: computeNumActivators (kpa.go) ------------------------------------------------


@pytest.mark.parametrize(
    ("ready", "tbc", "total", "capacity", "expected"),
    [
        (0, 211.0, 100.0, 100.0, 3),  # ceil(211 / 100)
        (5, 211.0, 100.0, 100.0, 8),  # ceil((500 + 211) / 100)
        (5, 0.0, 100.0, 100.0, 2),  # tbc 0: the minimum
        (5, -1.0, 100.0, 100.0, 5),  # tbc -1: the pods' capacity only
        (0, -1.0, 100.0, 100.0, 2),
        (1, 211.0, 10.0, 100.0, 3),
    ],
)
def test_num_activators(
    ready: int, tbc: float, total: float, capacity: float, expected: int
) -> None:
    cfg = KnativeConfig(
        target_burst_capacity=tbc,
        container_concurrency_target_default=total,
        activator_capacity=capacity,
    )
    s = reconcile.scale_settings(podautoscaler("r"), cfg)
    assert reconcile.compute_num_activators(ready, s) == expected


def test_num_activators_reach_the_sks_and_follow_container_concurrency() -> None:
    pa = pa_with(active=("True", T0))
    pa["spec"]["containerConcurrency"] = 4
    p = run_plan(pa, 2, T0 + 1.0, spec=2, ready=2, mode="Serve")
    assert p.sks["spec"]["numActivators"] == 3  # ceil((2 x 4 + 211) / 100)
    assert p.num_activators == 3


# -- the first pass and invariants ----------------------------------------------------------


def test_status_before_the_sks_is_ready_is_valid_and_unknown() -> None:
    """Knative's first pass: SKS in Proxy, SKSReady Unknown "No Private Service Name",
    desiredScale -1, and a status the CRD accepts (serviceName "" is required, not absent)."""
    pa = podautoscaler("r")
    pa["metadata"].update(uid="u1", generation=1)
    s = reconcile.scale_settings(pa, SHIPPED)
    p = reconcile.plan(pa, reconcile.Observed(0, 0, None), 1, s, 30.0, 60.0, T0, iso(T0))
    assert p.mode == "Proxy" and p.scale is None and p.want == -1
    assert p.status["desiredScale"] == -1
    assert cond(p.status, "SKSReady")["message"] == "No Private Service Name"
    jsonschema.validate({**pa, "status": p.status}, PA_SCHEMA)
    jsonschema.validate(p.sks, SKS_SCHEMA)


@settings(deadline=None, max_examples=25)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=3),  # the decision
            st.integers(min_value=0, max_value=3),  # ready pods
            st.booleans(),  # the activator in the path
            st.sampled_from([0.5, 5.0, 20.0, 61.0]),  # seconds since the last step
        ),
        min_size=1,
        max_size=20,
    )
)
def test_plan_invariants(steps: list[tuple[int, int, bool, float]]) -> None:
    """Over any run: a scale to 0 happens only after the grace counted from Active=False with
    the activator in the path; while the decision is above 0 Active never becomes False; a
    scale above 0 is the decision; every status validates."""
    grace_s = 30.0
    pa = pa_with(active=None, initialized=False)
    pa["status"] = {}
    now_s, spec = T0, 0
    for want, ready, in_path, dt in steps:
        now_s += dt
        ready = min(ready, spec)
        was = cond(pa["status"], "Active")
        p = run_plan(pa, want, now_s, spec=spec, ready=ready, activator=in_path, grace_s=grace_s)
        active = cond(p.status, "Active")["status"]
        if p.scale == 0 and cond(p.status, "Active").get("reason") != "TimedOut":
            assert in_path and was.get("status") == "False"
            since = datetime.datetime.strptime(was["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ")
            assert now_s - since.replace(tzinfo=datetime.UTC).timestamp() >= grace_s
        if p.scale is not None and p.scale > 0:
            # The decision, or one replica kept while the PA has been active less than a
            # stable window (handleScaleToZero), or enable-scale-to-zero.
            assert p.scale == want or (want == 0 and p.scale == 1)
        if want > 0 and was.get("status") != "False":
            assert active != "False"
        if p.scale is not None:
            spec = p.scale
        pa["status"] = p.status
        jsonschema.validate(pa, PA_SCHEMA)
