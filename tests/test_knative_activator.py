"""``thaw knative activator``: Thaw's activator as the cluster front door.

- the mapping from listed PodAutoscalers and EndpointSlices to replicas per model, by table;
- the wiring (:func:`thaw.cmd_knative_activator.serve_cluster`) over real HTTP against the
  Kubernetes API harness, with a real ``thaw emulator`` as the pod behind an EndpointSlice: a
  request at zero is buffered (the controller's own parser reads 1 on ``/metrics``) and answered
  by the emulator once the slice lists a ready address; an unknown model gets OpenAI's 404; an
  endpoint that goes not-ready gets no more traffic; a public slice (Knative's activator) and a
  revision of another class never get any;
- least privilege both ways: the calls it made are exactly :data:`ACTIVATOR_RULES`, and
  ``manifests/activator-rbac.yaml`` grants exactly those;
- the real process: ``--help`` teaches, bad input is named, and it serves a request end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from knative_world import (
    MODEL,
    NS,
    PA,
    SLICES,
    emulator,
    kube_api,
    podautoscaler,
    write_kubeconfig,
)
from kube_api import KubeApi
from procs import REPO, child, free_port, thaw_argv

from activator.types import ModelLimits, Replica
from knative.contract import PRIVATE, REVISION_LABEL, SERVICE_TYPE_LABEL
from knative.demand import Revision, ThawActivatorDemand, parse_buffered
from knative.endpoints import (
    ACTIVATOR_RULES,
    KnativeEndpoints,
    activator_rule_set,
    changed_models,
    replicas_by_model,
)
from knative.kube import KubeClient, KubeConfig, KubeError
from policy_file.load import load_policy
from policy_file.schema import model_limits
from policy_file.watch import PolicyWatcher
from thaw.cmd_knative_activator import serve_cluster

RBAC_YAML = REPO / "manifests" / "activator-rbac.yaml"
REV = "tiny-00001"
DEAD_PORT = 9  # discard: nothing listens; a request sent there would fail


def eps(
    name: str,
    revision: str,
    port: int,
    ready: bool | None = True,
    service_type: str = PRIVATE,
    address: str = "127.0.0.1",
    address_type: str = "IPv4",
    port_name: str = "http",
    pod: str | None = "pod-a",
) -> dict[str, Any]:
    """An EndpointSlice of a revision's Service as Kubernetes writes it (labels copied from the
    Service Knative made; the queue-proxy's port named ``http``)."""
    conditions = {} if ready is None else {"ready": ready, "serving": ready, "terminating": False}
    endpoint: dict[str, Any] = {"addresses": [address], "conditions": conditions}
    if pod:
        endpoint["targetRef"] = {"kind": "Pod", "name": pod, "namespace": NS}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {
                REVISION_LABEL: revision,
                SERVICE_TYPE_LABEL: service_type,
                "kubernetes.io/service-name": f"{revision}-private"
                if service_type == PRIVATE
                else revision,
            },
        },
        "addressType": address_type,
        "endpoints": [endpoint],
        "ports": [
            {"name": port_name, "port": port, "protocol": "TCP"},
            {"name": "http-autometric", "port": 9090, "protocol": "TCP"},
        ],
    }


def pa(revision: str, model: str | None = MODEL, cls: str | None = None) -> dict[str, Any]:
    obj = podautoscaler(revision) if cls is None else podautoscaler(revision, cls)
    if model is None:
        del obj["metadata"]["annotations"]["thaw.dev/model"]
    else:
        obj["metadata"]["annotations"]["thaw.dev/model"] = model
    return obj


# -- the mapping, pure ------------------------------------------------------------------------


def r(rid: str, url: str) -> Replica:
    return Replica(replica_id=rid, base_url=url)


