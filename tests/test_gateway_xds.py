"""The controller's xDS server (knative.gateway_xds) over real HTTP, as Envoy's REST
subscriptions call it: long polls answered on change (304 when nothing changed), only the
serving replica answering, and the make-before-break order per gateway (a route table only after
its clusters were accepted; an old revision's clusters kept until a table without them was)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from gateway_world import xds_server

from knative.gateway_envoy import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    ROUTE_TYPE,
    GatewayOptions,
    Snapshot,
    snapshot,
)
from knative.gateway_routes import ModelRoute, QueueEndpoint, RevisionCandidate
from knative.gateway_xds import PATHS, XdsServer

OPTIONS = GatewayOptions()


def snap(revision: str, *pods: str) -> Snapshot:
    ready = tuple(QueueEndpoint(p, 8012, f"pod-{p}") for p in pods)
    rev = RevisionCandidate("llm", revision, "tiny", "l4", "Reachable", ready, revision)
    return snapshot({"tiny": ModelRoute("tiny", rev, "test")}, OPTIONS)


async def discover(
    http: aiohttp.ClientSession,
    server: XdsServer,
    type_url: str,
    version: str = "",
    node: str = "gw-1",
    names: list[str] | None = None,
) -> tuple[int, dict[str, Any]]:
    body = {
        "version_info": version,
        "node": {"id": node, "cluster": "thaw-gateway"},
        "resource_names": names or [],
        "type_url": type_url,
    }
    url = f"http://127.0.0.1:{server.port}{PATHS[type_url]}"
    async with http.post(url, json=body) as resp:
        return resp.status, (await resp.json() if resp.status == 200 else {})


def names(resp: dict[str, Any]) -> set[str]:
    return {r["name"] for r in resp["resources"]}


def routed(resp: dict[str, Any]) -> str:
    [table] = resp["resources"]
    [model_route] = [r for r in table["virtual_hosts"][0]["routes"] if r["name"] == "model:tiny"]
    return str(model_route["route"]["cluster"])


async def test_only_the_serving_replica_answers_and_ready_says_so() -> None:
    async with xds_server(hold_s=0.2) as server, aiohttp.ClientSession() as http:
        ready = f"http://127.0.0.1:{server.port}/ready"
        async with http.get(ready) as r:
            assert r.status == 503
        assert (await discover(http, server, CLUSTER_TYPE))[0] == 503
        await server.set_serving(True)
        assert (await discover(http, server, CLUSTER_TYPE))[0] == 503  # no routes yet
        await server.publish(snap("tiny-00001", "10.0.0.1"))
        async with http.get(ready) as r:
            assert r.status == 200
        status, resp = await discover(http, server, CLUSTER_TYPE)
        assert status == 200 and resp["type_url"] == CLUSTER_TYPE
        await server.set_serving(False)  # leadership lost: gateways keep what they have
        assert (await discover(http, server, CLUSTER_TYPE, resp["version_info"]))[0] == 503


async def test_a_poll_is_held_until_something_changes() -> None:
    async with xds_server(hold_s=0.3) as server, aiohttp.ClientSession() as http:
        await server.set_serving(True)
        await server.publish(snap("tiny-00001", "10.0.0.1"))
        pods = "thaw|llm|tiny-00001|pods"
        status, first = await discover(http, server, ENDPOINT_TYPE, names=[pods])
        assert status == 200
        [assignment] = first["resources"]
        addresses = [
            e["endpoint"]["address"]["socket_address"]["address"]
            for e in assignment["endpoints"][0]["lb_endpoints"]
        ]
        assert addresses == ["10.0.0.1"]
        # Nothing new: held for hold_s, then 304 (Envoy keeps what it has).
        status, _ = await discover(http, server, ENDPOINT_TYPE, first["version_info"], names=[pods])
        assert status == 304
        # A pod becomes ready while a poll is held: answered at once, with both pods.
        held = asyncio.create_task(
            discover(http, server, ENDPOINT_TYPE, first["version_info"], names=[pods])
        )
        await asyncio.sleep(0.1)
        assert not held.done()
        assert await server.publish(snap("tiny-00001", "10.0.0.1", "10.0.0.2"))
        status, second = await asyncio.wait_for(held, timeout=0.15)
        assert status == 200
        assert len(second["resources"][0]["endpoints"][0]["lb_endpoints"]) == 2
        # Publishing the same configuration again changes nothing.
        assert not await server.publish(snap("tiny-00001", "10.0.0.1", "10.0.0.2"))


async def test_make_before_break_when_a_model_moves_to_another_revision() -> None:
    old, new = "thaw|llm|tiny-00001", "thaw|llm|tiny-00002"
    async with xds_server(hold_s=0.3) as server, aiohttp.ClientSession() as http:
        await server.set_serving(True)
        await server.publish(snap("tiny-00001", "10.0.0.1"))
        _, cds1 = await discover(http, server, CLUSTER_TYPE)
        _, rds1 = await discover(http, server, ROUTE_TYPE)
        assert routed(rds1) == old
        # gw-1 acks both (its next polls carry the versions), then the model moves.
        await server.publish(snap("tiny-00002", "10.0.0.9"))
        # Routes first? Not until gw-1 holds the new clusters: its table stays (304).
        status, _ = await discover(http, server, ROUTE_TYPE, rds1["version_info"])
        assert status == 304
        # Clusters: the new revision's, and the old one's while gw-1's table still names it.
        status, cds2 = await discover(http, server, CLUSTER_TYPE, cds1["version_info"])
        assert status == 200
        assert {old, new} <= names(cds2)
        assert f"{old}|pods" in names(cds2) and f"{new}|pods" in names(cds2)
        # The old pods cluster's endpoints are still served while it is kept.
        _, eds_old = await discover(http, server, ENDPOINT_TYPE, names=[f"{old}|pods"])
        assert eds_old["resources"][0]["endpoints"]
        # A held route poll is answered as soon as gw-1 accepts those clusters.
        held = asyncio.create_task(discover(http, server, ROUTE_TYPE, rds1["version_info"]))
        await asyncio.sleep(0.05)
        assert not held.done()
        await discover(http, server, CLUSTER_TYPE, cds2["version_info"])  # the ack (held, 304)
        status, rds2 = await asyncio.wait_for(held, timeout=0.5)
        assert status == 200 and routed(rds2) == new
        # Once gw-1 holds the new table, the old revision's clusters go.
        await discover(http, server, ROUTE_TYPE, rds2["version_info"])  # the ack (304)
        status, cds3 = await discover(http, server, CLUSTER_TYPE, cds2["version_info"])
        assert status == 200
        assert not any(n.startswith(old) for n in names(cds3)) and new in names(cds3)


async def test_gateways_are_sequenced_independently() -> None:
    async with xds_server(hold_s=0.2) as server, aiohttp.ClientSession() as http:
        await server.set_serving(True)
        await server.publish(snap("tiny-00001", "10.0.0.1"))
        _, a_cds = await discover(http, server, CLUSTER_TYPE, node="a")
        _, a_rds = await discover(http, server, ROUTE_TYPE, node="a")
        await server.publish(snap("tiny-00002"))
        # A gateway that starts now gets the newest table at once (it holds no older one)...
        _, _b_cds = await discover(http, server, CLUSTER_TYPE, node="b")
        _, b_rds = await discover(http, server, ROUTE_TYPE, node="b", version="")
        assert routed(b_rds) == "thaw|llm|tiny-00002"
        # ...while "a" keeps its table until it accepted the new clusters.
        status, _ = await discover(http, server, ROUTE_TYPE, a_rds["version_info"], node="a")
        assert status == 304
        await discover(http, server, CLUSTER_TYPE, a_cds["version_info"], node="a")
        _, a_cds2 = await discover(http, server, CLUSTER_TYPE, a_cds["version_info"], node="a")
        await discover(http, server, CLUSTER_TYPE, a_cds2["version_info"], node="a")
        status, a_rds2 = await discover(http, server, ROUTE_TYPE, a_rds["version_info"], node="a")
        assert status == 200 and routed(a_rds2) == "thaw|llm|tiny-00002"


async def test_a_version_from_another_leader_gets_the_newest_configuration() -> None:
    async with xds_server(hold_s=0.2) as server, aiohttp.ClientSession() as http:
        await server.set_serving(True)
        await server.publish(snap("tiny-00002"))
        status, rds = await discover(http, server, ROUTE_TYPE, "from-the-old-leader")
        assert status == 200 and routed(rds) == "thaw|llm|tiny-00002"


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]"])
async def test_a_request_that_is_not_a_discovery_request_gets_400(body: bytes) -> None:
    async with xds_server() as server, aiohttp.ClientSession() as http:
        await server.set_serving(True)
        await server.publish(snap("tiny-00001"))
        url = f"http://127.0.0.1:{server.port}{PATHS[CLUSTER_TYPE]}"
        async with http.post(url, data=body) as resp:
            assert resp.status == 400
            assert "DiscoveryRequest" in (await resp.json())["error"]


async def test_debug_routes_shows_where_each_model_goes() -> None:
    async with xds_server() as server, aiohttp.ClientSession() as http:
        await server.set_serving(True)
        await server.publish(snap("tiny-00001", "10.0.0.1"))
        async with http.get(f"http://127.0.0.1:{server.port}/debug/routes") as resp:
            got = await resp.json()
        assert got["models"]["tiny"]["revision"] == "tiny-00001"
        assert got["models"]["tiny"]["ready"] == ["10.0.0.1:8012"]
