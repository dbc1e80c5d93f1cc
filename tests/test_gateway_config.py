"""The gateway's Envoy resources (knative.gateway_envoy), pure: the route table's order, the
revision's headers and timeouts, and the memoizing builder the controller uses every tick, which
must build exactly what snapshot() builds, with the same versions on any replica."""

from __future__ import annotations

from knative.gateway_envoy import (
    NAMESPACE_HEADER,
    REVISION_HEADER,
    GatewayOptions,
    SnapshotBuilder,
    snapshot,
)
from knative.gateway_routes import ModelRoute, QueueEndpoint, RevisionCandidate


def route(model: str, revision: str, *pods: str) -> ModelRoute:
    ready = tuple(QueueEndpoint(p, 8012, p) for p in pods)
    rev = RevisionCandidate("ns", revision, model, "l4", "", ready, revision)
    return ModelRoute(model, rev, "")


def test_the_route_table_in_order() -> None:
    options = GatewayOptions(max_body_bytes={"b": 4096}, request_timeout_s=600)
    snap = snapshot({"b": route("b", "b-1"), "a": route("a", "a-1")}, options)
    names = [r["name"] for r in snap.route_config["virtual_hosts"][0]["routes"]]
    assert names == [
        "health",
        "models",
        "models:a",
        "models:b",
        "model:a",
        "too-large:b",
        "model:b",
        "unknown-model",
        "not-json",
        "no-model",
        "not-json-content-type",
    ]
    [to_b] = [r for r in snap.route_config["virtual_hosts"][0]["routes"] if r["name"] == "model:b"]
    headers = {h["header"]["key"]: h["header"]["value"] for h in to_b["request_headers_to_add"]}
    assert headers == {REVISION_HEADER: "b-1", NAMESPACE_HEADER: "ns"}
    assert to_b["route"]["cluster"] == "thaw|ns|b-1"
    assert to_b["route"]["timeout"] == to_b["route"]["idle_timeout"] == "600.000s"
    assert snap.route_clusters == {"thaw|ns|a-1", "thaw|ns|b-1"}
    aggregate = snap.clusters["thaw|ns|b-1"]["cluster_type"]["typed_config"]["clusters"]
    assert aggregate == ["thaw|ns|b-1|pods", "thaw|ns|b-1|public"]  # pods first, then Knative's
    public = snap.clusters["thaw|ns|b-1|public"]["load_assignment"]["endpoints"][0]
    address = public["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address == {"address": "b-1.ns.svc.cluster.local", "port_value": 80}


def test_the_builder_builds_what_snapshot_builds_and_reuses_what_did_not_change() -> None:
    options = GatewayOptions()
    builder = SnapshotBuilder()
    steps = [
        {"a": route("a", "a-1"), "b": route("b", "b-1", "10.0.0.1")},
        {"a": route("a", "a-1", "10.0.0.2"), "b": route("b", "b-1", "10.0.0.1")},
        {"a": route("a", "a-2", "10.0.0.3"), "b": route("b", "b-1", "10.0.0.1")},
        {"b": route("b", "b-1")},
    ]
    previous = None
    for routes in steps:
        built, fresh = builder.build(routes, options), snapshot(routes, options)
        assert built == fresh  # the same resources...
        assert built.version == fresh.version  # ...and versions, on any replica
        if previous is not None:
            assert built.version != previous.version
            same = [n for n in built.clusters if previous.clusters.get(n) == built.clusters[n]]
            for name in same:
                assert built.clusters[name] is previous.clusters[name]  # not rebuilt
        previous = built
    assert builder.build(steps[-1], options).version == previous.version
