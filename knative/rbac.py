"""The Kubernetes API calls Thaw's PodAutoscaler controller makes, as RBAC rules.

:data:`REQUIRED_RULES` is the least-privilege contract: ``manifests/rbac.yaml`` (ClusterRole
``thaw-controller``) must grant exactly these, and ``tests/test_knative_rbac.py`` checks both
directions: every call the controller makes against the API harness is listed here, and the
manifest grants nothing more and nothing less.
"""

from __future__ import annotations

from typing import NamedTuple


class Rule(NamedTuple):
    """One (API group, resource, verbs) grant; ``""`` is the core group."""

    api_group: str
    resource: str
    verbs: frozenset[str]


REQUIRED_RULES: tuple[Rule, ...] = (
    # Knative's PodAutoscalers: the watch (list, then watch) and the re-read after a 409 (get).
    # Never update/patch: the spec and autoscaling.knative.dev/* annotations are Knative's.
    Rule("autoscaling.internal.knative.dev", "podautoscalers", frozenset({"get", "list", "watch"})),
    # PA status through the status subresource (PUT with resourceVersion, as UpdateStatus does).
    Rule("autoscaling.internal.knative.dev", "podautoscalers/status", frozenset({"update"})),
    # One ServerlessService per PA, named after it: read, create once, update mode/numActivators.
    Rule(
        "networking.internal.knative.dev",
        "serverlessservices",
        frozenset({"get", "create", "update"}),
    ),
    # Actuation through the scale subresource of the PA's scaleTargetRef (a Deployment), read then
    # patched as Knative's scaler does (JSON patch of /spec/replicas).
    Rule("apps", "deployments/scale", frozenset({"get", "patch"})),
    # The revision's pods: ready endpoints (addresses to scrape, ready count), by label selector.
    Rule("discovery.k8s.io", "endpointslices", frozenset({"list"})),
    # Leader election: read the Lease, create it when absent, renew or take it over (update).
    Rule("coordination.k8s.io", "leases", frozenset({"get", "create", "update"})),
)


def rule_set() -> frozenset[tuple[str, str, str]]:
    """REQUIRED_RULES flattened to (api_group, resource, verb) triples."""
    return frozenset((r.api_group, r.resource, v) for r in REQUIRED_RULES for v in r.verbs)
