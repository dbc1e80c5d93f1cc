"""``manifests/`` (kustomize) without a kustomize binary: kustomization.yaml is parsed and its
resources loaded here; every built-in kind passes kubernetes-validate (1.30, strict); the
ClusterRole grants exactly REQUIRED_RULES; the Knative ConfigMap keys exist in Knative's own
ConfigMaps; every ``thaw`` command parses with the real CLI parser; the policy ConfigMap
validates and renders; the Prometheus config passes Debian's promtool."""

from __future__ import annotations

import argparse
import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from procs import REPO

from knative.rbac import REQUIRED_RULES, rule_set
from knative.render import REQUIRED_FEATURES, render_services
from policy_file.load import parse_policy
from policy_file.support import Runtime
from thaw.cli import build_parser

MANIFESTS = REPO / "manifests"
KNATIVE = REPO / "tests" / "data" / "knative"  # copied from knative/serving
K8S_VERSION = "1.30"
#: API groups served by Kubernetes itself (kubernetes-validate knows their schemas).
BUILTIN_GROUPS = {"", "apps", "rbac.authorization.k8s.io", "batch", "policy", "networking.k8s.io"}
#: Kustomizations applied on their own, not by `kubectl apply -k manifests/` (manifests/README.md):
#: the device plugin's time-slicing config goes into the GPU operator's namespace.
SEPARATE = ("gpu-sharing",)
#: `thaw` subcommands the manifests use that the CLI does not have yet (see manifests/README.md).
PENDING_SUBCOMMANDS: frozenset[tuple[str, str]] = frozenset()


def load_kustomization(root: Path = MANIFESTS) -> list[dict[str, Any]]:
    """The objects ``kustomize build root`` would emit, for what this kustomization uses:
    ``resources`` (files and nested kustomizations) and nothing it does not support."""
    k = yaml.safe_load((root / "kustomization.yaml").read_text())
    supported = {"apiVersion", "kind", "resources"}
    assert set(k) <= supported, f"kustomization.yaml uses {set(k) - supported}; teach this loader"
    assert k["kind"] == "Kustomization"
    objects: list[dict[str, Any]] = []
    for entry in k["resources"]:
        path = root / entry
        if path.is_dir():
            objects += load_kustomization(path)
        else:
            objects += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return objects


OBJECTS = load_kustomization()


def group_of(obj: dict[str, Any]) -> str:
    api = obj["apiVersion"]
    return api.split("/")[0] if "/" in api else ""


def find(kind: str, name: str) -> dict[str, Any]:
    hits = [o for o in OBJECTS if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} found"
    return hits[0]


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


# -- the kustomization --------------------------------------------------------------------------


def test_every_file_in_manifests_is_in_the_kustomization() -> None:
    listed = set(yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"])
    for separate in SEPARATE:
        own = yaml.safe_load((MANIFESTS / separate / "kustomization.yaml").read_text())
        listed |= {f"{separate}/{r}" for r in own["resources"]}
    on_disk = {
        str(p.relative_to(MANIFESTS))
        for p in MANIFESTS.rglob("*.yaml")
        if p.name != "kustomization.yaml"
    }
    assert on_disk == listed
    assert not set(SEPARATE) & listed  # applied on their own


def test_the_install_has_every_part() -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in OBJECTS}
    assert {
        ("Namespace", "thaw-system"),
        ("Namespace", "thaw"),
        ("ServiceAccount", "thaw-controller"),
        ("ClusterRole", "thaw-controller"),
        ("ClusterRoleBinding", "thaw-controller"),
        ("Deployment", "thaw-controller"),
        ("Deployment", "thaw-gateway"),
        ("Service", "thaw-gateway"),
        ("PodDisruptionBudget", "thaw-gateway"),
        ("ConfigMap", "thaw-gateway"),
        ("Service", "thaw-controller-xds"),
        ("Role", "thaw-controller-activator-pods"),
        ("RoleBinding", "thaw-controller-activator-pods"),
        ("DaemonSet", "thaw-model-cache"),
        ("Service", "thaw-model-cache"),
        ("ConfigMap", "thaw-policy"),
        ("ConfigMap", "thaw-prometheus"),
        ("ConfigMap", "config-autoscaler"),
        ("ConfigMap", "config-features"),
        ("ConfigMap", "config-observability"),
    } <= kinds
    names = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in OBJECTS]
    assert len(names) == len(set(names)), "an object is defined twice"


@pytest.mark.parametrize(
    "obj",
    [o for o in OBJECTS if group_of(o) in BUILTIN_GROUPS],
    ids=lambda o: f"{o['kind']}/{o['metadata']['name']}",
)
def test_builtin_kinds_pass_kubernetes_validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_every_object_is_a_builtin_kind() -> None:
    """Nothing here needs a CRD; a Knative kind would need its CRD schema checked instead."""
    assert [o["kind"] for o in OBJECTS if group_of(o) not in BUILTIN_GROUPS] == []