MAPPING_CASES: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]] = [
    ("no PA, no replica", [], [eps("s", REV, 8012)], {}),
    ("PA, no slice: at zero", [pa(REV)], [], {}),
    (
        "ready endpoint at the queue-proxy's http port",
        [pa(REV)],
        [eps("s", REV, 8012, address="10.0.0.5")],
        {MODEL: (r(f"{REV}/pod-a", "http://10.0.0.5:8012"),)},
    ),
    ("not ready", [pa(REV)], [eps("s", REV, 8012, ready=False)], {}),
    (
        "ready unset reads as ready",
        [pa(REV)],
        [eps("s", REV, 8012, ready=None)],
        {MODEL: (r(f"{REV}/pod-a", "http://127.0.0.1:8012"),)},
    ),
    (
        "the public slice (Knative's activator in Proxy mode) is never a replica",
        [pa(REV)],
        [eps("s", REV, 8012, service_type="Public", address="10.9.9.9")],
        {},
    ),
    (
        "a PA of another class is not ours",
        [pa(REV, cls="kpa.autoscaling.knative.dev")],
        [eps("s", REV, 8012)],
        {},
    ),
    ("a PA without thaw.dev/model", [pa(REV, model=None)], [eps("s", REV, 8012)], {}),
    ("a slice of another revision", [pa(REV)], [eps("s", "other-00001", 8012)], {}),
    ("no port named http", [pa(REV)], [eps("s", REV, 8013, port_name="http2")], {}),
    ("FQDN slices are skipped", [pa(REV)], [eps("s", REV, 8012, address_type="FQDN")], {}),
    (
        "IPv6 in brackets; dual stack counts a pod once",
        [pa(REV)],
        [
            eps("s6", REV, 8012, address="fd00::5", address_type="IPv6"),
            eps("s4", REV, 8012, address="10.0.0.5"),
        ],
        {MODEL: (r(f"{REV}/pod-a", "http://[fd00::5]:8012"),)},
    ),
    (
        "two revisions of one model (two pools, or a rollout), another model apart",
        [pa(REV), pa("tiny-h100-00001"), pa("big-00001", model="big")],
        [
            eps("a", REV, 8012, address="10.0.0.1", pod="p1"),
            eps("b", "tiny-h100-00001", 8012, address="10.0.0.2", pod="p2"),
            eps("c", "big-00001", 8012, address="10.0.0.3", pod="p3"),
        ],
        {
            MODEL: (
                r(f"{REV}/p1", "http://10.0.0.1:8012"),
                r("tiny-h100-00001/p2", "http://10.0.0.2:8012"),
            ),
            "big": (r("big-00001/p3", "http://10.0.0.3:8012"),),
        },
    ),
    (
        "no pod reference: the address names the replica",
        [pa(REV)],
        [eps("s", REV, 8012, address="10.0.0.7", pod=None)],
        {MODEL: (r(f"{REV}/10.0.0.7:8012", "http://10.0.0.7:8012"),)},
    ),
]


@pytest.mark.parametrize(
    ("pas", "slices", "want"),
    [c[1:] for c in MAPPING_CASES],
    ids=[c[0] for c in MAPPING_CASES],
)
def test_replicas_by_model(
    pas: list[dict[str, Any]], slices: list[dict[str, Any]], want: dict[str, Any]
) -> None:
    assert replicas_by_model(pas, slices) == want


def test_changed_models_names_exactly_those_that_differ() -> None:
    a, b = r("x/p1", "http://10.0.0.1:8012"), r("x/p2", "http://10.0.0.2:8012")
    old = {"x": (a,), "y": (b,), "z": (a,)}
    new = {"x": (a, b), "z": (a,), "w": (b,)}
    assert changed_models(old, new) == {"x", "y", "w"}
    assert changed_models(new, new) == set()


# -- the wiring over real HTTP ----------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with emulator(tmp_path_factory.mktemp("emulator")) as port:
        yield port


@contextlib.asynccontextmanager
async def front_door(
    server: str, tmp_path: Path, models: dict[str, ModelLimits]
) -> AsyncIterator[str]:
    """:func:`serve_cluster` on a free port against the harness; yields its base URL."""
    cfg = KubeConfig.load(str(write_kubeconfig(tmp_path / "kubeconfig", server)), None, False)
    port = free_port()
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        serve_cluster(cfg, NS, models, "127.0.0.1", port, stop, refresh_s=0.05, started=started)
    )
    await asyncio.wait_for(started.wait(), timeout=20)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)


async def buffered(http: aiohttp.ClientSession, url: str) -> dict[str, int]:
    async with http.get(url + "/metrics") as resp:
        return parse_buffered(await resp.text())


async def ready_count(http: aiohttp.ClientSession, url: str, model: str) -> int:
    async with http.get(url + "/v1/models") as resp:
        cards = (await resp.json())["data"]
    return next(int(c["ready_replicas"]) for c in cards if c["id"] == model)


