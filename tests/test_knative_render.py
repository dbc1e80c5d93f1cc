"""``thaw knative render`` and the policy's ``cluster:`` section: which (model, pool) pairs get a
Service, what each Service carries, errors that name the field, the pod template against the
Kubernetes schema (kubernetes-validate) and against the fields Knative accepts, the engine's
cache request against a real HTTP agent, and the CLI as a real process."""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from aiohttp import web
from procs import REPO, thaw_argv

from engine.vllm_site import thaw_engine_guard
from engine.vllm_site.thaw_engine_guard import READY_PATH
from knative import render
from knative.contract import AUTOSCALER_CLASS, CLASS_ANNOTATION, MODEL_ANNOTATION, POOL_ANNOTATION
from knative.render import (
    MAX_SERVICE_NAME,
    RenderError,
    dns_label,
    render_objects,
    render_services,
    service_name,
    to_yaml,
)
from policy_file.load import PolicyError, parse_policy
from policy_file.schema import ThawConfig
from policy_file.summary import summarize

GIB = 2**30
GUARD_SOURCE = Path(thaw_engine_guard.__file__).read_text()
MINIMAL = "models:\n  - name: m\n"

POLICY = f"""
models:
  - name: Llama-3.1-8B/Instruct
    engine: {{model: s3://models/llama-8b, args: [--max-model-len, "8192"]}}
    autoscaling: {{max_replicas: 4}}
    weights_bytes: {16 * GIB}
    warm_pool: {{enabled: true}}
  - name: qwen-72b
    engine: {{model: Qwen/Qwen2-72B-Instruct}}
    weights_bytes: {150 * GIB}
  - name: emu
    engine: {{kind: emulator}}
    pools: [l4]
cluster:
  namespace: llm
  pools:
    - name: h100
      gpu_type: NVIDIA H100 80GB HBM3
      gpu_memory_bytes: {80 * GIB}
      gpus_per_replica: 2
      node_selector: {{nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}}
      tolerations: [{{key: nvidia.com/gpu, effect: NoSchedule}}]
      cost_per_hour_usd: 4.0
      max_replicas: 2
    - name: l4
      gpu_type: NVIDIA L4
      gpu_memory_bytes: {24 * GIB}
      cost_per_hour_usd: 0.8
      max_replicas: 8
"""


def config(text: str = POLICY) -> ThawConfig:
    return parse_policy(text, "policy.yaml")


def by_name(services: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["metadata"]["name"]: s for s in services}


def errors_of(text: str) -> tuple[str, ...]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "f.yaml")
    return info.value.errors


# -- the policy's cluster: section -------------------------------------------------------------


def test_cluster_section_is_optional_and_defaults_are_pinned() -> None:
    assert parse_policy("models:\n  - name: m\n").cluster is None
    c = config().cluster
    assert c is not None
    assert c.image.startswith("vllm/vllm-openai:") and not c.image.endswith(":latest")
    assert c.pools[1].gpu_resource == "nvidia.com/gpu"
    assert c.pools[1].gpus_per_replica == 1
    assert c.model_cache.host_path == "/var/cache/thaw"
    assert config().models[2].pools == ("l4",)
    assert config().models[0].pools is None


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("    pools: [l4]", "    pools: [l4, a100]"),
            "models[2].pools[1] = 'a100': not a pool in cluster.pools (accepted: h100, l4)",
        ),
        (("- name: l4", "- name: h100"), "unique: pools[1].name 'h100' repeats pools[0].name"),
        (("- name: l4", "- name: L4_pool"), "cluster.pools[1].name"),
        (("gpus_per_replica: 2", "gpus_per_replica: 0"), "cluster.pools[0].gpus_per_replica"),
        (("cost_per_hour_usd: 0.8", "cost_per_hour_usd: cheap"), "cost_per_hour_usd"),
        (("max_replicas: 8", "max_replicas: 0"), "cluster.pools[1].max_replicas"),
        (("namespace: llm", "namespace: LLM"), "cluster.namespace"),
        (("  namespace: llm", "  nmespace: llm"), "cluster.nmespace"),
        (("effect: NoSchedule", "effect: Never"), "cluster.pools[0].tolerations[0].effect"),
        ((f"weights_bytes: {16 * GIB}", "weights_bytes: 0"), "models[0].weights_bytes"),
    ],
)
def test_cluster_errors_name_the_field(edit: tuple[str, str], expected: str) -> None:
    old, new = edit
    assert old in POLICY
    errors = errors_of(POLICY.replace(old, new, 1))
    assert any(expected in e for e in errors), errors


