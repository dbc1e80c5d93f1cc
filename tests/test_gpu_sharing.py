"""GPU sharing on a cluster: what ``thaw knative render`` writes for a pool with ``share: N`` (one
time slice per engine pod, the node selector, the engine's memory share, refusals that name the
field), the NVIDIA device plugin's time-slicing config (checked offline against the plugin's own
config types, strictly: the plugin ignores unknown keys, so a typo would silently share nothing),
``manifests/gpu-sharing/`` (equal to the render, and as ``kubectl kustomize`` renders it), and the
engine guard's ConfigMap (its module imports with the standard library alone, as in the vLLM
image)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from procs import REPO, thaw_argv

from engine.vllm_site import thaw_engine_guard
from knative.render import (
    DEVICE_PLUGIN_CONFIG_LABEL,
    RenderError,
    device_plugin_config_map,
    render_objects,
    render_services,
    time_slicing_config,
)
from policy_file.load import PolicyError, parse_policy
from policy_file.schema import ThawConfig
from policy_file.summary import summarize

GIB = 2**30
GUARD_SOURCE = Path(thaw_engine_guard.__file__).read_text()
SHARING = REPO / "manifests" / "gpu-sharing"

POLICY = f"""
models:
  - name: small
    engine: {{model: Qwen/Qwen2.5-1.5B-Instruct}}
    weights_bytes: {3 * GIB}
  - name: mid
    engine: {{model: meta-llama/Llama-3.1-8B-Instruct, gpu_memory_utilization: 0.45}}
    weights_bytes: {16 * GIB}
    pools: [h100-shared]
cluster:
  pools:
    - name: h100-shared
      gpu_type: NVIDIA H100 80GB HBM3
      gpu_memory_bytes: {80 * GIB}
      share: 2
      node_selector: {{nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3-SHARED}}
      cost_per_hour_usd: 4.0
      max_replicas: 8
    - name: l4
      gpu_type: NVIDIA L4
      gpu_memory_bytes: {24 * GIB}
      cost_per_hour_usd: 0.8
      max_replicas: 4
