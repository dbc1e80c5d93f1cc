"""Demand at zero for the Knative controller: the requests Knative's activator holds per
revision, scraped from every activator pod each tick (knative.demand), checked against
Knative's own activator manifest and exporter text for each supported release, and against two
activator pods (stand-ins) holding a request each."""

from __future__ import annotations

import asyncio
import copy
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from knative_activator_standin import (
    KNATIVE,
    VERSIONS,
    activator_pod,
    knative_activator,
    register,
)
from knative_world import eventually, kube_api, write_kubeconfig

from kernel.clock import ManualClock
from knative.demand import (
    ActivatorPod,
    DemandError,
    KnativeActivatorPods,
    Revision,
    activator_pods,
    parse_queued,
)
from knative.kube import KubeClient, KubeConfig

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
REV = Revision("llm", "tiny-00001", "tiny")


@pytest.mark.parametrize("version", VERSIONS)
def test_the_exporters_text_gives_the_queue_per_revision(version: str) -> None:
    text = (KNATIVE / version / "activator-metrics.txt").read_text()
    assert parse_queued(text) == {
        ("llm", "tiny-00001"): 2,
        ("llm", "tiny-00002"): 0,
        ("team-b", "tiny-00001"): 1,  # same revision name, another namespace: its own count
    }


def test_text_that_is_not_prometheus_is_an_error() -> None:
    with pytest.raises(DemandError, match="not Prometheus text"):
        parse_queued('kn_revision_request_queued{k8s_namespace_name="llm" 2\n')


