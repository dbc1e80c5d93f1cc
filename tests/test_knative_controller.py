"""Thaw's PodAutoscaler controller against the Kubernetes API harness over real HTTP.

The pod behind the revision is a real ``thaw emulator``; Thaw's activator is a small HTTP server
with the buffered-requests gauge; Knative's networking controller and the kubelet are the
stand-ins of :func:`knative_world.knative_and_kubelet`. Objects are validated against Knative's
CRD schemas from tests/data/knative/ (copied from knative/serving).
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from knative_world import (
    DEPLOY,
    LEASES,
    MODEL,
    NS,
    PA,
    SKS,
    SLICES,
    Recorder,
    activator,
    controller,
    crd_schema,
    deployment,
    emulator,
    endpoint_slice,
    eventually,
    ever_failed,
    knative_and_kubelet,
    kube_api,
    podautoscaler,
    revision_condition,
)
from kube_api import KubeApi

from knative import leader, reconcile

PA_SCHEMA = crd_schema("podautoscaler.yaml")
SKS_SCHEMA = crd_schema("serverlessservice.yaml")
PA_VALIDATOR = jsonschema.Draft7Validator(PA_SCHEMA)


@pytest.fixture(scope="module")
def engine_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with emulator(tmp_path_factory.mktemp("emulator")) as port:
        yield port


def cond(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return dict(c)
    return {}


def scale_patches(api: KubeApi, name: str) -> list[tuple[int, int]]:
    """(log index, replicas) of every scale PATCH on the Deployment ``name``."""
    return [
        (i, r.body[0]["value"])
        for i, r in enumerate(api.log)
        if r.resource == "deployments/scale" and r.verb == "patch" and r.name == name
    ]


async def test_pa_of_our_class_gets_sks_status_and_scales_0_1_0_with_proxy_first(
    tmp_path: Path, engine_port: int
) -> None:
    async with kube_api() as (api, server), activator(api, server) as act:
        api.put_object(*DEPLOY, deployment("tiny-00001"))
        api.put_object(*PA, podautoscaler("tiny-00001"))
        # The SKS's public Service lists Knative's activator in Proxy mode: never a pod.
        api.put_object(
            *SLICES,
            endpoint_slice(
                "tiny-00001-public",
                NS,
                "tiny-00001",
                8012,
                service_type="Public",
                address="127.0.0.2",
            ),
        )
        stop = asyncio.Event()
        world = asyncio.create_task(knative_and_kubelet(api, engine_port, stop, pod_delay_s=0.5))
        try:
            reports = Recorder()
            async with controller(server, tmp_path, engine_port, grace_s=2.0, reports=reports):
                # The SKS, shaped as Knative's MakeSKS shapes it.
                sks = await eventually(lambda: api.get_object(*SKS, NS, "tiny-00001"), what="SKS")
                pa = api.get_object(*PA, NS, "tiny-00001")
                assert pa is not None
                jsonschema.validate(sks, SKS_SCHEMA)
                assert sks["spec"]["objectRef"] == pa["spec"]["scaleTargetRef"]
                assert sks["spec"]["protocolType"] == "http1"
                assert sks["spec"]["mode"] == "Proxy"
                assert sks["spec"]["numActivators"] == reconcile.MIN_ACTIVATORS
                assert sks["metadata"]["labels"] == pa["metadata"]["labels"]
                assert "autoscaling.knative.dev/metric" not in sks["metadata"]["annotations"]
                [owner] = sks["metadata"]["ownerReferences"]
                assert owner["uid"] == pa["metadata"]["uid"]
                assert owner["kind"] == "PodAutoscaler" and owner["controller"] is True

                # At rest: status written, inactive (NoTraffic), nothing scaled. The SKS is not
                # Ready without a ready private endpoint (Knative: NoHealthyBackends).
                def at_rest() -> dict[str, Any] | None:
                    pa = api.get_object(*PA, NS, "tiny-00001")
                    ok = cond(pa, "SKSReady").get("message") == "K8s Service is not ready"
                    return pa if ok and cond(pa, "Active").get("reason") == "NoTraffic" else None

                pa = await eventually(at_rest, what="PA status at rest")
                jsonschema.validate(pa, PA_SCHEMA)
                st = pa["status"]
                assert st["serviceName"] == "tiny-00001"
                assert st["metricsServiceName"] == "tiny-00001-private"
                assert st["desiredScale"] == 0 and st["actualScale"] == 0
                assert st["observedGeneration"] == pa["metadata"]["generation"]
                assert cond(pa, "ScaleTargetInitialized")["status"] == "True"
                assert cond(pa, "Active")["status"] == "False"
                assert cond(pa, "Ready")["status"] == "False"
                assert cond(pa, "Ready")["reason"] == "NoTraffic"
                assert scale_patches(api, "tiny-00001") == []
                # Knative's revision reconciler: an initialized revision at zero is Ready.
                await eventually(
                    lambda: revision_condition(api, "tiny-00001") == "True", what="revision Ready"
                )

                # A request buffered at Thaw's activator: 0 -> 1, Active Unknown "Queued".
                act.held[NS, "tiny-00001"] = 1
                await eventually(lambda: scale_patches(api, "tiny-00001"), what="scale to 1")
                assert [v for _, v in scale_patches(api, "tiny-00001")] == [1]
                queued = await eventually(
                    lambda: (
                        cond(api.get_object(*PA, NS, "tiny-00001"), "Active").get("reason")
                        == "Queued"
                    ),
                    what="Active Unknown Queued",
                )
                assert queued
                pa = await eventually(
                    lambda: (
                        (p := api.get_object(*PA, NS, "tiny-00001"))
                        and cond(p, "Ready").get("status") == "True"
                        and p
                    ),
                    what="PA ready with one pod",
                )
                jsonschema.validate(pa, PA_SCHEMA)
                assert pa["status"]["actualScale"] == 1 and pa["status"]["desiredScale"] == 1
                sks = api.get_object(*SKS, NS, "tiny-00001")
                assert sks is not None and sks["spec"]["mode"] == "Serve"
                jsonschema.validate(sks, SKS_SCHEMA)
                # From the first demand to Active: never False (a slow cold start must not fail
                # the revision).
                history = api.history(*PA)
                first_queued = next(
                    i for i, o in enumerate(history) if cond(o, "Active").get("reason") == "Queued"
                )
                first_true = next(
                    i
                    for i, o in enumerate(history)
                    if i > first_queued and cond(o, "Active").get("status") == "True"
                )
                assert all(
                    cond(o, "Active")["status"] == "Unknown"
                    for o in history[first_queued:first_true]
                )

                # Demand gone: inactive, SKS to Proxy, then (after the grace) scale to 0.
                act.held[NS, "tiny-00001"] = 0
                await eventually(
                    lambda: [v for _, v in scale_patches(api, "tiny-00001")] == [1, 0],
                    what="scale to 0",
                )
                zero_at = scale_patches(api, "tiny-00001")[-1][0]
                proxy_puts = [
                    i
                    for i, r in enumerate(api.log)
                    if r.resource == "serverlessservices"
                    and r.verb == "update"
                    and r.body["spec"]["mode"] == "Proxy"
                ]
                inactive_puts = [
                    i
                    for i, r in enumerate(api.log)
                    if r.resource == "podautoscalers/status"
                    and r.verb == "update"
                    and cond(r.body, "Active").get("reason") == "NoTraffic"
                    and i > proxy_puts[0]
                ]
                assert proxy_puts and proxy_puts[0] < zero_at
                assert inactive_puts and inactive_puts[0] < zero_at
                pa = await eventually(
                    lambda: (
                        (p := api.get_object(*PA, NS, "tiny-00001"))
                        and p["status"]["actualScale"] == 0
                        and p
                    ),
                    what="actualScale 0",
                )
                jsonschema.validate(pa, PA_SCHEMA)
                assert cond(pa, "Active")["reason"] == "NoTraffic"
                assert not ever_failed(api, "tiny-00001")
                # Every replica change and the completed cold start were reported.
                assert reports.decisions == [(MODEL, 0, 1), (MODEL, 1, 0)]
                [(model, tier, seconds)] = reports.cold_starts
                assert model == MODEL and tier == "unknown"
                assert seconds >= 0.5 * 10  # the kubelet's 0.5 s, on the 10x clock
                # Knative owns the spec and its annotations: never written.
                assert not [
                    r
                    for r in api.log
                    if r.resource == "podautoscalers"
                    and r.verb != "list"
                    and r.verb not in ("watch", "get")
                ]
        finally:
            stop.set()
            await world


async def test_pa_of_another_class_is_untouched(tmp_path: Path, engine_port: int) -> None:
    async with kube_api() as (api, server), activator(api, server) as act:
        api.put_object(*DEPLOY, deployment("kpa-00001"))
        api.put_object(*PA, podautoscaler("kpa-00001", cls="kpa.autoscaling.knative.dev"))
        api.put_object(*DEPLOY, deployment("tiny-00001"))
        api.put_object(*PA, podautoscaler("tiny-00001"))
        act.held[NS, "tiny-00001"] = 3  # demand for the model: still no business of ours for kpa
        before = api.get_object(*PA, NS, "kpa-00001")
        stop = asyncio.Event()
        world = asyncio.create_task(knative_and_kubelet(api, engine_port, stop))
        try:
            async with controller(server, tmp_path, engine_port):
                # Ours is reconciled (proof the controller ran), theirs never is.
                await eventually(lambda: scale_patches(api, "tiny-00001"), what="our PA's scale")
                await eventually(
                    lambda: (api.get_object(*PA, NS, "tiny-00001") or {}).get("status"),
                    what="our PA's status",
                )
        finally:
            stop.set()
            await world
        assert api.get_object(*PA, NS, "kpa-00001") == before
        assert api.get_object(*SKS, NS, "kpa-00001") is None
        touched = [r for r in api.log if r.name == "kpa-00001"]
        assert touched == []


async def test_conflicts_on_status_and_sks_are_retried_after_a_re_read(
    tmp_path: Path, engine_port: int
) -> None:
    async with kube_api() as (api, server), activator(api, server) as act:
        api.put_object(*DEPLOY, deployment("tiny-00001"))
        api.put_object(*PA, podautoscaler("tiny-00001"))
        api.inject_conflicts(3, verb="update", resource="podautoscalers/status")
        stop = asyncio.Event()
        world = asyncio.create_task(knative_and_kubelet(api, engine_port, stop))
        try:
            async with controller(server, tmp_path, engine_port):
                await eventually(
                    lambda: (
                        cond(api.get_object(*PA, NS, "tiny-00001"), "SKSReady").get("message")
                        == "K8s Service is not ready"
                    ),
                    what="status written despite 409s",
                )
                # The SKS flips to Serve on demand: its first PUT answers 409, it is re-read.
                await asyncio.sleep(0.3)
                injected_at = len(api.log)
                api.inject_conflicts(1, verb="update", resource="serverlessservices")
                act.held[NS, "tiny-00001"] = 1
                await eventually(
                    lambda: (
                        (api.get_object(*SKS, NS, "tiny-00001") or {}).get("spec", {}).get("mode")
                        == "Serve"
                    ),
                    what="SKS in Serve despite a 409",
                )
        finally:
            stop.set()
            await world
        status_puts = [
            i
            for i, r in enumerate(api.log)
            if r.resource == "podautoscalers/status" and r.verb == "update"
        ]
        assert len(status_puts) >= 4  # 3 refused, then accepted
        # Between a refused write and its retry, the PA was read again.
        first, second = status_puts[0], status_puts[1]
        assert any(
            r.verb == "get" and r.resource == "podautoscalers" for r in api.log[first:second]
        )
        sks_puts = [
            i
            for i, r in enumerate(api.log)
            if r.resource == "serverlessservices" and r.verb == "update" and i >= injected_at
        ]
        assert len(sks_puts) >= 2
        assert any(
            r.verb == "get" and r.resource == "serverlessservices"
            for r in api.log[sks_puts[0] : sks_puts[1]]
        )


async def test_only_the_lease_holder_acts_and_a_stale_lease_is_taken_over(
    tmp_path: Path, engine_port: int
) -> None:
    async with kube_api() as (api, server), activator(api, server) as act:
        api.put_object(*DEPLOY, deployment("tiny-00001"))
        api.put_object(*PA, podautoscaler("tiny-00001"))
        stop = asyncio.Event()
        world = asyncio.create_task(knative_and_kubelet(api, engine_port, stop))
        try:
            # speed 10: a 15 s lease is 1.5 s here.
            # a will stop as if it crashed: its lease is not released.
            async with controller(
                server, tmp_path, engine_port, identity="a", release_on_stop=False
            ):
                await eventually(
                    lambda: (
                        (api.get_object(*LEASES, "thaw-system", "thaw-controller") or {})
                        .get("spec", {})
                        .get("holderIdentity")
                        == "a"
                    ),
                    what="a holds the lease",
                )
                async with controller(server, tmp_path, engine_port, identity="b"):
                    await eventually(
                        lambda: any(r.user_agent.endswith("/b") for r in api.log),
                        what="b running",
                    )
                    act.held[NS, "tiny-00001"] = 1  # work to do: a does it, b must not
                    await eventually(lambda: scale_patches(api, "tiny-00001"), what="a scales")
                    await asyncio.sleep(0.5)
                    b_writes = [r for r in api.writes() if r.user_agent.endswith("/b")]
                    assert b_writes == []
            # a is gone (its lease not released); b takes over once the lease is stale.
            async with controller(server, tmp_path, engine_port, identity="b"):
                lease = await eventually(
                    lambda: (
                        (le := api.get_object(*LEASES, "thaw-system", "thaw-controller"))
                        and le["spec"]["holderIdentity"] == "b"
                        and le
                    ),
                    what="b takes over",
                )
                assert lease["spec"]["leaseTransitions"] == 1
                api.put_object(*DEPLOY, deployment("tiny-00002"))
                api.put_object(*PA, podautoscaler("tiny-00002"))
                await eventually(
                    lambda: api.get_object(*SKS, NS, "tiny-00002"), what="b reconciles"
                )
        finally:
            stop.set()
            await world
        b_sks = [
            r
            for r in api.writes()
            if r.user_agent.endswith("/b") and r.resource == "serverlessservices"
        ]
        assert b_sks


@pytest.mark.parametrize(
    ("annotations", "error"),
    [
        (
            {"autoscaling.knative.dev/min-scale": "two"},
            "annotation autoscaling.knative.dev/min-scale: value 'two': must be an integer >= 0",
        ),
        (
            {"autoscaling.knative.dev/max-scale": "-1"},
            "annotation autoscaling.knative.dev/max-scale: value '-1': must be an integer >= 0",
        ),
    ],
)
def test_bad_scale_annotations_are_named(annotations: dict[str, str], error: str) -> None:
    pa = podautoscaler("r")
    pa["metadata"]["annotations"].update(annotations)
    with pytest.raises(reconcile.PodAutoscalerError) as e:
        reconcile.view(pa)
    assert str(e.value) == error


T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("holder", "observed_at_s", "now_s", "action", "transitions"),
    [
        (None, None, 0.0, "create", 0),  # no Lease yet
        ("me", 0.0, 1.0, "renew", 2),  # ours: renew
        ("other", 0.0, 14.9, "wait", None),  # theirs, changed 14.9 s ago (< 15 s): wait
        ("other", 0.0, 15.0, "take_over", 3),  # unchanged for the lease duration: take over
        ("", 10.0, 10.0, "take_over", 3),  # released
    ],
)
def test_lease_step(
    holder: str | None,
    observed_at_s: float | None,
    now_s: float,
    action: str,
    transitions: int | None,
) -> None:
    lease = None
    observed = None
    if holder is not None:
        lease = {
            "metadata": {"name": "l", "namespace": "ns", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "renewTime": "x", "leaseTransitions": 2},
        }
        assert observed_at_s is not None
        observed = leader.Observation(leader.record_of(lease), observed_at_s)
    s = leader.step(lease, "l", "ns", "me", observed, now_s, T0, 15.0)
    assert s.action == action
    if transitions is None:
        assert s.lease is None
    else:
        assert s.lease is not None
        assert s.lease["spec"]["holderIdentity"] == "me"
        assert s.lease["spec"]["leaseTransitions"] == transitions
        assert s.lease["spec"]["renewTime"] == "2026-01-01T00:00:00.000000Z"
        if action != "create":  # a PUT carries the resourceVersion read (409 if stale)
            assert s.lease["metadata"]["resourceVersion"] == "7"


@pytest.mark.parametrize(
    ("mode", "observed_generation", "populated", "expected"),
    [
        ("Proxy", 2, "True", True),
        ("Proxy", 1, "True", False),  # Knative has not seen the switch to Proxy yet
        ("Proxy", 2, "Unknown", False),  # no activator endpoints yet
        ("Serve", 2, "True", False),
    ],
)
def test_activator_in_path_needs_the_networking_controller_to_catch_up(
    mode: str, observed_generation: int, populated: str, expected: bool
) -> None:
    sks = {
        "metadata": {"generation": 2},
        "spec": {"mode": mode},
        "status": {
            "observedGeneration": observed_generation,
            "conditions": [{"type": "ActivatorEndpointsPopulated", "status": populated}],
        },
    }
    assert reconcile.activator_in_path(sks) is expected


async def test_at_rest_the_controller_reads_and_writes_nothing_new(
    tmp_path: Path, engine_port: int
) -> None:
    """Once a PA's status is settled, the reconcile makes no API request at all: every read is
    from the watch-backed caches, and nothing is written (no status churn, no SKS or scale
    writes)."""
    async with kube_api() as (api, server), activator(api, server):
        api.put_object(*DEPLOY, deployment("tiny-00001"))
        api.put_object(*PA, podautoscaler("tiny-00001"))
        stop = asyncio.Event()
        world = asyncio.create_task(knative_and_kubelet(api, engine_port, stop))
        try:
            async with controller(server, tmp_path, engine_port):
                await eventually(
                    lambda: (
                        cond(api.get_object(*PA, NS, "tiny-00001"), "Active").get("reason")
                        == "NoTraffic"
                    ),
                    what="at rest",
                )
                await asyncio.sleep(0.3)  # let the last write's echo settle
                start = len(api.log)
                await asyncio.sleep(1.0)  # ~20 ticks of 50 ms
                window = api.log[start:]
        finally:
            stop.set()
            await world
    # The Lease, and the demand source's list of Knative's activator pods (every pods_every_s):
    # nothing of the reconcile.
    assert [r for r in window if r.resource not in ("leases", "pods")] == []


async def test_an_sks_owned_by_someone_else_is_left_alone_and_reported(
    tmp_path: Path, engine_port: int
) -> None:
    async with kube_api() as (api, server), activator(api, server):
        api.put_object(*DEPLOY, deployment("tiny-00001"))
        api.put_object(*PA, podautoscaler("tiny-00001"))
        theirs = reconcile.desired_sks(podautoscaler("tiny-00001"), "Serve", 7)
        theirs["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
        api.put_object(*SKS, theirs)
        before = api.get_object(*SKS, NS, "tiny-00001")
        async with controller(server, tmp_path, engine_port):
            pa = await eventually(
                lambda: (
                    (p := api.get_object(*PA, NS, "tiny-00001"))
                    and cond(p, "Active").get("reason") == "NotOwned"
                    and p
                ),
                what="Active False NotOwned",
            )
        jsonschema.validate(pa, PA_SCHEMA)
        assert cond(pa, "Active")["status"] == "False"
        assert cond(pa, "Ready")["reason"] == "NotOwned"
        assert api.get_object(*SKS, NS, "tiny-00001") == before
        assert not [
            r for r in api.writes() if r.resource in ("serverlessservices", "deployments/scale")
        ]


async def test_a_clean_stop_releases_the_lease_and_the_standby_takes_over_at_once(
    tmp_path: Path, engine_port: int
) -> None:
    async with kube_api() as (api, server), activator(api, server):
        # A lease of 10 minutes (a minute here): only a release lets b in within the test.
        async with controller(server, tmp_path, engine_port, identity="a",
                              lease_duration_s=600.0):  # fmt: skip
            await eventually(
                lambda: (
                    (api.get_object(*LEASES, "thaw-system", "thaw-controller") or {})
                    .get("spec", {})
                    .get("holderIdentity")
                    == "a"
                ),
                what="a holds the lease",
            )
        released = api.get_object(*LEASES, "thaw-system", "thaw-controller")
        assert released is not None and released["spec"]["holderIdentity"] == ""
        async with controller(server, tmp_path, engine_port, identity="b",
                              lease_duration_s=600.0):  # fmt: skip
            lease = await eventually(
                lambda: (
                    (le := api.get_object(*LEASES, "thaw-system", "thaw-controller"))
                    and le["spec"]["holderIdentity"] == "b"
                    and le
                ),
                what="b takes over",
            )
        assert lease["spec"]["leaseTransitions"] == 1


async def test_api_errors_back_off_per_pa_and_recover(tmp_path: Path, engine_port: int) -> None:
    """While the API answers 500 to every status write of one PA, that PA is retried with
    growing delays (not every tick) and the other PA is not held up; then it recovers."""
    async with kube_api() as (api, server), activator(api, server):
        for name in ("tiny-00001", "tiny-00002"):
            api.put_object(*DEPLOY, deployment(name))
            api.put_object(*PA, podautoscaler(name))
        api.inject_errors(
            10_000, status=500, verb="update", resource="podautoscalers/status", name="tiny-00001"
        )
        stop = asyncio.Event()
        world = asyncio.create_task(knative_and_kubelet(api, engine_port, stop))
        try:
            async with controller(server, tmp_path, engine_port):
                await eventually(
                    lambda: cond(api.get_object(*PA, NS, "tiny-00002"), "Active"),
                    what="PA 2 reconciled",
                )
                start = len(api.log)
                await asyncio.sleep(1.5)  # 30 ticks of 50 ms
                window = api.log[start:]
                api.clear_injected()
                await eventually(
                    lambda: cond(api.get_object(*PA, NS, "tiny-00001"), "Active"),
                    what="PA 1 reconciled again",
                )
        finally:
            stop.set()
            await world
    tries = sum(
        r.resource == "podautoscalers/status" and r.verb == "update" and r.name == "tiny-00001"
        for r in window
    )
    # Backoff 0.5, 1, 2, 4, 8 s on the 10x clock: a handful of tries in 30 ticks.
    assert 2 <= tries <= 7


async def test_a_deleted_sks_is_created_again(tmp_path: Path, engine_port: int) -> None:
    """Someone deletes the SKS: the watch reports it, and the next tick creates it again (what
    the controller last wrote does not stand in for the object)."""
    async with kube_api() as (api, server), activator(api, server):
        api.put_object(*DEPLOY, deployment("tiny-00001"))
        api.put_object(*PA, podautoscaler("tiny-00001"))
        stop = asyncio.Event()
        world = asyncio.create_task(knative_and_kubelet(api, engine_port, stop))
        try:
            async with controller(server, tmp_path, engine_port):
                first = await eventually(
                    lambda: api.get_object(*SKS, NS, "tiny-00001"), what="the SKS"
                )
                api.delete_object(*SKS, NS, "tiny-00001")
                again = await eventually(
                    lambda: api.get_object(*SKS, NS, "tiny-00001"), what="the SKS again"
                )
        finally:
            stop.set()
            await world
    assert again["metadata"]["uid"] != first["metadata"]["uid"]