def test_policy_check_summary_lists_the_pools() -> None:
    lines = summarize(config())
    assert lines[-1] == (
        "cluster: namespace llm; pools h100 (2 x NVIDIA H100 80GB HBM3, 86 GB, $4/GPU-h, "
        "max 2), l4 (1 x NVIDIA L4, 26 GB, $0.8/GPU-h, max 8)"
    )
    assert not any(line.startswith("cluster:") for line in summarize(parse_policy(MINIMAL)))


def test_model_pools_without_a_cluster_section_is_an_error() -> None:
    errors = errors_of("models:\n  - name: m\n    pools: [h100]\n")
    assert any("models[0].pools[0] = 'h100'" in e and "no cluster.pools" in e for e in errors)


# -- which Services ------------------------------------------------------------------------------


def test_one_service_per_model_and_pool_it_fits() -> None:
    services = by_name(render_services(config()))
    # 16 GiB fits both; 150 GiB fits only 2 x 80 GiB; the emulator is pinned to l4.
    assert set(services) == {
        "llama-3-1-8b-instruct-h100",
        "llama-3-1-8b-instruct-l4",
        "qwen-72b-h100",
        "emu-l4",
    }
    for s in services.values():
        assert s["apiVersion"] == "serving.knative.dev/v1"
        assert s["kind"] == "Service"
        assert s["metadata"]["namespace"] == "llm"


def test_fit_check_is_one_switchable_call() -> None:
    calls: list[tuple[str, str]] = []

    def only_l4(model: Any, pool: Any) -> bool:
        calls.append((model.name, pool.name))
        return bool(pool.name == "l4")

    services = by_name(render_services(config(), fits=only_l4))
    assert set(services) == {"llama-3-1-8b-instruct-l4", "qwen-72b-l4", "emu-l4"}
    assert ("qwen-72b", "h100") in calls


def test_unknown_weights_fit_every_pool() -> None:
    text = POLICY.replace(f"    weights_bytes: {150 * GIB}\n", "")
    names = set(by_name(render_services(config(text))))
    assert {"qwen-72b-h100", "qwen-72b-l4"} <= names


def test_a_model_that_fits_no_pool_is_an_error_naming_weights_bytes() -> None:
    text = POLICY.replace(f"weights_bytes: {150 * GIB}", f"weights_bytes: {400 * GIB}")
    with pytest.raises(RenderError, match=r"models\[1\]\.weights_bytes = 429496729600: fits no"):
        render_services(config(text))


def test_a_pinned_pool_the_model_does_not_fit_is_an_error_naming_the_pool() -> None:
    text = POLICY.replace(
        f"weights_bytes: {150 * GIB}\n", f"weights_bytes: {150 * GIB}\n    pools: [h100, l4]\n"
    )
    with pytest.raises(RenderError, match=r"models\[1\]\.pools\[1\] = 'l4'"):
        render_services(config(text))


def test_render_needs_a_cluster_section_and_a_real_model() -> None:
    with pytest.raises(RenderError, match="cluster: required"):
        render_services(parse_policy("models:\n  - name: m\n"))
    text = POLICY.replace("engine: {model: Qwen/Qwen2-72B-Instruct}", "engine: {kind: vllm}")
    with pytest.raises(RenderError, match=r"models\[1\]\.engine\.model = None"):
        render_services(config(text))


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Llama-3.1-8B/Instruct", "llama-3-1-8b-instruct"),
        ("meta-llama/Llama-3.1-70B", "meta-llama-llama-3-1-70b"),
        ("7b_model", "b-model"),
        ("--x--", "x"),
        ("42", ""),
        ("日本", ""),
    ],
)
def test_dns_label(text: str, label: str) -> None:
    assert dns_label(text) == label


