"""Warm pools on a shared GPU, on the cluster: the Knative controller runs the GPU-memory arbiter.

Against the API harness with emulator pods (``knative_world.PodWorld``): each pod a real ``thaw
emulator`` behind Thaw's engine guard, all on one emulated GPU whose ledger refuses a start or a
wake that would not fit (as a real GPU would OOM), a ReplicaSet stand-in that honours
``controller.kubernetes.io/pod-deletion-cost`` after readiness (as ``ActivePodsWithRanks`` does),
readiness from ``/thaw/ready`` (a sleeper leaves the ready endpoints), and Knative's activator
(its stand-in holds requests for a revision without a ready pod and reports them queued).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from knative_activator_standin import NAMESPACE_HEADER, REVISION_HEADER, KnativeActivator
from knative_world import (
    DEPLOY,
    NS,
    PA,
    EngineRevision,
    PodWorld,
    Recorder,
    activator,
    controller,
    deployment,
    eventually,
    kube_api,
    podautoscaler,
)
from procs import free_port

from engine.vllm_site.thaw_engine_guard import CREDENTIAL_HEADER
from knative.controller import Controller
from knative.rbac import rule_set
from knative.shared_gpu import DELETION_COST_ANNOTATION, STOP_DELETION_COST
from policy_file.schema import ThawConfig

GIB = 2**30
GPU_BYTES = 80 * GIB
POOL = "shared"
CREDENTIAL = "warm-pool-test-credential"


def policy(
    models: list[str],
    *,
    grace_s: float = 600.0,
    max_replicas: int = 1,
    max_sleeping: int = 1,
    sleep_ttl_s: float = 600.0,
    utilization: float = 0.6,
    sleep_level: int = 1,
    share: int = 2,
) -> ThawConfig:
    """Models on one pool (shared 2 ways unless ``share`` says otherwise) whose engines take
    ``utilization`` of the GPU awake."""
    return ThawConfig.model_validate(
        {
            "models": [
                {
                    "name": m,
                    "engine": {"kind": "emulator", "gpu_memory_utilization": utilization},
                    "autoscaling": {
                        "min_replicas": 0,
                        "max_replicas": max_replicas,
                        "scale_to_zero_grace_s": grace_s,
                        "stable_window_s": 6.0,
                    },
                    "warm_pool": {
                        "enabled": True,
                        "sleep_level": sleep_level,
                        "max_sleeping": max_sleeping,
                        "sleep_ttl_s": sleep_ttl_s,
                        "weights_bytes": GIB,
                    },
                }
                for m in models
            ],
            "cluster": {
                "namespace": NS,
                "pools": [
                    {
                        "name": POOL,
                        "gpu_type": "emulated",
                        "gpu_memory_bytes": GPU_BYTES,
                        "cost_per_hour_usd": 1.0,
                        "max_replicas": 4,
                        "share": share,
                    }
                ],
            },
        }
    )


@dataclass
class World:
    api: Any
    pods: PodWorld
    act: KnativeActivator
    ctl: Controller
    http: aiohttp.ClientSession
    engine_port: int
    reports: Recorder

    def warm(self, kind: str) -> list[tuple[int, str, str]]:
        """(tick, pod or revision, outcome) of the controller's warm-pool actions of a kind."""
        return [
            (t, a.pod or a.revision[1], outcome)
            for t, a, outcome in self.ctl.warm_log
            if a.kind == kind
        ]

    async def ask(self, revision: str, path: str = "/v1/completions") -> tuple[int, str]:
        """A request on the revision's public route (Knative's activator, no credential)."""
        body = {"model": revision.split("-")[0], "prompt": "hi", "max_tokens": 2}
        headers = {NAMESPACE_HEADER: NS, REVISION_HEADER: revision}
        async with self.http.post(self.act.url + path, json=body, headers=headers) as resp:
            return resp.status, await resp.text()

    async def is_sleeping(self, pod: str) -> bool:
        url = f"http://{self.pods.address(pod)}:{self.engine_port}/is_sleeping"
        async with self.http.get(url, headers={CREDENTIAL_HEADER: CREDENTIAL}) as resp:
            return bool((await resp.json())["is_sleeping"])

    def replicas(self, revision: str) -> int:
        return int((self.api.get_object(*DEPLOY, NS, revision) or {})["spec"]["replicas"])


