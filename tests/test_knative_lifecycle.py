"""Knative's lifecycle end to end: the controller against the API harness over HTTP, with the
cluster's stand-ins playing Knative faithfully (:mod:`knative_world`): SKS Ready only with ready
private endpoints, ActivatorEndpointsPopulated only while the activator backs the revision, pods
that take 3x the stable window to start, Knative's revision reconciler
(``PropagateAutoscalerStatus``) deciding whether a revision is Ready or Failed, several
revisions per model (an old Unreachable one and the current ones on two pools), Knative's
ConfigMaps, and the RBAC + ownerRef admission stand-in on every request."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from knative_world import (
    DEPLOY,
    NS,
    PA,
    activator,
    controller,
    deployment,
    emulator,
    eventually,
    ever_failed,
    knative_and_kubelet,
    kube_api,
    podautoscaler,
    put_configmap,
    revision_condition,
    shipped_config_autoscaler,
)
from kube_api import KubeApi

STABLE_WINDOW_S = 6.0  # the test policy's (knative_world.config)
SPEED = 10.0  # FastClock: 10 controller seconds per real second
INITIAL = "autoscaling.knative.dev/initial-scale"
MIN = "autoscaling.knative.dev/min-scale"


@pytest.fixture(scope="module")
def engine_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with emulator(tmp_path_factory.mktemp("emulator")) as port:
        yield port


def cond(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return dict(c)
    return {}


def scales(api: KubeApi, name: str) -> list[int]:
    return [
        r.body[0]["value"]
        for r in api.log
        if r.resource == "deployments/scale" and r.verb == "patch" and r.name == name
    ]


@pytest.mark.parametrize(
    ("initial", "replicas"),
    [("0", 0), ("1", 1), (None, 1)],  # None: no annotation; Knative creates it at its default 1
    ids=["initial-scale-0", "initial-scale-1", "initial-scale-unset"],
)
async def test_a_slow_cold_start_never_fails_the_revision(
    tmp_path: Path, engine_port: int, initial: str | None, replicas: int
) -> None:
    """The pod is ready 3x the stable window after it is asked for: the decider wants 0 long
    before, but KPA keeps activating (progress deadline), the revision is never Failed, the pod
    serves, and only then the revision goes back to zero."""
    pod_delay_s = 3 * STABLE_WINDOW_S / SPEED
    async with kube_api() as (api, server), activator(api, server) as act:
        api.put_object(*DEPLOY, deployment("tiny-00001", replicas))
        api.put_object(*PA, podautoscaler("tiny-00001", annotations={INITIAL: initial}))
        stop = asyncio.Event()
        world = asyncio.create_task(
            knative_and_kubelet(api, engine_port, stop, pod_delay_s=pod_delay_s)
        )
        try:
            async with controller(server, tmp_path, engine_port, grace_s=1.0):
                if initial == "0":
                    # Nothing starts until a request waits at the activator.
                    await eventually(
                        lambda: cond(api.get_object(*PA, NS, "tiny-00001"), "Active"), what="PA"
                    )
                    await asyncio.sleep(0.3)
                    assert scales(api, "tiny-00001") == []
                    act.held[NS, "tiny-00001"] = 1
                    await eventually(lambda: scales(api, "tiny-00001") == [1], what="scale 1")
                    act.held[NS, "tiny-00001"] = 0  # the request gave up: the decider soon wants 0
                await eventually(
                    lambda: (
                        cond(api.get_object(*PA, NS, "tiny-00001"), "Active").get("status")
                        == "True"
                    ),
                    timeout_s=30,
                    what="active once the slow pod is ready",
                )
                assert (
                    cond(api.get_object(*PA, NS, "tiny-00001"), "ScaleTargetInitialized")["status"]
                    == "True"
                )
                await eventually(
                    lambda: revision_condition(api, "tiny-00001") == "True",
                    what="revision Ready",
                )
                # Then, without demand, back to zero after a stable window and the grace.
                await eventually(
                    lambda: scales(api, "tiny-00001")[-1:] == [0], timeout_s=30, what="to 0"
                )
        finally:
            stop.set()
            await world
    assert not ever_failed(api, "tiny-00001")
    # Activation was never given up on: no TimedOut.
    assert not [o for o in api.history(*PA) if cond(o, "Active").get("reason") == "TimedOut"]


async def test_revisions_and_pools_of_one_model(tmp_path: Path, engine_port: int) -> None:
    """An old revision made Unreachable (min-scale 1, one pod) and the current revision on two
    pools: the old one goes to zero (Knative drops its minimum) and is never scaled for requests
    waiting at the activator; the current ones are; each revision's view names its pool."""
    async with kube_api() as (api, server), activator(api, server) as act:
        api.put_object(*DEPLOY, deployment("tiny-00001", 1))
        api.put_object(
            *PA,
            podautoscaler(
                "tiny-00001", reachability="Unreachable", pool="l4", annotations={MIN: "1"}
            ),
        )
        for name, pool in (("tiny-00002", "l4"), ("tiny-h100-00002", "h100")):
            api.put_object(*DEPLOY, deployment(name))
            api.put_object(*PA, podautoscaler(name, pool=pool, generation=2))
        stop = asyncio.Event()
        world = asyncio.create_task(knative_and_kubelet(api, engine_port, stop, pod_delay_s=0.2))
        try:
            async with controller(server, tmp_path, engine_port, grace_s=1.0) as ctl:
                await eventually(lambda: scales(api, "tiny-00001") == [0], what="old to 0")
                # Requests queued at Knative's activator for each revision, the old one too (in
                # flight when it became Unreachable): only the current ones scale for them.
                for name in ("tiny-00001", "tiny-00002", "tiny-h100-00002"):
                    act.held[NS, name] = 1
                await eventually(
                    lambda: scales(api, "tiny-00002") and scales(api, "tiny-h100-00002"),
                    what="the current revisions scale up",
                )
                await asyncio.sleep(0.5)
                views = dict(ctl.revisions)
        finally:
            stop.set()
            await world
    assert scales(api, "tiny-00001") == [0]  # never back up for the waiting request
    old = views[(NS, "tiny-00001")]
    assert (old.reachable, old.pool, old.buffered, old.spec_replicas) == (False, "l4", 0, 0)
    current = views[(NS, "tiny-h100-00002")]
    assert (current.reachable, current.pool, current.generation) == (True, "h100", 2)
    assert current.buffered == 1 and current.spec_replicas >= 1
    for name in ("tiny-00001", "tiny-00002", "tiny-h100-00002"):
        assert not ever_failed(api, name), name