"""


def config(text: str = POLICY) -> ThawConfig:
    return parse_policy(text, "policy.yaml")


def container(services: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (svc,) = [s for s in services if s["metadata"]["name"] == name]
    (c,) = svc["spec"]["template"]["spec"]["containers"]
    return dict(c)


def arg(c: dict[str, Any], flag: str) -> str | None:
    args = c["args"]
    return args[args.index(flag) + 1] if flag in args else None


# -- the Services on a shared pool ---------------------------------------------------------------


def test_an_engine_on_a_shared_pool_requests_one_slice_and_its_share_of_memory() -> None:
    services = render_services(config())
    shared = container(services, "small-h100-shared")
    assert shared["resources"] == {
        "requests": {"nvidia.com/gpu.shared": "1"},
        "limits": {"nvidia.com/gpu.shared": "1"},
    }
    assert arg(shared, "--gpu-memory-utilization") == "0.45"  # 0.9 / share 2
    assert arg(container(services, "mid-h100-shared"), "--gpu-memory-utilization") == "0.45"
    (svc,) = [s for s in services if s["metadata"]["name"] == "small-h100-shared"]
    assert svc["spec"]["template"]["spec"]["nodeSelector"] == {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-SHARED",
        "nvidia.com/gpu.replicas": "2",
    }
    whole = container(services, "small-l4")
    assert whole["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert arg(whole, "--gpu-memory-utilization") is None


def test_an_explicit_gpu_resource_is_kept_on_a_shared_pool() -> None:
    text = POLICY.replace(
        "      share: 2\n", "      share: 2\n      gpu_resource: nvidia.com/gpu\n"
    )
    shared = container(render_services(config(text)), "small-h100-shared")
    assert shared["resources"]["limits"] == {"nvidia.com/gpu": "1"}


def test_engines_that_do_not_fit_awake_together_render_the_controller_arbitrates() -> None:
    """share x utilization above 1 was refused until the controller put engines to sleep; the
    GPU-memory arbiter now keeps the awake ones within the GPU (tests/test_knative_warm_pool.py)."""
    text = POLICY.replace("gpu_memory_utilization: 0.45", "gpu_memory_utilization: 0.6")
    mid = container(render_services(config(text)), "mid-h100-shared")
    assert arg(mid, "--gpu-memory-utilization") == "0.6"


def test_a_model_fits_a_shared_pool_by_its_share_of_the_gpu() -> None:
    text = POLICY.replace(f"weights_bytes: {16 * GIB}", f"weights_bytes: {40 * GIB}")
    with pytest.raises(RenderError, match=r"models\[1\].pools\[0\] = 'h100-shared': weights_bytes"):
        render_services(config(text))
    with pytest.raises(RenderError) as e:
        render_services(config(text))
    assert (
        "do not fit gpu_memory_utilization 0.45 x gpu_memory_bytes 85899345920 (pool share 2)"
        in (str(e.value))
    )


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("      share: 2\n", "      share: 2\n      gpus_per_replica: 2\n"),
            "share = 2 with gpus_per_replica = 2; a shared pool runs engines of one GPU slice "
            "each (accepted: gpus_per_replica 1, or share 1)",
        ),
        (("share: 2", "share: 0"), "cluster.pools[0].share (line"),
        (
            ("gpu_memory_utilization: 0.45}", "args: [--gpu-memory-utilization, '0.5']}"),
            "args sets --gpu-memory-utilization; set engine.gpu_memory_utilization instead",
        ),
        (("gpu_memory_utilization: 0.45", "gpu_memory_utilization: 1.5"), "<= 1"),
    ],
)
def test_sharing_errors_name_the_field(edit: tuple[str, str], expected: str) -> None:
    old, new = edit
    assert old in POLICY
    with pytest.raises(PolicyError) as e:
        parse_policy(POLICY.replace(old, new, 1), "f.yaml")
    assert any(expected in line for line in e.value.errors), e.value.errors


def test_policy_check_says_what_sleeping_saves_on_each_pool() -> None:
    text = POLICY.replace(
        "    weights_bytes: 3221225472\n",
        "    weights_bytes: 3221225472\n    warm_pool: {enabled: true}\n",
    )
    lines = summarize(config(text))
    assert (
        "warm pool on the cluster: pool l4 is not shared (share 1): a sleeping engine still "
        "holds its whole GPU, so sleeping saves start latency but no GPU-hours"
    ) in lines
    assert "shared: 2 engines per GPU" in lines[-1]
    assert not any("warm pool" in line for line in summarize(config()))


# -- the device plugin's config ------------------------------------------------------------------

# The NVIDIA device plugin's config types (NVIDIA/k8s-device-plugin api/config/v1: config.go,
# flags.go, sharing.go, replicas.go), as the keys each level accepts.
_TOP = {"version", "flags", "resources", "sharing", "imex"}
_FLAGS = {
    "migStrategy",
    "failOnInitError",
    "nvidiaDriverRoot",
    "nvidiaDevRoot",
    "gdsEnabled",
    "mofedEnabled",
    "useNodeFeatureAPI",
    "deviceDiscoveryStrategy",
    "plugin",
    "gfd",
}
_SHARING = {"timeSlicing", "mps"}
_REPLICATED = {"renameByDefault", "failRequestsGreaterThanOne", "strategy", "resources"}
_RESOURCE = {"name", "rename", "devices", "replicas"}


def device_plugin_problems(config: Any) -> list[str]:
    """What the device plugin would refuse in ``config``, or (being lenient) silently ignore."""
    out: list[str] = []

    def keys(where: str, value: Any, accepted: set[str]) -> bool:
        if not isinstance(value, dict):
            out.append(f"{where}: not a mapping")
            return False
        out.extend(f"{where}.{k}: unknown key" for k in value if k not in accepted)
        return True

    if not keys("config", config, _TOP):
        return out
    if config.get("version") != "v1":
        out.append(f"config.version = {config.get('version')!r}: must be v1")
    flags = config.get("flags", {})
    if keys("flags", flags, _FLAGS) and flags.get("migStrategy", "none") not in (
        "none", "single", "mixed",
    ):  # fmt: skip
        out.append(f"flags.migStrategy = {flags['migStrategy']!r}")
    sharing = config.get("sharing", {})
    if not keys("sharing", sharing, _SHARING):
        return out
    for kind, replicated in sharing.items():
        where = f"sharing.{kind}"
        if not keys(where, replicated, _REPLICATED):
            continue
        for flag in ("renameByDefault", "failRequestsGreaterThanOne"):
            if not isinstance(replicated.get(flag, False), bool):
                out.append(f"{where}.{flag}: not a boolean")
        if replicated.get("strategy", "") != "":
            out.append(f"{where}.strategy: unknown time-slicing strategy")
        resources = replicated.get("resources")
        if not isinstance(resources, list) or not resources:
            out.append(f"{where}.resources: no resources specified")
            continue
        for i, r in enumerate(resources):
            at = f"{where}.resources[{i}]"
            if not keys(at, r, _RESOURCE):
                continue
            if not isinstance(r.get("name"), str):
                out.append(f"{at}.name: no resource name specified")
            replicas = r.get("replicas")
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas <= 0:
                out.append(f"{at}.replicas = {replicas!r}: must be a count > 0")
    return out


def test_each_key_of_the_device_plugin_config_passes_the_plugins_types() -> None:
    cm = device_plugin_config_map([1, 4, 2, 4])
    assert list(cm["data"]) == ["unshared", "shared-2", "shared-4"]
    for key, text in cm["data"].items():
        assert device_plugin_problems(yaml.safe_load(text)) == [], key
    assert yaml.safe_load(cm["data"]["shared-4"]) == time_slicing_config(4)
    assert time_slicing_config(4)["sharing"]["timeSlicing"]["resources"] == [
        {"name": "nvidia.com/gpu", "replicas": 4}
    ]
    kubernetes_validate.validate(cm, "1.30", strict=True)


def test_the_device_plugin_check_can_fail() -> None:
    bad = time_slicing_config(4)
    bad["sharing"]["timeSlicing"]["resources"] = [{"name": "nvidia.com/gpu", "replica": 4}]
    bad["sharing"]["timeSlicing"]["renameByDefault"] = "yes"
    bad["sharing"]["timeslicing"] = {}
    assert device_plugin_problems(bad) == [
        "sharing.timeslicing: unknown key",
        "sharing.timeSlicing.renameByDefault: not a boolean",
        "sharing.timeSlicing.resources[0].replica: unknown key",
        "sharing.timeSlicing.resources[0].replicas = None: must be a count > 0",
        "sharing.timeslicing.resources: no resources specified",
    ]


def test_manifests_ship_the_render_for_shares_2_4_and_8() -> None:
    k = yaml.safe_load((SHARING / "kustomization.yaml").read_text())
    assert k["resources"] == ["time-slicing.yaml"]
    (shipped,) = list(yaml.safe_load_all((SHARING / "time-slicing.yaml").read_text()))
    assert shipped == device_plugin_config_map([2, 4, 8])
    assert DEVICE_PLUGIN_CONFIG_LABEL == "nvidia.com/device-plugin.config"
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    done = subprocess.run(
        [kubectl, "kustomize", str(SHARING)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert [d for d in yaml.safe_load_all(done.stdout) if d] == [shipped]


def test_render_prints_the_device_plugin_config_for_the_policys_shares(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    done = subprocess.run(
        thaw_argv("knative", "render", "--config", str(policy), "--device-plugin-config"),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert list(yaml.safe_load_all(done.stdout)) == [device_plugin_config_map([2])]


# -- the engine guard's ConfigMap ----------------------------------------------------------------


def test_the_guard_config_map_carries_a_module_that_needs_only_the_standard_library(
    tmp_path: Path,
) -> None:
    objects = render_objects(config(), GUARD_SOURCE)
    cm = objects[0]
    assert (cm["kind"], cm["metadata"]["name"]) == ("ConfigMap", "thaw-engine-guard")
    kubernetes_validate.validate(cm, "1.30", strict=True)
    ((name, source),) = cm["data"].items()
    (tmp_path / name).write_text(source)
    # -I -S: no site-packages, no PYTHONPATH; the module's directory only, as in the vLLM image
    probe = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import thaw_engine_guard as g; "
        "print(g.VLLM_MIDDLEWARE, g.EngineGuard.__name__)"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["thaw_engine_guard.EngineGuard", "EngineGuard"]
    middleware = [
        c["args"] for s in objects[1:] for c in s["spec"]["template"]["spec"]["containers"]
    ]
    assert all("thaw_engine_guard.EngineGuard" in a for a in middleware)