@asynccontextmanager
async def world(
    tmp_path: Path, cfg: ThawConfig, revisions: dict[str, str], controller_credential: str = ""
) -> AsyncIterator[World]:
    """PAs and Deployments (at 0) for ``revisions`` (revision -> model) on the shared pool; the
    controller's credential is the engines' unless ``controller_credential`` says otherwise."""
    credential = tmp_path / "credential"
    credential.write_text(CREDENTIAL)
    mounted = credential
    if controller_credential:
        mounted = tmp_path / "controller-credential"
        mounted.write_text(controller_credential)
    engine_port = free_port()
    util = {m.name: m.engine.gpu_memory_utilization or 0.45 for m in cfg.models}
    async with kube_api() as (api, server), activator(api, server) as act:
        for rev, model in revisions.items():
            api.put_object(*DEPLOY, deployment(rev))
            api.put_object(
                *PA, podautoscaler(rev, pool=POOL, annotations={"thaw.dev/model": model})
            )
        pods = PodWorld(
            api,
            tmp_path,
            engine_port,
            credential,
            {rev: EngineRevision(model, POOL, util[model]) for rev, model in revisions.items()},
            GPU_BYTES,
        )
        recorder = Recorder()
        stop = asyncio.Event()
        kube = asyncio.create_task(pods.run(stop))
        try:
            async with (
                controller(
                    server,
                    tmp_path,
                    engine_port,
                    policy=cfg,
                    credential_file=mounted,
                    reports=recorder,
                ) as ctl,
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
            ):
                yield World(api, pods, act, ctl, http, engine_port, recorder)
        finally:
            stop.set()
            await kube
        calls = {
            (r.group, r.resource, r.verb)
            for r in api.log
            if r.user_agent.startswith("thaw-controller/") and r.namespace != "knative-serving"
        }
        assert calls <= rule_set(), f"calls outside the controller's RBAC: {calls - rule_set()}"


@pytest.mark.parametrize("level", [1, 2])
async def test_a_wake_on_a_full_gpu_first_sleeps_the_other_model(
    tmp_path: Path, level: int
) -> None:
    """Two models whose engines take 0.6 of the GPU each: one awake at a time. B's demand puts
    idle A to sleep before B starts; A's demand then puts B to sleep and wakes A's pod (no new
    pod; after level 2 with vLLM's reload recipe), in the plan that slept B. The GPU ledger never
    refuses."""
    cfg = policy(["a", "b"], sleep_level=level)
    async with world(tmp_path, cfg, {"a-00001": "a", "b-00001": "b"}) as w:
        status, text = await w.ask("a-00001")  # a cold start on an empty GPU
        assert status == 200, text
        (a_pod,) = w.pods.pod_names("a-00001")

        status, text = await w.ask("b-00001")  # the GPU is full of idle A (a long grace)
        assert status == 200, text
        assert await w.is_sleeping(a_pod)
        (slept_tick, slept, outcome) = w.warm("sleep")[0]
        assert (slept, outcome) == (a_pod, "done")
        assert [a.level for _, a, _ in w.ctl.warm_log if a.kind == "sleep"] == [level]
        (started_tick,) = [t for t, rev, _ in w.warm("start") if rev == "b-00001"]
        assert slept_tick <= started_tick  # frees before gains
        (b_pod,) = w.pods.pod_names("b-00001")
        # A's Deployment keeps its sleeper (awake + asleep); its PA counts only awake pods.
        assert w.replicas("a-00001") == 1
        pa = w.api.get_object(*PA, NS, "a-00001")
        await eventually(
            lambda: (w.api.get_object(*PA, NS, "a-00001") or {})["status"]["actualScale"] == 0,
            what=f"A's actualScale 0 while asleep: {pa}",
        )

        demand_seen: list[int] = []

        async def watch_demand() -> None:  # the tick in which the controller read A's demand
            while not demand_seen:
                view = w.ctl.revisions.get((NS, "a-00001"))
                if view is not None and view.buffered > 0:
                    demand_seen.append(w.ctl.ticks)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch_demand())
        status, text = await w.ask("a-00001")  # B idle: sleeps; A's sleeper wakes
        assert status == 200, text
        watcher.cancel()
        assert await w.is_sleeping(b_pod)
        assert not await w.is_sleeping(a_pod)
        assert w.pods.pod_names("a-00001") == [a_pod], "no new pod for A: its sleeper woke"
        assert [n for n in w.pods.created if n.startswith("a-")] == [a_pod]
        (woke_tick, woke, outcome) = w.warm("wake")[0]
        assert (woke, outcome) == (a_pod, "done")
        assert [a.level for _, a, _ in w.ctl.warm_log if a.kind == "wake"] == [level]
        b_slept = [t for t, pod, _ in w.warm("sleep") if pod == b_pod]
        assert b_slept == [woke_tick], "B slept and A woke in one plan, the same tick"
        assert demand_seen and woke_tick <= demand_seen[0], "planned in the tick that read it"
        history = [
            d["spec"]["replicas"]
            for d in w.api.history(*DEPLOY)
            if d["metadata"]["name"] == "a-00001"
        ]
        assert max(history) == 1, f"A's Deployment was scaled up for the wake: {history}"
        assert [(m, tier) for m, tier, _ in w.reports.cold_starts if tier == "wake"] == [
            ("a", "wake")
        ]
        assert w.pods.ledger_refusals() == []