def test_kubernetes_validate_catches_a_bad_object() -> None:
    bad = copy.deepcopy(find("Deployment", "thaw-controller"))
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    typo = copy.deepcopy(find("DaemonSet", "thaw-model-cache"))
    typo["spec"]["template"]["spec"]["tolerationz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


def test_namespaced_objects_say_their_namespace() -> None:
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for o in OBJECTS:
        has = "namespace" in o["metadata"]
        assert has != (o["kind"] in cluster_scoped), f"{o['kind']}/{o['metadata']['name']}"


# -- RBAC: exactly what the controller needs ----------------------------------------------------


def granted(role: dict[str, Any]) -> frozenset[tuple[str, str, str]]:
    out = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no resourceNames etc.
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    assert "*" not in (g, r, v), f"wildcard in {rule}"
                    out.add((g, r, v))
    return frozenset(out)


def test_cluster_role_grants_exactly_the_required_rules() -> None:
    role = find("ClusterRole", "thaw-controller")
    have, need = granted(role), rule_set()
    assert sorted(need - have) == [], "missing"
    assert sorted(have - need) == [], "not needed"
    assert len(REQUIRED_RULES) == len(role["rules"])


def test_the_rbac_check_fails_on_a_missing_or_extra_verb() -> None:
    role = copy.deepcopy(find("ClusterRole", "thaw-controller"))
    role["rules"][0]["verbs"].remove("watch")
    assert ("autoscaling.internal.knative.dev", "podautoscalers", "watch") in (
        rule_set() - granted(role)
    )
    role = copy.deepcopy(find("ClusterRole", "thaw-controller"))
    role["rules"][0]["verbs"].append("update")
    assert granted(role) - rule_set() == {
        ("autoscaling.internal.knative.dev", "podautoscalers", "update")
    }


def test_the_controller_runs_as_the_bound_service_account() -> None:
    binding = find("ClusterRoleBinding", "thaw-controller")
    sa = find("ServiceAccount", "thaw-controller")
    (subject,) = binding["subjects"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "thaw-controller",
    }
    assert (subject["name"], subject["namespace"]) == (
        sa["metadata"]["name"],
        sa["metadata"]["namespace"],
    )
    deploy = find("Deployment", "thaw-controller")
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "thaw-controller"
    assert deploy["metadata"]["namespace"] == sa["metadata"]["namespace"]


# -- Knative's ConfigMaps ------------------------------------------------------------------------


def knative_keys(path: Path) -> set[str]:
    """The keys a Knative ConfigMap documents: its data keys and those in its _example block."""
    cm = yaml.safe_load(path.read_text())
    keys = {k for k in cm["data"] if k != "_example"}
    for line in cm["data"].get("_example", "").splitlines():
        text = line.strip()
        if text and not text.startswith("#") and ":" in text:
            keys.add(text.split(":", 1)[0].strip())
    return keys


def test_config_autoscaler_patch_sets_only_keys_knative_has() -> None:
    cm = find("ConfigMap", "config-autoscaler")
    assert cm["metadata"]["namespace"] == "knative-serving"
    assert cm["data"] == {"allow-zero-initial-scale": "true"}
    known = knative_keys(KNATIVE / "autoscaler.yaml")
    assert "allow-zero-initial-scale" in known and "stable-window" in known
    assert set(cm["data"]) <= known


def test_config_features_enables_what_rendered_services_use() -> None:
    cm = find("ConfigMap", "config-features")
    assert cm["metadata"]["namespace"] == "knative-serving"
    assert cm["data"] == dict.fromkeys(REQUIRED_FEATURES, "enabled")


# -- commands, images, the policy ---------------------------------------------------------------


def thaw_commands() -> list[tuple[str, list[str]]]:
    out = []
    for o in OBJECTS:
        for c in containers(o):
            if c.get("command") == ["thaw"]:
                out.append((f"{o['kind']}/{o['metadata']['name']}", list(c["args"])))
    return out


def test_every_thaw_component_runs_the_thaw_image() -> None:
    """Thaw's own components run the Thaw image; the gateway runs the official Envoy image
    (tests/test_gateway_manifests.py pins it)."""
    images = {c["image"] for o in OBJECTS for c in containers(o) if c["name"] != "envoy"}
    policy = parse_policy(find("ConfigMap", "thaw-policy")["data"]["policy.yaml"])
    assert policy.cluster is not None
    assert images == {policy.cluster.thaw_image}
    assert not any(i.endswith(":latest") or ":" not in i for i in images)
    assert len(thaw_commands()) == 2


@pytest.mark.parametrize(("where", "args"), thaw_commands(), ids=lambda v: str(v))
def test_thaw_commands_parse_with_the_real_cli(where: str, args: list[str]) -> None:
    if tuple(args[:2]) in PENDING_SUBCOMMANDS:
        pytest.xfail(f"{where}: `thaw {' '.join(args[:2])}` is not written yet")
    parsed = build_parser().parse_args(args)
    assert callable(parsed.func)


def has_subcommand(path: tuple[str, ...]) -> bool:
    parser: Any = build_parser()
    for name in path:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or name not in subs[0].choices:
            return False
        parser = subs[0].choices[name]
    return True


def test_pending_subcommands_are_still_pending() -> None:
    """Fails as soon as a pending subcommand exists: then drop it from PENDING_SUBCOMMANDS so
    its flags get checked like the others'."""
    assert has_subcommand(("knative", "controller"))
    for sub in PENDING_SUBCOMMANDS:
        assert not has_subcommand(sub), f"thaw {' '.join(sub)} exists now; check its flags"


def test_a_renamed_flag_would_fail_the_parse() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["cache", "serve", "--dir=/x", "--budget-bytes=1G", "--nope"])