@pytest.mark.parametrize("version", VERSIONS)
def test_the_pod_of_knatives_manifest_is_scraped_on_its_metrics_port(version: str) -> None:
    pod = activator_pod(version, "activator-abc", "10.1.2.3")
    assert activator_pods([pod]) == [ActivatorPod("activator-abc", "10.1.2.3", 9090)]
    assert activator_pods([pod])[0].url == "http://10.1.2.3:9090/metrics"
    # Draining (terminating, no longer ready): it still holds requests, so it is scraped.
    draining = activator_pod(version, "activator-old", "10.1.2.4", ready=False)
    draining["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert [p.name for p in activator_pods([pod, draining])] == ["activator-abc", "activator-old"]
    # Not running yet, or no IP: nothing to scrape.
    pending = copy.deepcopy(pod)
    pending["status"] = {"phase": "Pending"}
    no_ip = copy.deepcopy(pod)
    del no_ip["status"]["podIP"]
    assert activator_pods([pending, no_ip]) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_the_manifests_turn_the_exporter_on(version: str) -> None:
    """config-observability as shipped sets metrics-protocol: prometheus (Knative's default is
    none: no exporter, nothing to scrape), a key and value Knative's own ConfigMap documents."""
    ours = yaml.safe_load((MANIFESTS / "knative" / "config-observability.yaml").read_text())
    theirs = yaml.safe_load((KNATIVE / version / "observability.yaml").read_text())
    assert ours["metadata"]["name"] == theirs["metadata"]["name"] == "config-observability"
    assert ours["metadata"]["namespace"] == theirs["metadata"]["namespace"]
    assert ours["data"] == {"metrics-protocol": "prometheus"}
    example = theirs["data"]["_example"]
    assert re.search(r"^\s*metrics-protocol:", example, re.M)
    assert "'prometheus'" in example


def _relabel_keep(rules: list[dict[str, Any]], meta: dict[str, str]) -> bool:
    """Prometheus's relabelling, for the rules the shipped job uses (keep, replace)."""
    labels = dict(meta)
    for rule in rules:
        value = rule.get("separator", ";").join(labels.get(s, "") for s in rule["source_labels"])
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if rule.get("action", "replace") == "keep":
            if not match:
                return False
        elif match and "target_label" in rule:
            labels[rule["target_label"]] = match.expand(
                rule.get("replacement", "$1").replace("$", "\\")
            )
    return True


@pytest.mark.parametrize("version", VERSIONS)
def test_prometheus_keeps_the_activators_metrics_port(version: str) -> None:
    """The shipped scrape job (for dashboards; the controller scrapes the pods itself) keeps the
    activator's `metrics` port, as Knative's manifest names it (it kept `http-metrics`, the
    Service's name, so it never scraped a pod)."""
    cm = yaml.safe_load((MANIFESTS / "prometheus.yaml").read_text())
    cfg = yaml.safe_load(cm["data"]["prometheus.yml"])
    [job] = [j for j in cfg["scrape_configs"] if j["job_name"] == "knative-activator"]
    pod = activator_pod(version, "activator-abc", "10.1.2.3")
    kept = []
    for c in pod["spec"]["containers"]:
        for p in c["ports"]:
            meta = {
                "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k): v
                for k, v in pod["metadata"]["labels"].items()
            }
            meta["__meta_kubernetes_pod_container_port_name"] = p["name"]
            meta["__meta_kubernetes_pod_name"] = pod["metadata"]["name"]
            if _relabel_keep(job["relabel_configs"], meta):
                kept.append(p["name"])
    assert kept == ["metrics"]


async def _queue_one(http: aiohttp.ClientSession, url: str, ns: str, rev: str) -> None:
    headers = {"Knative-Serving-Revision": rev, "Knative-Serving-Namespace": ns}
    async with http.post(f"{url}/v1/completions", json={"model": "tiny"}, headers=headers) as r:
        await r.read()


async def test_demand_is_summed_over_every_activator_pod(tmp_path: Path) -> None:
    """Two activator pods (Knative runs several: nothing on the request path is single-replica),
    a request queued at each: the revision's demand is 2. A pod that does not answer is skipped
    and the others still count."""
    async with (
        kube_api() as (api, server),
        knative_activator(server, VERSIONS[0], ip="127.0.0.2") as a,
        knative_activator(server, VERSIONS[-1], ip="127.0.0.3") as b,
        aiohttp.ClientSession() as http,
    ):
        register(api, a, "activator-5b8f9c7d6d-aaaaa")
        register(api, b, "activator-5b8f9c7d6d-bbbbb")
        dead = activator_pod(VERSIONS[-1], "activator-5b8f9c7d6d-ccccc", "127.0.0.4", 9)
        api.put_object("", "pods", dead)
        waiting = [
            asyncio.create_task(_queue_one(http, act.url, "llm", "tiny-00001")) for act in (a, b)
        ]
        try:
            for act in (a, b):
                await eventually(lambda act=act: act.queued.get(("llm", "tiny-00001")))
            cfg = KubeConfig.load(str(write_kubeconfig(tmp_path / "kc", server)), None, False)
            async with KubeClient(cfg) as kube:
                source = KnativeActivatorPods(kube, http, ManualClock(), timeout_s=0.5)
                assert await source.buffered(REV) == 2
                assert await source.buffered(Revision("llm", "tiny-00002", "tiny")) == 0
                assert await source.buffered(Revision("team-b", "tiny-00001", "tiny")) == 0
                assert [p.name for p in source.pods] == [
                    "activator-5b8f9c7d6d-aaaaa",
                    "activator-5b8f9c7d6d-bbbbb",
                    "activator-5b8f9c7d6d-ccccc",
                ]
                assert any("activator-5b8f9c7d6d-ccccc" in e for e in source.errors)
                # One scrape per tick: a change is seen at the next tick, not within this one.
                b.held[("llm", "tiny-00001")] = 3
                assert await source.buffered(REV) == 2
                source.new_tick()
                assert await source.buffered(REV) == 5
            # Only pods in knative-serving were read, and only listed (the Role's one verb); the
            # unreachable pod made the next tick list them again (it may have gone).
            calls = {(r.verb, r.namespace) for r in api.log if r.resource == "pods"}
            assert calls == {("list", "knative-serving")}
        finally:
            for t in waiting:
                t.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