async def test_config_autoscaler_is_watched_and_a_bad_edit_keeps_the_last_good(
    tmp_path: Path, engine_port: int
) -> None:
    async with kube_api() as (api, server), activator(api, server):
        api.put_object(*DEPLOY, deployment("tiny-00001"))
        api.put_object(*PA, podautoscaler("tiny-00001"))
        stop = asyncio.Event()
        world = asyncio.create_task(knative_and_kubelet(api, engine_port, stop))
        try:
            async with controller(server, tmp_path, engine_port) as ctl:
                await eventually(lambda: ctl.synced.is_set(), what="synced")
                assert ctl.knative.allow_zero_initial_scale is True  # the shipped patch
                good = {**shipped_config_autoscaler(), "scale-to-zero-grace-period": "45s"}
                put_configmap(api, "config-autoscaler", good)
                await eventually(
                    lambda: ctl.knative.scale_to_zero_grace_period_s == 45.0, what="45 s"
                )
                put_configmap(api, "config-autoscaler", {**good, "max-scale-limit": "-1"})
                await eventually(lambda: ctl.knative_problem, what="the problem reported")
                assert ctl.knative_problem is not None
                assert ctl.knative_problem.startswith(
                    "config-autoscaler max-scale-limit: value '-1'"
                )
                assert ctl.knative.scale_to_zero_grace_period_s == 45.0  # the last good stays
                put_configmap(api, "config-deployment", {"progress-deadline": "20m"})
                await eventually(lambda: ctl.knative.progress_deadline_s == 1200.0, what="20m")
        finally:
            stop.set()
            await world


