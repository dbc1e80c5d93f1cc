"""Least privilege, both ways: every Kubernetes API call the controller makes is in
:data:`knative.rbac.REQUIRED_RULES` (or, in knative-serving only, in
:data:`knative.demand.ACTIVATOR_POD_RULES`: listing Knative's activator pods), every rule there
is used, and ``manifests/rbac.yaml``'s ClusterRole ``thaw-controller`` grants exactly those
rules."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from knative_world import (
    DEPLOY,
    NS,
    PA,
    SKS,
    activator,
    controller,
    deployment,
    emulator,
    eventually,
    knative_and_kubelet,
    kube_api,
    podautoscaler,
)

from knative.demand import ACTIVATOR_POD_RULES, KNATIVE_NAMESPACE
from knative.kube import KubeClient, KubeConfig, KubeError
from knative.rbac import REQUIRED_RULES, allows, knative_serving_rule_set, rule_set

REPO = Path(__file__).resolve().parent.parent
RBAC_YAML = REPO / "manifests" / "rbac.yaml"


def _triples(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    out: set[tuple[str, str, str]] = set()
    for r in rules:
        assert "nonResourceURLs" not in r, f"the controller needs no non-resource URL: {r}"
        assert "resourceNames" not in r or r["resourceNames"], r
        for g in r.get("apiGroups") or [""]:
            for res in r.get("resources") or []:
                for verb in r.get("verbs") or []:
                    out.add((g, res, verb))
    return out


def test_required_rules_have_no_duplicates_or_wildcards() -> None:
    keys = [(r.api_group, r.resource) for r in REQUIRED_RULES]
    assert len(keys) == len(set(keys))
    assert not any("*" in t for triple in rule_set() for t in triple)


async def test_every_call_is_a_required_rule_and_every_rule_is_used(tmp_path: Path) -> None:
    with emulator(tmp_path) as engine_port:
        async with kube_api() as (api, server), activator(api, server) as act:
            api.put_object(*DEPLOY, deployment("tiny-00001"))
            api.put_object(*PA, podautoscaler("tiny-00001"))
            # One refused status write: the controller re-reads the PA (the "get" rule); the
            # same for the SKS's switch to Serve.
            api.inject_conflicts(1, verb="update", resource="podautoscalers/status")
            api.inject_conflicts(1, verb="update", resource="serverlessservices")
            stop = asyncio.Event()
            world = asyncio.create_task(knative_and_kubelet(api, engine_port, stop))
            try:
                # A 3 s lease (0.3 s here) is renewed every second: the lease "update" rule.
                async with controller(server, tmp_path, engine_port, lease_duration_s=3.0):
                    await eventually(
                        lambda: (api.get_object(*PA, NS, "tiny-00001") or {}).get("status"),
                        what="status",
                    )
                    act.held[NS, "tiny-00001"] = 1  # scale up: SKS update to Serve, scale patch
                    await eventually(
                        lambda: (
                            (api.get_object(*SKS, NS, "tiny-00001") or {})
                            .get("spec", {})
                            .get("mode")
                            == "Serve"
                        ),
                        what="SKS Serve",
                    )
                    await eventually(
                        lambda: any(r.resource == "leases" and r.verb == "update" for r in api.log),
                        what="a lease renewal",
                    )
            finally:
                stop.set()
                await world
    calls = [r for r in api.log if r.user_agent.startswith("thaw-controller/")]
    assert calls, "the controller made no call"
    pods = {
        (r.group, r.resource, r.verb, r.namespace)
        for r in calls
        if r.resource == "pods" and r.namespace == KNATIVE_NAMESPACE
    }
    allowed = {(r.api_group, r.resource, v) for r in ACTIVATOR_POD_RULES for v in r.verbs}
    # Knative's activator pods: listed, in knative-serving only (the Role's one rule).
    assert pods == {(*rule, KNATIVE_NAMESPACE) for rule in allowed}
    # The revisions' pods: cached everywhere (the ClusterRole); patched only on shared GPUs,
    # which tests/test_knative_warm_pool.py exercises (and checks against the same rules).
    revision_pods = {
        (r.group, r.resource, r.verb)
        for r in calls
        if r.resource == "pods" and r.namespace != KNATIVE_NAMESPACE
    }
    assert revision_pods == {("", "pods", "list"), ("", "pods", "watch")}
    calls = [r for r in calls if r.resource != "pods"]
    cluster = {(r.group, r.resource, r.verb) for r in calls if r.namespace != "knative-serving"}
    knative = {(r.group, r.resource, r.verb) for r in calls if r.namespace == "knative-serving"}
    # Permissions the admission stand-in checked on the controller's behalf (blockOwnerDeletion).
    checked = {(g, res, v) for ua, g, res, v, _ in api.admission_checks if ua.startswith("thaw")}
    used = cluster | checked
    assert used <= rule_set(), f"calls outside REQUIRED_RULES: {sorted(used - rule_set())}"
    assert knative <= knative_serving_rule_set() | rule_set(), sorted(knative)
    # Every rule is exercised by this scenario, so none needs a written justification.
    used |= revision_pods | {("", "pods", "patch")}  # patch: see above
    assert rule_set() <= used, f"rules never used: {sorted(rule_set() - used)}"
    assert knative_serving_rule_set() <= knative, "Knative's ConfigMaps were never read"


def test_manifest_cluster_role_grants_exactly_the_required_rules() -> None:
    if not RBAC_YAML.exists():
        pytest.skip("manifests/rbac.yaml not written yet")
    docs = [d for d in yaml.safe_load_all(RBAC_YAML.read_text()) if d]
    roles = [
        d
        for d in docs
        if d.get("kind") == "ClusterRole" and d.get("metadata", {}).get("name") == "thaw-controller"
    ]
    assert len(roles) == 1, "manifests/rbac.yaml must hold one ClusterRole thaw-controller"
    granted = _triples(roles[0].get("rules") or [])
    missing = rule_set() - granted
    extra = granted - rule_set()
    assert not missing, f"ClusterRole thaw-controller lacks: {sorted(missing)}"
    assert not extra, f"ClusterRole thaw-controller grants more than needed: {sorted(extra)}"


@pytest.mark.parametrize(
    ("change", "message"),
    [("drop", "lacks"), ("add", "more than needed")],
)
def test_the_manifest_check_fails_on_a_missing_or_an_extra_verb(
    tmp_path: Path, change: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above can fail: a role with one verb fewer, or one more, is refused."""
    rules = [
        {"apiGroups": [r.api_group], "resources": [r.resource], "verbs": sorted(r.verbs)}
        for r in REQUIRED_RULES
    ]
    if change == "drop":
        rules[0]["verbs"] = rules[0]["verbs"][1:]
    else:
        rules[0]["verbs"] = [*rules[0]["verbs"], "delete"]
    path = tmp_path / "rbac.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "thaw-controller"},
                "rules": rules,
            }
        )
    )
    monkeypatch.setattr(sys.modules[__name__], "RBAC_YAML", path)
    with pytest.raises(AssertionError, match=message):
        test_manifest_cluster_role_grants_exactly_the_required_rules()