async def test_a_stop_deletes_the_pod_thaw_chose(tmp_path: Path) -> None:
    """Two sleepers of one revision: the older asleep passes its time-to-live first and Thaw
    stops it (pod-deletion-cost); the ReplicaSet stand-in, which would otherwise delete the
    newer pod, deletes that one."""
    cfg = policy(
        ["a"], grace_s=1.0, max_replicas=2, max_sleeping=2, sleep_ttl_s=12.0, utilization=0.3
    )
    async with world(tmp_path, cfg, {"a-00001": "a"}) as w:
        pa = w.api.get_object(*PA, NS, "a-00001")
        assert pa is not None

        def min_scale(n: int) -> None:
            obj = w.api.get_object(*PA, NS, "a-00001")
            obj["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] = str(n)
            w.api.put_object(*PA, obj)

        min_scale(2)
        await eventually(
            lambda: (
                len(w.pods.pod_names("a-00001")) == 2
                and all(w.pods.pods[n].ready for n in w.pods.pod_names("a-00001"))
            ),
            what="two ready pods",
        )
        older, newer = sorted(w.pods.pod_names("a-00001"), key=lambda n: w.pods.pods[n].seq)
        min_scale(1)  # one goes to sleep
        await eventually(lambda: len(w.warm("sleep")) == 1, what="the first sleep")
        first = w.warm("sleep")[0][1]
        assert first == older, "the arbiter sleeps the first listed of equally idle pods"
        min_scale(0)  # then the other, after the stable window and the grace
        await eventually(lambda: len(w.warm("sleep")) == 2, timeout_s=30, what="the second sleep")
        await eventually(lambda: w.pods.deleted, timeout_s=30, what="a deletion")
        assert w.pods.deleted[0] == older, (w.pods.deleted, w.ctl.warm_log)
        assert newer in w.pods.pod_names("a-00001"), "\n".join(
            map(
                str,
                [
                    w.pods.deleted,
                    *w.ctl.warm_log,
                    [d["spec"]["replicas"] for d in w.api.history(*DEPLOY)],
                ],
            )
        )
        stops = [pod for _, pod, _ in w.warm("stop")]
        assert stops[0] == older
        obj = w.api.get_object("", "pods", NS, older)
        if obj is not None:  # still terminating
            anns = obj["metadata"]["annotations"]
            assert anns[DELETION_COST_ANNOTATION] == str(STOP_DELETION_COST)
        assert w.pods.ledger_refusals() == []


CONTROL_PATHS = [
    ("POST", "/sleep?level=1"),
    ("POST", "/wake_up"),
    ("GET", "/is_sleeping"),
    ("POST", "/collective_rpc"),
    ("POST", "/reset_prefix_cache"),
    ("POST", "/reset_mm_cache"),
    ("GET", "/server_info"),
]


async def test_dev_endpoints_refused_on_the_public_route_accepted_with_the_credential(
    tmp_path: Path,
) -> None:
    cfg = policy(["a"])
    async with world(tmp_path, cfg, {"a-00001": "a"}) as w:
        status, text = await w.ask("a-00001")
        assert status == 200, text
        (pod,) = w.pods.pod_names("a-00001")
        headers = {NAMESPACE_HEADER: NS, REVISION_HEADER: "a-00001"}
        for method, path in CONTROL_PATHS:
            # The public route: Knative's activator (the revision's Service path) to the pod.
            async with w.http.request(method, w.act.url + path, headers=headers, json={}) as r:
                assert r.status == 403, (path, r.status, await r.text())
        base = f"http://{w.pods.address(pod)}:{w.engine_port}"
        thaw = {CREDENTIAL_HEADER: CREDENTIAL}
        for method, path in [("GET", "/is_sleeping"), ("POST", "/reset_prefix_cache")]:
            async with w.http.request(method, base + path, headers=thaw) as r:
                assert r.status == 200, (path, r.status, await r.text())
        body = {"method": "reload_weights"}
        async with w.http.post(base + "/collective_rpc", headers=thaw, json=body) as r:
            assert r.status == 200, await r.text()


async def test_without_the_credential_nothing_is_slept_and_nothing_started_over_it(
    tmp_path: Path,
) -> None:
    """A controller with the wrong credential: its sleep of A is refused (403) and B is not
    started on the full GPU (a GPU whose free failed gets no gains), so nothing overflows it."""
    cfg = policy(["a", "b"])
    async with world(tmp_path, cfg, {"a-00001": "a", "b-00001": "b"}, "wrong") as w:
        status, text = await w.ask("a-00001")
        assert status == 200, text
        (a_pod,) = w.pods.pod_names("a-00001")
        task = asyncio.create_task(w.ask("b-00001"))
        await eventually(lambda: w.warm("sleep"), what="a sleep tried")
        (_, pod, outcome) = w.warm("sleep")[0]
        assert pod == a_pod and outcome.startswith("failed") and "403" in outcome, outcome
        assert all(rev != "b-00001" for _, rev, _ in w.warm("start"))
        assert w.replicas("b-00001") == 0
        assert not await w.is_sleeping(a_pod)
        task.cancel()
        assert w.pods.ledger_refusals() == []


async def test_on_an_unshared_pool_scale_to_zero_sleeps_the_pod_and_demand_wakes_it(
    tmp_path: Path,
) -> None:
    """share 1 with the warm pool on: after the grace the revision's engine sleeps instead of
    its pod being deleted (the Deployment keeps it: awake + asleep), and the next request wakes
    that pod: no new pod, no cold start."""
    cfg = policy(["a"], grace_s=1.0, share=1)
    async with world(tmp_path, cfg, {"a-00001": "a"}) as w:
        status, text = await w.ask("a-00001")
        assert status == 200, text
        (pod,) = w.pods.pod_names("a-00001")
        await eventually(lambda: w.warm("sleep"), timeout_s=30, what="the sleep at zero")
        assert await w.is_sleeping(pod)
        assert w.replicas("a-00001") == 1 and w.pods.deleted == []
        status, text = await w.ask("a-00001")
        assert status == 200, text
        assert not await w.is_sleeping(pod)
        assert w.pods.created == [pod], "woken, not started again"
        assert [(m, tier) for m, tier, _ in w.reports.cold_starts if tier == "wake"] == [
            ("a", "wake")
        ]