async def test_watches_resume_from_their_resource_version_and_relist_only_on_410(
    tmp_path: Path, engine_port: int
) -> None:
    """Watches end every second here: each informer watches again from where it was, without
    listing; after the API server forgets its history (compaction) the next watch gets 410
    Gone and that informer lists again, and nothing is missed."""
    async with kube_api() as (api, server), activator(api, server):
        api.put_object(*DEPLOY, deployment("tiny-00001"))
        api.put_object(*PA, podautoscaler("tiny-00001"))
        stop = asyncio.Event()
        world = asyncio.create_task(knative_and_kubelet(api, engine_port, stop))
        try:
            async with controller(server, tmp_path, engine_port, watch_timeout_s=1.0) as ctl:
                await eventually(lambda: ctl.revisions, what="a tick")
                await asyncio.sleep(2.5)  # two or three watch restarts each
                assert [i.lists for i in ctl.informers] == [1] * len(ctl.informers)
                watches = [
                    r for r in api.log if r.verb == "watch" and r.resource == "podautoscalers"
                ]
                assert len(watches) >= 2  # watched again, never listed again
                api.compact()
                await eventually(lambda: ctl.pas.lists == 2, what="a re-list after 410")
                # A PA created after the compaction is seen and reconciled.
                api.put_object(*DEPLOY, deployment("tiny-00002"))
                api.put_object(*PA, podautoscaler("tiny-00002"))
                await eventually(lambda: (NS, "tiny-00002") in ctl.revisions, what="new PA")
        finally:
            stop.set()
            await world


def _pa_status(ready: str, reason: str, initialized: str, service: str = "r") -> dict[str, Any]:
    return {
        "serviceName": service,
        "actualScale": 0,
        "desiredScale": 0,
        "conditions": [
            {"type": "Ready", "status": ready, "reason": reason, "lastTransitionTime": "T"},
            {"type": "ScaleTargetInitialized", "status": initialized, "lastTransitionTime": "T"},
        ],
    }


@pytest.mark.parametrize(
    ("pa", "ready", "active"),
    [
        # Never initialized and then inactive (KPA gave up activating): the revision fails.
        (_pa_status("False", "TimedOut", "Unknown"), ("False", "ProgressDeadlineExceeded"),
         "False"),
        # Initialized, scaled to zero: Ready, inactive.
        (_pa_status("False", "NoTraffic", "True"), ("True", None), "False"),
        # Activating: not ready yet, Active Unknown with the PA's reason.
        (_pa_status("Unknown", "Queued", "Unknown"), ("Unknown", None), "Unknown"),
        # Initialized and active.
        (_pa_status("True", "", "True"), ("True", None), "True"),
    ],
)  # fmt: skip
def test_the_revision_reconciler_stand_in_ports_propagate_autoscaler_status(
    pa: dict[str, Any], ready: tuple[str, str | None], active: str
) -> None:
    from knative_world import revision_status

    status = revision_status(pa, {})
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Ready"]["status"] == ready[0]
    if ready[1] is not None:
        assert conds["Ready"]["reason"] == ready[1]
        assert conds["Ready"]["message"] == "Initial scale was never achieved"
    assert conds["Active"]["status"] == active


async def test_the_grace_is_counted_once_on_the_cluster(tmp_path: Path, engine_port: int) -> None:
    """A grace longer than the stable window (60 s vs 6 s, on the controller's clock): the
    revision reaches zero one stable window and one grace after its last request, as in
    ``thaw up`` and ``thaw sim`` (it took two graces: one in the decider, one in Proxy)."""
    async with kube_api() as (api, server), activator(api, server) as act:
        api.put_object(*DEPLOY, deployment("tiny-00001"))
        api.put_object(*PA, podautoscaler("tiny-00001"))
        stop = asyncio.Event()
        world = asyncio.create_task(knative_and_kubelet(api, engine_port, stop, pod_delay_s=0.2))
        try:
            async with controller(server, tmp_path, engine_port, grace_s=60.0) as ctl:
                act.held[NS, "tiny-00001"] = 1
                await eventually(
                    lambda: (
                        cond(api.get_object(*PA, NS, "tiny-00001"), "Active").get("status")
                        == "True"
                    ),
                    what="active",
                )
                act.held[NS, "tiny-00001"] = 0
                idle_from_s = ctl.clock.monotonic()
                await eventually(
                    lambda: scales(api, "tiny-00001")[-1:] == [0], timeout_s=40, what="to 0"
                )
                zero_after_s = ctl.clock.monotonic() - idle_from_s
        finally:
            stop.set()
            await world
    assert zero_after_s >= 60.0  # never before the grace
    assert zero_after_s < 60.0 + STABLE_WINDOW_S + 30.0  # once, not twice (>= 120 s)