async def test_blocking_owner_deletion_needs_update_on_the_pas_finalizers() -> None:
    """OwnerReferencesPermissionEnforcement (OpenShift): the SKS's controller ownerRef carries
    blockOwnerDeletion, so creating it needs update on podautoscalers/finalizers. The admission
    stand-in refuses it without that rule and accepts it with REQUIRED_RULES."""
    pa = podautoscaler("tiny-00001")

    def without_finalizers(group: str, resource: str, verb: str, ns: str) -> bool:
        return resource != "podautoscalers/finalizers" and allows(group, resource, verb, ns)

    from knative import reconcile

    async with kube_api() as (api, server):
        stored = api.put_object(*PA, pa)
        sks = reconcile.desired_sks(stored, "Proxy", 2)
        path = f"/apis/{SKS[0]}/v1alpha1/namespaces/{NS}/serverlessservices"
        api.enforce("narrow/", without_finalizers)
        async with KubeClient(KubeConfig(server), user_agent="narrow/1") as kube:
            with pytest.raises(KubeError) as e:
                await kube.create(path, sks)
        assert e.value.status == 403
        assert "cannot set blockOwnerDeletion" in e.value.message
        assert "podautoscalers/finalizers" in e.value.message
        async with KubeClient(KubeConfig(server), user_agent="thaw-controller/a") as kube:
            created = await kube.create(path, sks)
        assert created["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True
    assert ("autoscaling.internal.knative.dev", "podautoscalers/finalizers", "update") in (
        rule_set()
    )


def test_manifest_role_in_knative_serving_grants_exactly_the_knative_rules() -> None:
    docs = [d for d in yaml.safe_load_all(RBAC_YAML.read_text()) if d]
    [role] = [
        d
        for d in docs
        if d.get("kind") == "Role" and d["metadata"]["name"] == "thaw-controller-knative"
    ]
    assert role["metadata"]["namespace"] == "knative-serving"
    assert _triples(role.get("rules") or []) == knative_serving_rule_set()
    [binding] = [
        d
        for d in docs
        if d.get("kind") == "RoleBinding" and d["metadata"]["name"] == "thaw-controller-knative"
    ]
    assert binding["roleRef"]["name"] == "thaw-controller-knative"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "thaw-controller", "namespace": "thaw-system"}
    ]