def test_controller_flags_match_the_other_manifests() -> None:
    args = dict(
        a.split("=", 1) for a in thaw_commands_of("Deployment", "thaw-controller") if "=" in a
    )
    assert args["--config"] == "/etc/thaw/policy.yaml"
    assert args["--lease-namespace"] == "thaw-system"
    from knative.render import ENGINE_PORT

    assert args["--engine-port"] == str(ENGINE_PORT)


def thaw_commands_of(kind: str, name: str) -> list[str]:
    (c,) = containers(find(kind, name))
    return list(c["args"])


def test_the_policy_config_map_validates_and_renders() -> None:
    text = find("ConfigMap", "thaw-policy")["data"]["policy.yaml"]
    # As the controller and render load it: nothing in it is refused there.
    config = parse_policy(text, "manifests/policy.yaml", Runtime.KNATIVE)
    services = render_services(config)
    assert services, "the example policy renders no Service"
    assert config.cluster is not None
    cache = find("DaemonSet", "thaw-model-cache")
    (agent,) = containers(cache)
    flags = dict(a.split("=", 1) for a in agent["args"] if "=" in a)
    volume = cache["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["path"]
    # The engines mount the agent's directory at the agent's own path and ask its Service.
    assert config.cluster.model_cache.host_path == flags["--dir"] == volume
    svc = find("Service", "thaw-model-cache")
    assert svc["spec"]["internalTrafficPolicy"] == "Local"
    assert config.cluster.model_cache.url == (
        f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:"
        f"{svc['spec']['ports'][0]['port']}"
    )
    assert flags["--port"] == str(svc["spec"]["ports"][0]["port"])
    namespaces = {o["metadata"]["name"] for o in OBJECTS if o["kind"] == "Namespace"}
    assert config.cluster.namespace in namespaces


# -- Prometheus ----------------------------------------------------------------------------------


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """Debian's Prometheus is built without Kubernetes service discovery, so promtool checks the
    config with each kubernetes_sd_configs swapped for a static target (relabelling, intervals
    and the rest are checked as written); the roles are checked against Prometheus' list."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install -y prometheus)")
    config = yaml.safe_load(find("ConfigMap", "thaw-prometheus")["data"]["prometheus.yml"])
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert {"thaw-gateway", "thaw-engines", "knative-activator"} <= set(jobs)
    for job in jobs.values():
        for sd in job.pop("kubernetes_sd_configs"):
            assert sd["role"] in {"node", "service", "pod", "endpoints", "endpointslice"}
        job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.yml"
    config["scrape_configs"][0]["relabel_configs"][0]["action"] = "kepp"
    broken.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [promtool, "check", "config", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0


def test_engine_scrape_job_keeps_what_render_annotates() -> None:
    config = yaml.safe_load(find("ConfigMap", "thaw-prometheus")["data"]["prometheus.yml"])
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "thaw-engines"]
    keeps = {
        tuple(r["source_labels"]): r["regex"]
        for r in job["relabel_configs"]
        if r.get("action") == "keep"
    }
    policy = parse_policy(find("ConfigMap", "thaw-policy")["data"]["policy.yaml"])
    annotations = render_services(policy)[0]["spec"]["template"]["metadata"]["annotations"]
    assert (
        keeps[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)]
        == annotations["prometheus.io/scrape"]
    )
    assert "thaw.dev/model" in annotations  # __meta_..._annotation_thaw_dev_model is kept


def test_kubectl_kustomize_renders_what_these_tests_check() -> None:
    """`kubectl kustomize manifests/` (kubectl's own kustomize) prints exactly the objects this
    file loads and validates."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    done = subprocess.run(
        [kubectl, "kustomize", str(MANIFESTS)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d is not None]

    def key(o: dict[str, Any]) -> tuple[str, str, str]:
        return (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])

    assert sorted(map(key, rendered)) == sorted(map(key, OBJECTS))
    by_key = {key(o): o for o in OBJECTS}
    for o in rendered:
        assert o == by_key[key(o)], key(o)