def test_long_names_are_cut_with_a_hash_and_stay_distinct() -> None:
    a = "org/" + "very-long-model-name-" * 4 + "a"
    b = "org/" + "very-long-model-name-" * 4 + "b"
    na, nb = service_name(a, "h100"), service_name(b, "h100")
    for n in (na, nb):
        assert len(n) <= MAX_SERVICE_NAME
        assert n.endswith("-h100")
        assert len(f"{n}-00001-private") <= 63
    assert na != nb
    assert service_name("42", "h100") == ""


def test_names_that_collide_or_vanish_are_errors_naming_the_model() -> None:
    clash = POLICY.replace("- name: qwen-72b", "- name: LLAMA-3.1-8b/instruct")
    with pytest.raises(RenderError, match=r"models\[1\]\.name = 'LLAMA-3.1-8b/instruct'.*rename"):
        render_services(config(clash))
    empty = POLICY.replace("- name: emu", "- name: '1234'")
    with pytest.raises(RenderError, match=r"models\[2\]\.name = '1234': cannot make a Service"):
        render_services(config(empty))


# -- what a Service carries ------------------------------------------------------------------


def test_revision_template_annotations() -> None:
    s = by_name(render_services(config()))
    h100 = s["llama-3-1-8b-instruct-h100"]["spec"]["template"]["metadata"]["annotations"]
    assert h100[CLASS_ANNOTATION] == AUTOSCALER_CLASS
    assert h100["autoscaling.knative.dev/min-scale"] == "0"
    assert h100["autoscaling.knative.dev/initial-scale"] == "0"
    assert h100["autoscaling.knative.dev/max-scale"] == "2"  # the pool's capacity, below 4
    assert h100[MODEL_ANNOTATION] == "Llama-3.1-8B/Instruct"
    assert h100[POOL_ANNOTATION] == "h100"
    l4 = s["llama-3-1-8b-instruct-l4"]["spec"]["template"]["metadata"]["annotations"]
    assert l4["autoscaling.knative.dev/max-scale"] == "4"  # the model's max_replicas
    for svc in s.values():  # every annotation value is a string (Kubernetes requires it)
        annotations = svc["spec"]["template"]["metadata"]["annotations"]
        assert all(isinstance(v, str) for v in annotations.values())


def test_min_and_initial_scale_are_the_models_within_max_scale() -> None:
    # They were always "0": a model's min_replicas / initial_replicas never reached the cluster
    # (the PA's annotations win over the policy file in the controller).
    text = POLICY.replace(
        "autoscaling: {max_replicas: 4}",
        "autoscaling: {min_replicas: 3, initial_replicas: 4, max_replicas: 4}",
    )
    s = by_name(render_services(config(text)))
    h100 = s["llama-3-1-8b-instruct-h100"]["spec"]["template"]["metadata"]["annotations"]
    l4 = s["llama-3-1-8b-instruct-l4"]["spec"]["template"]["metadata"]["annotations"]
    scales = ("min-scale", "initial-scale", "max-scale")
    assert [l4[f"autoscaling.knative.dev/{k}"] for k in scales] == ["3", "4", "4"]
    # the h100 pool holds 2: every bound within it
    assert [h100[f"autoscaling.knative.dev/{k}"] for k in scales] == ["2", "2", "2"]