async def complete(http: aiohttp.ClientSession, url: str, model: str) -> tuple[int, Any]:
    body = {"model": model, "prompt": "hello", "max_tokens": 2}
    async with http.post(url + "/v1/completions", json=body) as resp:
        return resp.status, await resp.json()


async def poll(what: str, check: Any, timeout_s: float = 20.0) -> Any:
    """Like :func:`eventually`, for an async check."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        got = await check()
        if got:
            return got
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def run_scenario(api: KubeApi, url: str, engine_port: int) -> None:
    """The front door through zero, ready, an unknown model, not-ready and ready again."""
    api.put_object(*PA, pa(REV))
    # Never to receive traffic: Knative's activator behind the public slice, and a revision
    # whose PA is of another class (Knative's KPA), both "ready".
    api.put_object(*SLICES, eps(f"{REV}-public", REV, DEAD_PORT, service_type="Public"))
    api.put_object(*PA, pa("kpa-00001", cls="kpa.autoscaling.knative.dev"))
    api.put_object(*SLICES, eps("kpa-00001-private", "kpa-00001", DEAD_PORT, pod="kpa-pod"))
    async with aiohttp.ClientSession() as http:
        # At zero: the request waits, and the controller's parser reads 1 on /metrics.
        first = asyncio.create_task(complete(http, url, MODEL))
        assert await poll("1 buffered", lambda: _equals(buffered(http, url), {MODEL: 1}))
        assert not first.done()
        assert await ready_count(http, url, MODEL) == 0
        # ... exactly as the controller reads it each tick.
        demand = ThawActivatorDemand(http, url)
        assert await demand.buffered(Revision(NS, REV, MODEL)) == 1
        # The pod is ready: the buffered request is answered by the emulator.
        api.put_object(*SLICES, eps(f"{REV}-private", REV, engine_port))
        status, body = await asyncio.wait_for(first, timeout=20)
        assert status == 200, body
        assert body["model"] == MODEL and body["choices"], body
        assert await buffered(http, url) == {MODEL: 0}
        assert await ready_count(http, url, MODEL) == 1
        # A model the policy does not serve: OpenAI's 404.
        status, body = await complete(http, url, "nope")
        assert status == 404
        assert body["error"]["code"] == "model_not_found"
        assert body["error"]["param"] == "model"
        assert MODEL in body["error"]["message"]
        # The endpoint goes not-ready: no more traffic; a new request waits instead.
        api.put_object(*SLICES, eps(f"{REV}-private", REV, engine_port, ready=False))
        assert await poll("0 ready", lambda: _equals(ready_count(http, url, MODEL), 0))
        second = asyncio.create_task(complete(http, url, MODEL))
        assert await poll("1 buffered again", lambda: _equals(buffered(http, url), {MODEL: 1}))
        await asyncio.sleep(0.3)  # several refreshes: still waiting, not sent to the pod
        assert not second.done()
        # Ready again: answered.
        api.put_object(*SLICES, eps(f"{REV}-private", REV, engine_port))
        status, body = await asyncio.wait_for(second, timeout=20)
        assert status == 200, body


async def _equals(value: Any, want: Any) -> bool:
    return bool(await value == want)


async def test_front_door_buffers_at_zero_then_routes_to_the_ready_pod(
    tmp_path: Path, engine_port: int
) -> None:
    async with kube_api() as (api, server):
        limits = {MODEL: ModelLimits(wait_timeout_s=60)}
        async with front_door(server, tmp_path, limits) as url:
            await run_scenario(api, url, engine_port)
    used = {(q.group, q.resource, q.verb) for q in api.log if q.user_agent == "thaw-activator"}
    # Least privilege, the calls' side: exactly ACTIVATOR_RULES, every rule used.
    assert used == activator_rule_set()
    assert {q.namespace for q in api.log if q.user_agent == "thaw-activator"} == {NS}


async def test_an_api_error_keeps_the_last_endpoints_and_changes_are_told(tmp_path: Path) -> None:
    async with kube_api() as (api, server):
        api.put_object(*PA, pa(REV))
        api.put_object(*SLICES, eps(f"{REV}-private", REV, 8012, address="10.0.0.5"))
        good = KubeConfig.load(str(write_kubeconfig(tmp_path / "good", server)), None, False)
        dead = KubeConfig.load(
            str(write_kubeconfig(tmp_path / "dead", f"http://127.0.0.1:{free_port()}")),
            None,
            False,
        )
        told: list[str] = []
        async with KubeClient(good) as ok, KubeClient(dead) as down:
            source = KnativeEndpoints(ok, NS, on_change=told.append)
            assert await source.refresh() == {MODEL}
            assert told == [MODEL]
            (replica,) = source.ready_replicas(MODEL)
            assert replica.base_url == "http://10.0.0.5:8012"
            source.kube = down  # the API server is unreachable: the snapshot stays
            with pytest.raises(KubeError):
                await source.refresh()
            assert source.ready_replicas(MODEL) == (replica,)
            source.kube = ok
            assert await source.refresh() == set()  # nothing changed: nobody is told
            api.put_object(*SLICES, eps(f"{REV}-private", REV, 8012, ready=False))
            assert await source.refresh() == {MODEL}
            assert source.ready_replicas(MODEL) == ()
            assert told == [MODEL, MODEL]


async def test_a_changed_policy_file_is_served_without_a_restart(tmp_path: Path) -> None:
    path = _policy(tmp_path / "policy.yaml")
    config = load_policy(path)
    async with kube_api() as (_, server):
        cfg = KubeConfig.load(str(write_kubeconfig(tmp_path / "kc", server)), None, False)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        stop, started = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            serve_cluster(
                cfg, NS, model_limits(config), "127.0.0.1", port, stop,
                refresh_s=0.05, watcher=PolicyWatcher(path, config), started=started,
            )
        )  # fmt: skip
        try:
            await asyncio.wait_for(started.wait(), timeout=20)
            async with aiohttp.ClientSession() as http:

                async def served() -> set[str]:
                    async with http.get(url + "/v1/models") as resp:
                        return {c["id"] for c in (await resp.json())["data"]}

                assert await served() == {MODEL}
                doc = yaml.safe_load(path.read_text())
                doc["models"][0]["name"] = "other"
                path.write_text(yaml.safe_dump(doc))
                assert await poll("the new policy", lambda: _equals(served(), {"other"}))
                status, body = await complete(http, url, MODEL)
                assert status == 404 and body["error"]["code"] == "model_not_found"
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=20)


# -- least privilege: the manifest ------------------------------------------------------------


def _triples(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    out: set[tuple[str, str, str]] = set()
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule
        for g in rule["apiGroups"]:
            for res in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (g, res, verb), f"wildcard in {rule}"
                    out.add((g, res, verb))
    return out


def test_manifest_role_grants_exactly_the_activator_rules() -> None:
    docs = [d for d in yaml.safe_load_all(RBAC_YAML.read_text()) if d]
    roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole")]
    assert [(d["kind"], d["metadata"]["name"]) for d in roles] == [("Role", "thaw-activator")]
    granted = _triples(roles[0]["rules"])
    missing = activator_rule_set() - granted
    extra = granted - activator_rule_set()
    assert not missing, f"Role thaw-activator lacks: {sorted(missing)}"
    assert not extra, f"Role thaw-activator grants more than needed: {sorted(extra)}"
    assert all(v in ("get", "list", "watch") for _, _, v in granted)  # it only reads


@pytest.mark.parametrize(("change", "message"), [("drop", "lacks"), ("add", "more than needed")])
def test_the_manifest_check_fails_on_a_missing_or_an_extra_verb(
    tmp_path: Path, change: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = [d for d in yaml.safe_load_all(RBAC_YAML.read_text()) if d]
    role = copy.deepcopy(next(d for d in docs if d["kind"] == "Role"))
    if change == "drop":
        role["rules"] = role["rules"][1:]
    else:
        role["rules"][0]["verbs"].append("watch")
    path = tmp_path / "activator-rbac.yaml"
    path.write_text(yaml.safe_dump(role))
    monkeypatch.setattr(sys.modules[__name__], "RBAC_YAML", path)
    with pytest.raises(AssertionError, match=message):
        test_manifest_role_grants_exactly_the_activator_rules()


def test_activator_rules_only_read() -> None:
    assert {v for rule in ACTIVATOR_RULES for v in rule.verbs} <= {"get", "list", "watch"}


# -- the real process -------------------------------------------------------------------------


def test_help_teaches() -> None:
    out = subprocess.run(
        thaw_argv("knative", "activator", "--help"), capture_output=True, text=True, check=True
    ).stdout
    for needle in (
        "--in-cluster",
        "--kubeconfig",
        "--namespace",
        "--config",
        "--host",
        "--port",
        "--refresh-s",
        "thaw_activator_buffered_requests",
        "thaw.dev/model",
        "networking.internal.knative.dev/serviceType=Private",
        "queue-proxy",
        "model_not_found",
        "examples:",
    ):
        assert needle in out, needle


def _policy(path: Path, cluster: bool = False) -> Path:
    doc: dict[str, Any] = {
        "models": [
            {"name": MODEL, "engine": {"kind": "emulator"}, "activator": {"wait_timeout_s": 60}}
        ]
    }
    if cluster:
        doc["cluster"] = {
            "namespace": NS,
            "pools": [
                {
                    "name": "cpu",
                    "gpu_type": "none",
                    "gpu_memory_bytes": 1,
                    "cost_per_hour_usd": 0.1,
                    "max_replicas": 1,
                }
            ],
        }
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--kubeconfig", "{tmp}/nope.yaml", "--namespace", NS], ["kubeconfig", "nope.yaml"]),
        (["--refresh-s", "0"], ["--refresh-s = 0.0", "must be > 0"]),
        (["--config", "{tmp}/missing-policy.yaml"], ["missing-policy.yaml"]),
        (["--kubeconfig", "{kubeconfig}"], ["--namespace", "cluster.namespace"]),
    ],
    ids=["kubeconfig", "refresh", "policy", "namespace"],
)
def test_bad_input_is_named(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9")
    policy = _policy(tmp_path / "policy.yaml")
    argv = [a.format(tmp=tmp_path, kubeconfig=kubeconfig) for a in args]
    if "--config" not in argv:
        argv += ["--config", str(policy)]
    done = subprocess.run(
        thaw_argv("knative", "activator", *argv), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    for needle in needles:
        assert needle in done.stderr, (needle, done.stderr)


async def test_the_process_serves_a_request_from_zero(tmp_path: Path, engine_port: int) -> None:
    """The real command (namespace from the policy's cluster section) through one cold start."""
    async with kube_api() as (api, server):
        port = free_port()
        policy = _policy(tmp_path / "policy.yaml", cluster=True)
        argv = thaw_argv(
            "knative", "activator", "--kubeconfig", str(write_kubeconfig(tmp_path / "kc", server)),
            "--config", str(policy),
            "--host", "127.0.0.1", "--port", str(port), "--refresh-s", "0.1",
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        api.put_object(*PA, pa(REV))
        with child(argv, log_path=tmp_path / "activator.log") as proc:
            async with aiohttp.ClientSession() as http:

                async def up() -> bool:
                    assert proc.poll() is None, (tmp_path / "activator.log").read_text()
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(url + "/health") as resp:
                            return resp.status == 200
                    return False

                await poll("the process listening", up, timeout_s=60)
                first = asyncio.create_task(complete(http, url, MODEL))
                assert await poll("1 buffered", lambda: _equals(buffered(http, url), {MODEL: 1}))
                api.put_object(*SLICES, eps(f"{REV}-private", REV, engine_port))
                status, body = await asyncio.wait_for(first, timeout=20)
                assert status == 200, body
                # A reloaded file with a setting the Knative runtime does not honour is refused
                # like an invalid one: the policy in force stays, the log says which and why.
                doc = yaml.safe_load(policy.read_text())
                doc["models"][0]["name"] = "other"
                doc["models"][0]["autoscaling"] = {"forecast": {"enabled": True}}
                policy.write_text(yaml.safe_dump(doc))
                log = tmp_path / "activator.log"

                async def refused() -> bool:
                    return "models[0].autoscaling.forecast.enabled" in log.read_text()

                await poll("the refusal in the log", refused)
                text = log.read_text()
                assert "policy file rejected" in text and "value True: thaw knative" in text
                async with http.get(url + "/v1/models") as resp:
                    assert {c["id"] for c in (await resp.json())["data"]} == {MODEL}
    agents = {q.user_agent for q in api.log}
    assert agents == {"thaw-activator"}
