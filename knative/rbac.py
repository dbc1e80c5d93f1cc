"""The Kubernetes API calls Thaw's PodAutoscaler controller makes, as RBAC rules.

:data:`REQUIRED_RULES` is the least-privilege contract: ``manifests/rbac.yaml`` (ClusterRole
``thaw-controller``) must grant exactly these, and ``tests/test_knative_rbac.py`` checks both
directions: every call the controller makes against the API harness is listed here, and the
manifest grants nothing more and nothing less. :data:`KNATIVE_SERVING_RULES` are granted in
Knative's namespace only (a Role); :func:`allows` answers for both, as the API server's RBAC
authorizer would (the test harness's admission stand-in uses it).
"""

from __future__ import annotations

from typing import NamedTuple


class Rule(NamedTuple):
    """One (API group, resource, verbs) grant; ``""`` is the core group."""

    api_group: str
    resource: str
    verbs: frozenset[str]


REQUIRED_RULES: tuple[Rule, ...] = (
    # Knative's PodAutoscalers: the watch-backed cache (list, then watch) and the re-read after a
    # 409 (get). Never update/patch: the spec and autoscaling.knative.dev/* annotations are
    # Knative's.
    Rule(
        "autoscaling.internal.knative.dev",
        "podautoscalers",
        frozenset({"get", "list", "watch"}),
    ),
    # PA status through the status subresource (PUT with resourceVersion, as UpdateStatus does).
    Rule("autoscaling.internal.knative.dev", "podautoscalers/status", frozenset({"update"})),
    # The SKS's controller ownerRef carries blockOwnerDeletion (as Knative's MakeSKS sets it):
    # where the OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift), setting
    # it needs update on the owner's finalizers. Never called directly.
    Rule("autoscaling.internal.knative.dev", "podautoscalers/finalizers", frozenset({"update"})),
    # One ServerlessService per PA, named after it: cached (list, watch), created once, its
    # mode/numActivators updated (get: the re-read after a 409).
    Rule(
        "networking.internal.knative.dev",
        "serverlessservices",
        frozenset({"get", "list", "watch", "create", "update"}),
    ),
    # Knative's revision Deployments, cached (list, watch; label serving.knative.dev/revision):
    # their spec.replicas is what the scale subresource reports.
    Rule("apps", "deployments", frozenset({"list", "watch"})),
    # Actuation through the scale subresource of the PA's scaleTargetRef (a Deployment), patched
    # as Knative's scaler does (JSON patch of /spec/replicas).
    Rule("apps", "deployments/scale", frozenset({"patch"})),
    # The revisions' pods: ready endpoints of their private EndpointSlices, cached by selector.
    Rule("discovery.k8s.io", "endpointslices", frozenset({"list", "watch"})),
    # The revisions' pods (label serving.knative.dev/revision), cached: on shared GPUs their
    # node, IP and readiness; patched for Thaw's annotations only (the sleep level it sent, and
    # controller.kubernetes.io/pod-deletion-cost on the pods it chose to stop).
    Rule("", "pods", frozenset({"list", "watch", "patch"})),
    # Leader election: read the Lease, create it when absent, renew or take it over (update).
    Rule("coordination.k8s.io", "leases", frozenset({"get", "create", "update"})),
)

#: Where Knative keeps its ConfigMaps (and where :data:`KNATIVE_SERVING_RULES` apply).
KNATIVE_SERVING_NAMESPACE = "knative-serving"

#: In Knative's namespace only (a Role, ``thaw-controller-knative``): its ConfigMaps
#: ``config-autoscaler`` and ``config-deployment``, cached (list, watch).
KNATIVE_SERVING_RULES: tuple[Rule, ...] = (Rule("", "configmaps", frozenset({"list", "watch"})),)


def rule_set() -> frozenset[tuple[str, str, str]]:
    """REQUIRED_RULES flattened to (api_group, resource, verb) triples."""
    return frozenset((r.api_group, r.resource, v) for r in REQUIRED_RULES for v in r.verbs)


def knative_serving_rule_set() -> frozenset[tuple[str, str, str]]:
    """KNATIVE_SERVING_RULES flattened to (api_group, resource, verb) triples."""
    return frozenset((r.api_group, r.resource, v) for r in KNATIVE_SERVING_RULES for v in r.verbs)


def allows(group: str, resource: str, verb: str, namespace: str) -> bool:
    """Whether the controller's ClusterRole and Role grant this call."""
    if (group, resource, verb) in rule_set():
        return True
    return namespace == KNATIVE_SERVING_NAMESPACE and (
        (group, resource, verb) in knative_serving_rule_set()
    )