def test_vllm_container_for_an_s3_model_on_a_two_gpu_pool() -> None:
    svc = by_name(render_services(config()))["llama-3-1-8b-instruct-h100"]
    pod = svc["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "vllm/vllm-openai:v0.11.0"
    assert c["ports"] == [{"name": "http1", "containerPort": 8000}]
    assert c["readinessProbe"]["httpGet"] == {"path": READY_PATH, "port": 8000}
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert c["resources"]["requests"] == {"nvidia.com/gpu": "2"}
    args = c["args"]
    assert args[args.index("--served-model-name") + 1] == "Llama-3.1-8B/Instruct"
    assert args[args.index("--port") + 1] == "8000"
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[-2:] == ["--max-model-len", "8192"]  # the policy's engine args, last
    assert "--enable-sleep-mode" in args
    assert args[args.index("--middleware") + 1] == "thaw_engine_guard.EngineGuard"
    assert "--gpu-memory-utilization" not in args  # a GPU of its own: vLLM's default
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["VLLM_SERVER_DEV_MODE"] == "1"
    assert env["THAW_MODEL_URI"] == "s3://models/llama-8b"
    assert env["THAW_CACHE_URL"] == "http://thaw-model-cache.thaw-system.svc:8070"
    assert env["THAW_ENGINE_CREDENTIAL_FILE"] == "/var/run/secrets/thaw/engine/credential"
    assert env["PYTHONPATH"] == "/opt/thaw/engine-guard"
    assert c["command"][:2] == ["/bin/sh", "-c"]
    assert c["volumeMounts"] == [
        {"name": "model-cache", "mountPath": "/var/cache/thaw", "readOnly": True},
        {
            "name": "thaw-engine-credential",
            "mountPath": "/var/run/secrets/thaw/engine",
            "readOnly": True,
        },
        {"name": "thaw-engine-guard", "mountPath": "/opt/thaw/engine-guard", "readOnly": True},
    ]
    assert pod["volumes"] == [
        {"name": "model-cache", "hostPath": {"path": "/var/cache/thaw", "type": "Directory"}},
        {
            "name": "thaw-engine-credential",
            "secret": {
                "secretName": "thaw-engine-credential",
                "items": [{"key": "credential", "path": "credential"}],
            },
        },
        {"name": "thaw-engine-guard", "configMap": {"name": "thaw-engine-guard"}},
    ]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["timeoutSeconds"] == 600


def test_hub_model_without_warm_pool_goes_to_vllm_unchanged() -> None:
    svc = by_name(render_services(config()))["qwen-72b-h100"]
    (c,) = svc["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert c["args"][:2] == ["--model", "Qwen/Qwen2-72B-Instruct"]
    assert "--enable-sleep-mode" not in c["args"]
    # no VLLM_SERVER_DEV_MODE without a warm pool; the engine guard all the same
    assert {e["name"] for e in c["env"]} == {"THAW_ENGINE_CREDENTIAL_FILE", "PYTHONPATH"}
    volumes = svc["spec"]["template"]["spec"]["volumes"]
    assert [v["name"] for v in volumes] == ["thaw-engine-credential", "thaw-engine-guard"]


def test_emulator_runs_a_real_thaw_subcommand() -> None:
    from thaw.cli import build_parser

    svc = by_name(render_services(config()))["emu-l4"]
    (c,) = svc["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["thaw"]
    args = build_parser().parse_args(c["args"])
    assert args.port == 8000
    assert "resources" not in c


# -- the pod template against Kubernetes and Knative ---------------------------------------------

# Knative's RevisionSpec = a PodSpec subset (pkg/apis/serving/fieldmask.go) plus its own fields.
KNATIVE_REVISION_FIELDS = {
    "containerConcurrency", "timeoutSeconds", "responseStartTimeoutSeconds",
    "idleTimeoutSeconds",
}  # fmt: skip
KNATIVE_POD_FIELDS = {
    "containers", "volumes", "serviceAccountName", "imagePullSecrets", "enableServiceLinks",
    "automountServiceAccountToken",
    # behind config-features flags (manifests/ enables the three render uses):
    "nodeSelector", "tolerations", "affinity", "topologySpreadConstraints", "hostAliases",
    "runtimeClassName", "dnsPolicy", "dnsConfig", "securityContext", "priorityClassName",
    "schedulerName", "initContainers",
}  # fmt: skip
KNATIVE_CONTAINER_FIELDS = {
    "name", "args", "command", "env", "workingDir", "envFrom", "image", "imagePullPolicy",
    "livenessProbe", "ports", "readinessProbe", "startupProbe", "resources", "securityContext",
    "terminationMessagePath", "terminationMessagePolicy", "volumeMounts",
}  # fmt: skip
KNATIVE_VOLUME_SOURCES = {"secret", "configMap", "projected", "emptyDir", "hostPath"}
# Knative's reservations (pkg/apis/serving/k8s_validation.go): queue-proxy's ports, the env it
# sets, mount paths it refuses, and the port names it routes by.
KNATIVE_RESERVED_PORTS = {8012, 8013, 8022, 9090, 9091}
KNATIVE_RESERVED_ENV = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}
KNATIVE_RESERVED_PATHS = {"/", "/dev", "/dev/log", "/tmp", "/var", "/var/log"}
KNATIVE_PORT_NAMES = {"http1", "h2c"}


def knative_problems(template: dict[str, Any]) -> list[str]:
    """Fields of a revision template Knative's webhook would refuse."""
    spec = template["spec"]
    out = [f"spec.{k}" for k in spec if k not in KNATIVE_REVISION_FIELDS | KNATIVE_POD_FIELDS]
    containers = spec.get("containers", [])
    if len(containers) != 1:
        out.append(f"spec.containers: {len(containers)} (one serving container)")
    for i, c in enumerate(containers):
        out += [f"containers[{i}].{k}" for k in c if k not in KNATIVE_CONTAINER_FIELDS]
        if len(c.get("ports", [])) != 1:
            out.append(f"containers[{i}].ports: exactly one port")
        for port in c.get("ports", []):
            if port["containerPort"] in KNATIVE_RESERVED_PORTS:
                out.append(f"containers[{i}].ports: {port['containerPort']} is reserved")
            if port.get("name", "http1") not in KNATIVE_PORT_NAMES:
                out.append(f"containers[{i}].ports: name {port['name']!r}")
        for env in c.get("env", []):
            if env["name"] in KNATIVE_RESERVED_ENV:
                out.append(f"containers[{i}].env: {env['name']} is reserved")
        for mount in c.get("volumeMounts", []):
            if (mount["mountPath"].rstrip("/") or "/") in KNATIVE_RESERVED_PATHS:
                out.append(f"containers[{i}].volumeMounts: {mount['mountPath']} is reserved")
        for probe in ("readinessProbe", "livenessProbe"):
            port = c.get(probe, {}).get("httpGet", {}).get("port")
            if port is not None and port != c["ports"][0]["containerPort"]:
                out.append(f"containers[{i}].{probe}: port {port} is not the container port")
    for i, v in enumerate(spec.get("volumes", [])):
        out += [f"volumes[{i}].{k}" for k in v if k != "name" and k not in KNATIVE_VOLUME_SOURCES]
    return out


def as_pod(service: dict[str, Any]) -> dict[str, Any]:
    """The revision template as the Pod Knative's Deployment makes of it."""
    template = service["spec"]["template"]
    spec = {k: v for k, v in template["spec"].items() if k not in KNATIVE_REVISION_FIELDS}
    meta = {**template["metadata"], "name": f"{service['metadata']['name']}-00001"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def test_every_pod_template_passes_the_kubernetes_schema() -> None:
    for service in render_services(config()):
        kubernetes_validate.validate(as_pod(service), "1.30", strict=True)


def test_every_template_uses_only_fields_knative_accepts() -> None:
    for service in render_services(config()):
        assert knative_problems(service["spec"]["template"]) == []


def test_the_knative_field_check_can_fail() -> None:
    service = render_services(config())[0]
    bad = copy.deepcopy(service["spec"]["template"])
    bad["spec"]["hostNetwork"] = True
    bad["spec"]["containers"][0]["lifecycle"] = {"preStop": {"exec": {"command": ["true"]}}}
    bad["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = 9000
    bad["spec"]["volumes"].append({"name": "x", "nfs": {"server": "s", "path": "/"}})
    bad["spec"]["containers"][0]["env"].append({"name": "PORT", "value": "1"})
    bad["spec"]["containers"][0]["volumeMounts"].append({"name": "x", "mountPath": "/tmp/"})
    assert knative_problems(bad) == [
        "spec.hostNetwork",
        "containers[0].lifecycle",
        "containers[0].env: PORT is reserved",
        "containers[0].volumeMounts: /tmp/ is reserved",
        "containers[0].readinessProbe: port 9000 is not the container port",
        f"volumes[{len(bad['spec']['volumes']) - 1}].nfs",
    ]
    reserved = copy.deepcopy(service["spec"]["template"])
    reserved["spec"]["containers"][0]["ports"] = [{"name": "metrics", "containerPort": 9090}]
    assert knative_problems(reserved)[:2] == [
        "containers[0].ports: 9090 is reserved",
        "containers[0].ports: name 'metrics'",
    ]
    broken = as_pod(service)
    broken["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30", strict=True)


def test_features_the_services_need_are_the_ones_the_manifests_enable() -> None:
    uses = set()
    for service in render_services(config()):
        spec = service["spec"]["template"]["spec"]
        uses |= {k for k in ("nodeSelector", "tolerations") if k in spec}
        uses |= {"hostPath" for v in spec.get("volumes", []) if "hostPath" in v}
    assert uses == {"nodeSelector", "tolerations", "hostPath"}
    assert set(render.REQUIRED_FEATURES) == {
        "kubernetes.podspec-nodeselector",
        "kubernetes.podspec-tolerations",
        "kubernetes.podspec-volumes-hostpath",
    }


# -- the engine's request to the node's cache agent, for real ---------------------------------


def test_engine_start_script_asks_the_cache_agent_and_prints_the_path(tmp_path: Path) -> None:
    """The Python the engine container runs before vLLM, against a real HTTP agent."""
    svc = by_name(render_services(config()))["llama-3-1-8b-instruct-l4"]
    (c,) = svc["spec"]["template"]["spec"]["containers"]
    script = c["command"][2]
    py = script.split("python3 -c '", 1)[1].split("')\"", 1)[0]
    env = {e["name"]: e["value"] for e in c["env"]}
    seen: list[tuple[str, dict[str, Any]]] = []

    async def ensure(request: web.Request) -> web.Response:
        seen.append((request.raw_path, await request.json()))
        return web.json_response({"path": "/var/cache/thaw/models/x/r1", "tier": "hit"})

    async def main() -> subprocess.CompletedProcess[str]:
        app = web.Application()
        app.router.add_post("/v1/models/{name}/ensure", ensure)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            run_env = {**os.environ, **env, "THAW_CACHE_URL": f"http://127.0.0.1:{port}"}
            return await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-c", py],
                env=run_env,
                capture_output=True,
                text=True,
                timeout=30,
            )
        finally:
            await runner.cleanup()

    done = asyncio.run(main())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "/var/cache/thaw/models/x/r1"
    assert seen == [
        ("/v1/models/Llama-3.1-8B--Instruct/ensure", {"s3_uri": "s3://models/llama-8b"})
    ]


# -- the CLI ---------------------------------------------------------------------------------


#: POLICY as the Knative runtime takes it (the controller runs warm pools: accepted as written).
CLUSTER_POLICY = POLICY


def test_cli_writes_a_yaml_stream(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(CLUSTER_POLICY)
    out = tmp_path / "services.yaml"
    done = subprocess.run(
        thaw_argv("knative", "render", "--config", str(policy), "--out", str(out)),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote the engine guard's ConfigMap and 4 Knative Services" in done.stderr
    docs = list(yaml.safe_load_all(out.read_text()))
    assert docs == render_objects(config(CLUSTER_POLICY), GUARD_SOURCE)
    assert docs[1:] == render_services(config(CLUSTER_POLICY))
    assert to_yaml(docs) == out.read_text()


def test_cli_error_names_the_field(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(CLUSTER_POLICY.replace("pools: [l4]", "pools: [t4]"))
    done = subprocess.run(
        thaw_argv("knative", "render", "--config", str(policy)),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 2
    assert "models[2].pools[0] = 't4'" in done.stderr
    assert done.stdout == ""


def test_startup_timeout_is_the_revisions_progress_deadline_when_set() -> None:
    """engine.startup_timeout_s, when the file sets it, is Knative's progress deadline (how long
    a revision may take to become ready; KPA waits it, plus 30 s, before it gives up
    activating); unset, config-deployment's applies."""
    cfg = config()
    m0 = cfg.models[0]
    engine = m0.engine.model_copy(update={"startup_timeout_s": 900.5})
    models = (m0.model_copy(update={"engine": engine}), *cfg.models[1:])
    key = "serving.knative.dev/progress-deadline"

    def deadlines(c: ThawConfig) -> dict[str, str | None]:
        return {
            s["metadata"]["name"]: s["spec"]["template"]["metadata"]["annotations"].get(key)
            for s in render_services(c)
        }

    before = deadlines(cfg)
    after = deadlines(cfg.model_copy(update={"models": models}))
    assert set(before.values()) == {None}
    changed = {name: d for name, d in after.items() if d is not None}
    assert changed and set(changed.values()) == {"901s"}
