"""Which revision the gateway sends a model to (knative.gateway_routes), table-driven: one
revision per model, warm first, then placement (fits, room, cheapest per unit served), never an
Unreachable one; and the candidates as knative.endpoints reads them from PAs and slices."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from knative.endpoints import ready_queue_endpoints, revision_candidates
from knative.gateway_routes import (
    PoolInfo,
    QueueEndpoint,
    RevisionCandidate,
    choose_routes,
)

GIB = 1024**3
L4 = PoolInfo("l4", 24 * GIB, 1, 0.8, 8)
H100 = PoolInfo("h100", 80 * GIB, 1, 4.0, 2)
POOLS = [L4, H100]
POD = (QueueEndpoint("10.0.0.1", 8012, "p"),)


def rev(
    name: str,
    pool: str | None,
    *,
    model: str = "llama",
    ready: bool = False,
    reachability: str = "Reachable",
    replicas: int = 0,
    generation: int = 1,
    ns: str = "thaw",
) -> RevisionCandidate:
    return RevisionCandidate(
        namespace=ns,
        revision=name,
        model=model,
        pool=pool,
        reachability=reachability,
        ready=POD if ready else (),
        public_service=name,
        replicas=max(replicas, 1 if ready else 0),
        generation=generation,
    )


@pytest.mark.parametrize(
    ("why", "candidates", "weights", "want"),
    [
        ("cheapest pool it fits, cold", [rev("l-1", "l4"), rev("h-1", "h100")], 16 * GIB, "l-1"),
        ("too big for an L4", [rev("l-1", "l4"), rev("h-1", "h100")], 40 * GIB, "h-1"),
        (
            "a warm H100 beats a cold L4 (no cold start while capacity is ready)",
            [rev("l-1", "l4"), rev("h-1", "h100", ready=True)],
            16 * GIB,
            "h-1",
        ),
        (
            "both warm: the cheaper",
            [rev("l-1", "l4", ready=True), rev("h-1", "h100", ready=True)],
            16 * GIB,
            "l-1",
        ),
        (
            "an Unreachable revision is never routed to, warm or not",
            [
                rev("l-1", "l4", ready=True, reachability="Unreachable"),
                rev("l-2", "l4", generation=2),
            ],
            16 * GIB,
            "l-2",
        ),
        (
            "reachability unknown (being created) counts as reachable, as KPA takes it",
            [rev("l-1", "l4", reachability="")],
            16 * GIB,
            "l-1",
        ),
        (
            "two Reachable revisions on one pool (a traffic split): the newest",
            [rev("l-1", "l4", generation=1), rev("l-2", "l4", generation=2)],
            16 * GIB,
            "l-2",
        ),
        (
            "a pool the policy does not know ranks after known ones",
            [rev("x-1", "tpu"), rev("h-1", "h100")],
            16 * GIB,
            "h-1",
        ),
        ("only unknown pools: still routed", [rev("x-1", None)], 16 * GIB, "x-1"),
    ],
)
def test_one_revision_per_model(
    why: str, candidates: list[RevisionCandidate], weights: int, want: str
) -> None:
    routes = choose_routes(candidates, POOLS, {"llama": weights})
    assert routes["llama"].revision.revision == want, why
    assert want in routes["llama"].reason


def test_a_full_pool_sends_a_cold_model_to_the_next_cheapest() -> None:
    # The L4 pool holds 8 replicas, all taken by another model: a cold start must go elsewhere.
    busy = [rev(f"o-{i}", "l4", model="other", ready=True) for i in range(8)]
    routes = choose_routes([*busy, rev("l-1", "l4"), rev("h-1", "h100")], POOLS, {})
    assert routes["llama"].revision.revision == "h-1"
    assert "h100" in routes["llama"].reason


def test_every_pool_full_still_routes_where_it_is_cheapest() -> None:
    busy = [rev(f"o-{i}", "l4", model="other", ready=True) for i in range(8)]
    busy += [rev(f"q-{i}", "h100", model="other2", ready=True) for i in range(2)]
    routes = choose_routes([*busy, rev("l-1", "l4"), rev("h-1", "h100")], POOLS, {})
    assert routes["llama"].revision.revision == "l-1"  # requests wait at the activator


def test_a_model_with_only_unreachable_revisions_has_no_route() -> None:
    routes = choose_routes([rev("l-1", "l4", reachability="Unreachable")], POOLS, {})
    assert "llama" not in routes


def test_models_are_routed_independently() -> None:
    cands = [rev("a-1", "l4", model="a"), rev("b-1", "h100", model="b", ready=True)]
    routes = choose_routes(cands, POOLS, {})
    assert {m: r.revision.revision for m, r in routes.items()} == {"a": "a-1", "b": "b-1"}


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["l4", "h100", None]),
            st.booleans(),
            st.sampled_from(["Reachable", "Unreachable", ""]),
            st.integers(0, 3),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_invariants(specs: list[tuple[str | None, bool, str, int]]) -> None:
    cands = [
        rev(f"r-{i}", pool, ready=ready, reachability=reach, generation=gen)
        for i, (pool, ready, reach, gen) in enumerate(specs)
    ]
    routes = choose_routes(cands, POOLS, {"llama": 16 * GIB})
    reachable = [c for c in cands if c.reachability != "Unreachable"]
    if not reachable:
        assert routes == {}
        return
    chosen = routes["llama"].revision
    assert chosen in reachable  # one of the model's, never Unreachable
    if any(c.ready for c in reachable):
        assert chosen.ready  # never a cold revision while a warm one exists
    assert choose_routes(list(reversed(cands)), POOLS, {"llama": 16 * GIB}) == routes


# -- candidates from Kubernetes objects (knative.endpoints) -----------------------------------


def pa_obj(name: str, ns: str = "thaw", **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {
                "serving.knative.dev/revision": name,
                "serving.knative.dev/configurationGeneration": "3",
            },
            "annotations": {
                "autoscaling.knative.dev/class": "autoscaler.thaw.dev",
                "thaw.dev/model": "llama",
                "thaw.dev/pool": "l4",
                **annotations,
            },
        },
        "spec": {"reachability": "Unreachable"},
        "status": {"serviceName": f"{name}-public", "actualScale": 2, "desiredScale": 3},
    }


def slice_obj(
    revision: str,
    endpoints: list[tuple[str, bool | None, str]],
    *,
    ns: str = "thaw",
    service_type: str = "Private",
    family: str = "IPv4",
    port_name: str = "http",
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{revision}-{service_type}-{family}",
            "namespace": ns,
            "labels": {
                "serving.knative.dev/revision": revision,
                "networking.internal.knative.dev/serviceType": service_type,
            },
        },
        "addressType": family,
        "ports": [{"name": "http-queueadm", "port": 8022}, {"name": port_name, "port": 8012}],
        "endpoints": [
            {
                "addresses": [address],
                "conditions": {} if ready is None else {"ready": ready},
                "targetRef": {"kind": "Pod", "name": pod},
            }
            for address, ready, pod in endpoints
        ],
    }


def test_ready_pods_are_the_private_slices_ready_endpoints_at_the_queue_port() -> None:
    slices = [
        slice_obj(
            "r-1", [("10.0.0.1", True, "p1"), ("10.0.0.2", False, "p2"), ("10.0.0.3", None, "p3")]
        ),
        # The same pods again in the IPv6 slice (dual stack): each pod once.
        slice_obj("r-1", [("fd00::1", True, "p1")], family="IPv6"),
        # Public: Knative's activator in Proxy mode, never a pod.
        slice_obj("r-1", [("10.9.9.9", True, "activator")], service_type="Public"),
        slice_obj("r-1", [("pod.example", True, "p4")], family="FQDN"),
        # An h2c revision (port http2): not spoken to directly.
        slice_obj("h2c-1", [("10.0.1.1", True, "q1")], port_name="http2"),
        # Same revision name in another namespace.
        slice_obj("r-1", [("10.7.0.1", True, "other")], ns="team-b"),
    ]
    got = ready_queue_endpoints(slices)
    assert got[("thaw", "r-1")] == (
        QueueEndpoint("10.0.0.1", 8012, "p1"),
        QueueEndpoint("10.0.0.3", 8012, "p3"),
    )
    assert got[("team-b", "r-1")] == (QueueEndpoint("10.7.0.1", 8012, "other"),)
    assert ("thaw", "h2c-1") not in got


def test_candidates_read_model_pool_reachability_service_and_size_from_the_pa() -> None:
    pas = [
        pa_obj("r-1"),
        pa_obj("kpa-1", **{"autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev"}),
        pa_obj("anon-1", **{"thaw.dev/model": ""}),
    ]
    [c] = revision_candidates(pas, [slice_obj("r-1", [("10.0.0.1", True, "p1")])])
    assert c == RevisionCandidate(
        namespace="thaw",
        revision="r-1",
        model="llama",
        pool="l4",
        reachability="Unreachable",
        ready=(QueueEndpoint("10.0.0.1", 8012, "p1"),),
        public_service="r-1-public",
        replicas=3,
        generation=3,
    )
