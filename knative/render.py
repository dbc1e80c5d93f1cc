"""Knative Services from the policy file: one per (model, GPU pool where the model fits).

Owns the mapping from a :class:`~policy_file.schema.ThawConfig` with a ``cluster:`` section to
``serving.knative.dev/v1`` Service objects (plain dicts, ready for YAML). Pure: no I/O, no clock;
``thaw knative render`` is the thin CLI around :func:`render_services`.

What each Service carries, and why:

- name ``<model>-<pool>`` made a DNS-1035 label of at most :data:`MAX_SERVICE_NAME` characters
  (Knative names the revision ``<name>-00001`` and its private Kubernetes Service
  ``<name>-00001-private``, which must stay a 63-character label); a name shortened to fit ends in
  a hash of the model name so two long names stay apart; a clash is a :class:`RenderError`.
- revision template annotations: the class annotation with Thaw's value (Knative hands the
  PodAutoscaler to Thaw's controller), ``max-scale`` = the smaller of the model's
  ``max_replicas`` and the pool's capacity, ``min-scale`` and ``initial-scale`` = the model's
  ``min_replicas`` and ``initial_replicas`` (within ``max-scale``; by default ``"0"``, which
  needs ``allow-zero-initial-scale`` in ``config-autoscaler``, which ``manifests/`` patches) —
  per Service, i.e. per (model, pool), as Knative scales each revision apart — Thaw's
  ``thaw.dev/model`` / ``thaw.dev/pool`` (Knative copies them onto the PA), and
  ``prometheus.io/*`` so Prometheus scrapes the engines for the forecaster's history.
- one container, vLLM's OpenAI server on port 8000, readiness on ``/health``, the pool's GPUs as
  requests and limits, the pool's node selector and tolerations (Knative feature flags
  ``kubernetes.podspec-nodeselector`` / ``-tolerations`` / ``-volumes-hostpath``, patched by
  ``manifests/``). An ``s3://`` model is asked of the node's cache agent (``POST
  /v1/models/NAME/ensure``) before vLLM starts, and loaded from the cache directory mounted
  read-only from the host at the same path the agent uses (the cache names ``org/name``
  ``org--name``, as ``thaw cache push --name`` publishes it); another model value (a Hugging Face
  id, a path in the image) goes to vLLM unchanged.
- ``VLLM_SERVER_DEV_MODE=1`` and ``--enable-sleep-mode`` when the model's warm pool is enabled
  (vLLM's ``/sleep`` and ``/wake_up``), ``timeoutSeconds`` from ``cluster.request_timeout_s`` so a
  request that waits through a cold start is not cut.
- Thaw's engine guard on every engine (:mod:`engine.vllm_site.thaw_engine_guard`): vLLM loads it
  with ``--middleware`` from the ConfigMap :data:`ENGINE_GUARD_CONFIG_MAP` (its source, which
  :func:`render_objects` writes beside the Services) mounted on the container's ``PYTHONPATH``;
  the credential is the Secret :data:`~knative.contract.ENGINE_CREDENTIAL_SECRET` mounted
  read-only (the operator creates it; Thaw's controller mounts the same one). Control requests
  without it are refused, and the readiness probe is the guard's ``/thaw/ready``, which fails
  while the engine sleeps: a sleeping pod leaves its revision's ready endpoints.
- on a shared pool (``share`` N > 1): one GPU slice per pod (``nvidia.com/gpu.shared``: the
  NVIDIA device plugin's time-slicing with ``renameByDefault``, :func:`device_plugin_config_map`),
  the node selector ``nvidia.com/gpu.replicas: N`` (set by GPU feature discovery) so pods land
  only on GPUs sliced N ways, and ``--gpu-memory-utilization`` (the model's, else 0.9 / N).
  Engines of a shared GPU need not all fit awake at once: the controller's GPU-memory arbiter
  (:mod:`knative.shared_gpu`) keeps the awake ones within the GPU, putting the others to sleep
  or stopping them.
- an ``emulator`` model runs ``thaw emulator`` from Thaw's image, without GPUs (a cluster
  smoke test).
"""

from __future__ import annotations

import hashlib
import math
import re
import shlex
from collections.abc import Callable, Iterable
from typing import Any

import yaml

from autoscaler import placement
from engine.vllm_site.thaw_engine_guard import (
    CREDENTIAL_FILE_ENV,
    READY_PATH,
    VLLM_MIDDLEWARE,
)
from kernel.errors import ConfigError
from knative.contract import (
    AUTOSCALER_CLASS,
    CLASS_ANNOTATION,
    ENGINE_CREDENTIAL_KEY,
    ENGINE_CREDENTIAL_SECRET,
    INITIAL_SCALE_ANNOTATION,
    MAX_SCALE_ANNOTATION,
    MIN_SCALE_ANNOTATION,
    MODEL_ANNOTATION,
    POOL_ANNOTATION,
)
from knative.reconcile import PROGRESS_DEADLINE_ANNOTATION
from model_cache.manifest import model_name_problem
from policy_file.schema import ClusterConfig, ModelConfig, PoolConfig, ThawConfig

API_VERSION = "serving.knative.dev/v1"
#: The engine's port inside the pod (vLLM's default; Knative routes to the one declared port).
ENGINE_PORT = 8000
#: Longest Service name: ``<name>-00001-private`` (Knative's revision Service) must be <= 63.
MAX_SERVICE_NAME = 63 - len("-00001-private")
#: Where the model-cache volume is named in the pod.
CACHE_VOLUME = "model-cache"
#: The ConfigMap that carries the engine guard's source into engine pods, and where it is mounted.
ENGINE_GUARD_CONFIG_MAP = "thaw-engine-guard"
ENGINE_GUARD_FILE = "thaw_engine_guard.py"
ENGINE_GUARD_DIR = "/opt/thaw/engine-guard"
GUARD_VOLUME = "thaw-engine-guard"
#: Where the engine credential Secret is mounted in engine pods.
CREDENTIAL_DIR = "/var/run/secrets/thaw/engine"
CREDENTIAL_VOLUME = "thaw-engine-credential"
#: The NVIDIA device plugin's time-slicing config for shared pools (GPU operator: ClusterPolicy
#: ``spec.devicePlugin.config.name``; a node picks its key with :data:`DEVICE_PLUGIN_CONFIG_LABEL`).
DEVICE_PLUGIN_CONFIG_MAP = "thaw-time-slicing"
DEVICE_PLUGIN_NAMESPACE = "gpu-operator"
DEVICE_PLUGIN_CONFIG_LABEL = "nvidia.com/device-plugin.config"
#: The key of the config for GPUs that are not shared (the ClusterPolicy's default).
UNSHARED_CONFIG_KEY = "unshared"
#: GPU feature discovery's label: how many slices each GPU of the node is cut into.
GPU_REPLICAS_LABEL = "nvidia.com/gpu.replicas"
#: The resource the device plugin time-slices.
WHOLE_GPU_RESOURCE = "nvidia.com/gpu"
#: Knative features the rendered Services need in ``config-features`` (``manifests/`` enables them).
REQUIRED_FEATURES = (
    "kubernetes.podspec-nodeselector",
    "kubernetes.podspec-tolerations",
    "kubernetes.podspec-volumes-hostpath",
)

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

#: (model, pool) -> whether the model's weights fit one replica's GPU memory on the pool.
FitCheck = Callable[[ModelConfig, PoolConfig], bool]

# Asks the node's cache agent for the model, then execs vLLM on the path it answers. Python from
# the vLLM image, stdlib only; the agent's error (OpenAI shape) is printed before exiting 1.
_ENSURE_PY = """\
import json, os, sys, urllib.error, urllib.parse, urllib.request as u
name = urllib.parse.quote(os.environ["THAW_MODEL"], safe="")
url = os.environ["THAW_CACHE_URL"].rstrip("/") + "/v1/models/" + name + "/ensure"
body = json.dumps({"s3_uri": os.environ["THAW_MODEL_URI"]}).encode()
req = u.Request(url, data=body, headers={"content-type": "application/json"})
try:
    print(json.load(u.urlopen(req, timeout=3600))["path"])
except urllib.error.HTTPError as e:
    sys.exit("model cache agent " + url + ": " + str(e.code) + " " + e.read().decode())
"""
_ENSURE_SH = (
    f'set -e\npath="$(python3 -c {shlex.quote(_ENSURE_PY)})"\n'
    'echo "thaw: model at $path"\n'
    'exec python3 -m vllm.entrypoints.openai.api_server --model "$path" "$@"\n'
)


class RenderError(ConfigError):
    """The policy cannot be rendered to Knative Services; the message names the field."""


def default_fits(model: ModelConfig, pool: PoolConfig) -> bool:
    """Whether the weights fit one replica's GPUs (:func:`autoscaler.placement.fits`); on a
    shared pool, its share of the GPU (:func:`engine_bytes`); unknown weights fit everywhere."""
    if model.weights_bytes is None:
        return True
    if pool.shared:
        return model.weights_bytes <= engine_bytes(model, pool)
    return placement.fits(
        placement.PlacementModel(name=model.name, weights_bytes=model.weights_bytes),
        placement.PlacementPool(
            name=pool.name,
            gpu_memory_bytes=pool.gpu_memory_bytes,
            cost_per_hour_usd=pool.cost_per_hour_usd,
            capacity_replicas=pool.max_replicas,
            gpus_per_replica=pool.gpus_per_replica,
        ),
    )


def engine_bytes(model: ModelConfig, pool: PoolConfig) -> int:
    """GPU memory one engine of ``model`` takes awake on a shared ``pool``: its
    ``gpu_memory_utilization`` (else 0.9 / share) x the GPU's memory."""
    return int(model.engine.utilization(pool.share) * pool.gpu_memory_bytes)


def _room(model: ModelConfig, pool: PoolConfig) -> str:
    if pool.shared:
        return (
            f"gpu_memory_utilization {model.engine.utilization(pool.share):.3g} x "
            f"gpu_memory_bytes {pool.gpu_memory_bytes} (pool share {pool.share})"
        )
    return f"{pool.gpus_per_replica} x gpu_memory_bytes {pool.gpu_memory_bytes}"


def dns_label(text: str) -> str:
    """``text`` lower-cased with every run of other characters as one ``-``, trimmed to start
    with a letter and end with a letter or digit; ``""`` when nothing is left."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower())
    s = re.sub(r"^[^a-z]+", "", s)
    return s.rstrip("-")


def service_name(model: str, pool: str) -> str:
    """``<model>-<pool>`` as a DNS-1035 label of at most :data:`MAX_SERVICE_NAME` characters;
    a model part shortened to fit ends in 6 hex digits of its name's sha256. ``""``: impossible."""
    head = dns_label(model)
    if not head:
        return ""
    room = MAX_SERVICE_NAME - len(pool) - 1
    if len(head) > room:
        digest = hashlib.sha256(model.encode()).hexdigest()[:6]
        cut = head[: room - 7].rstrip("-")
        if not cut:
            return ""
        head = f"{cut}-{digest}"
    name = f"{head}-{pool}"
    return name if _DNS_1035.match(name) else ""


def cache_name(model: str) -> str:
    """The model's name in the node cache: ``org/name`` is published as ``org--name``."""
    return model.replace("/", "--")


def pools_for(config: ThawConfig, index: int, fits: FitCheck | None = None) -> list[PoolConfig]:
    """The pools model ``config.models[index]`` gets a Service on: its ``pools`` (each must fit)
    or, when null, every pool it fits. A model that fits nowhere is a :class:`RenderError`."""
    cluster = _cluster(config)
    check = fits or default_fits
    model = config.models[index]
    where = f"models[{index}]"
    if model.pools is not None:
        chosen: list[PoolConfig] = []
        for j, name in enumerate(model.pools):
            pool = cluster.pool(name)
            if pool is None:  # ThawConfig validates this; kept for configs built by hand
                raise RenderError(f"{where}.pools[{j}] = {name!r}: not a pool in cluster.pools")
            if not check(model, pool):
                raise RenderError(
                    f"{where}.pools[{j}] = {name!r}: weights_bytes {model.weights_bytes} do not "
                    f"fit {_room(model, pool)}"
                )
            chosen.append(pool)
        return chosen
    chosen = [p for p in cluster.pools if check(model, p)]
    if not chosen:
        sizes = ", ".join(f"{p.name} {_room(model, p)}" for p in cluster.pools)
        raise RenderError(
            f"{where}.weights_bytes = {model.weights_bytes}: fits no pool in cluster.pools "
            f"({sizes}); accepted: at most the largest pool's GPU memory per replica"
        )
    return chosen


def render_services(config: ThawConfig, fits: FitCheck | None = None) -> list[dict[str, Any]]:
    """One Knative Service per (model, pool it fits), in policy order; raise
    :class:`RenderError` naming the field for anything that cannot be rendered."""
    cluster = _cluster(config)
    out: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for i, model in enumerate(config.models):
        _check_engine(model, i)
        for pool in pools_for(config, i, fits):
            name = service_name(model.name, pool.name)
            if not name:
                raise RenderError(
                    f"models[{i}].name = {model.name!r}: cannot make a Service name from it "
                    f"with pool {pool.name!r}; accepted: a name with at least one letter (a DNS "
                    "label is made of its letters, digits and '-')"
                )
            if name in seen:
                raise RenderError(
                    f"models[{i}].name = {model.name!r}: its Service on pool {pool.name!r} would "
                    f"be named {name!r}, as is {seen[name]}'s; rename one of them"
                )
            seen[name] = f"model {model.name!r} on pool {pool.name!r}"
            out.append(_service(cluster, model, pool, name))
    return out


def render_objects(
    config: ThawConfig, guard_source: str, fits: FitCheck | None = None
) -> list[dict[str, Any]]:
    """What ``thaw knative render`` applies: the engine guard's ConfigMap (``guard_source``: the
    text of :mod:`engine.vllm_site.thaw_engine_guard`), then :func:`render_services`."""
    services = render_services(config, fits)
    return [engine_guard_config_map(_cluster(config).namespace, guard_source), *services]


def engine_guard_config_map(namespace: str, guard_source: str) -> dict[str, Any]:
    """The ConfigMap engine pods mount the guard's module from."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": ENGINE_GUARD_CONFIG_MAP,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "thaw"},
        },
        "data": {ENGINE_GUARD_FILE: guard_source},
    }


def time_slicing_config(replicas: int) -> dict[str, Any]:
    """The NVIDIA device plugin's config (``version: v1``) that cuts each GPU into ``replicas``
    time slices, advertised as ``nvidia.com/gpu.shared`` (``renameByDefault``), one per pod
    (``failRequestsGreaterThanOne``: a pod asking for two slices is refused, not given two
    slices of one GPU). ``replicas`` 1: the GPU unshared."""
    config: dict[str, Any] = {"version": "v1", "flags": {"migStrategy": "none"}}
    if replicas > 1:
        config["sharing"] = {
            "timeSlicing": {
                "renameByDefault": True,
                "failRequestsGreaterThanOne": True,
                "resources": [{"name": WHOLE_GPU_RESOURCE, "replicas": replicas}],
            }
        }
    return config


def device_plugin_config_map(
    shares: Iterable[int], namespace: str = DEVICE_PLUGIN_NAMESPACE
) -> dict[str, Any]:
    """The device plugin's ConfigMap: key :data:`UNSHARED_CONFIG_KEY` and one ``shared-N`` per
    share N > 1. A node whose label :data:`DEVICE_PLUGIN_CONFIG_LABEL` is ``shared-N`` has its
    GPUs cut N ways."""
    data = {UNSHARED_CONFIG_KEY: yaml.safe_dump(time_slicing_config(1), sort_keys=False)}
    for n in sorted({n for n in shares if n > 1}):
        data[f"shared-{n}"] = yaml.safe_dump(time_slicing_config(n), sort_keys=False)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": DEVICE_PLUGIN_CONFIG_MAP,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "thaw"},
        },
        "data": data,
    }


class _Dumper(yaml.SafeDumper):
    """Safe YAML with multi-line strings as literal blocks (the engine's start script)."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """A YAML stream of ``objects`` in their key order, multi-line strings as ``|`` blocks."""
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, width=100)


# -- one Service ----------------------------------------------------------------------------


def _cluster(config: ThawConfig) -> ClusterConfig:
    if config.cluster is None:
        raise RenderError(
            "cluster: required, missing; `thaw knative render` needs a cluster: section with "
            "at least one pool (see `thaw policy schema`)"
        )
    return config.cluster


def _check_engine(model: ModelConfig, index: int) -> None:
    if (model.engine.model or "").startswith("s3://"):
        problem = model_name_problem(cache_name(model.name))
        if problem:
            raise RenderError(
                f"models[{index}].name = {model.name!r}: as a model-cache name "
                f"{cache_name(model.name)!r} it {problem}"
            )
    if model.engine.kind == "vllm" and not model.engine.model:
        raise RenderError(
            f"models[{index}].engine.model = None: the tiny Llama is built locally and cannot "
            "run on a cluster; accepted: s3://BUCKET/PREFIX (through the node cache), a Hugging "
            "Face id, or a path inside the image"
        )


def _service(
    cluster: ClusterConfig, model: ModelConfig, pool: PoolConfig, name: str
) -> dict[str, Any]:
    auto = model.autoscaling
    max_scale = min(auto.max_replicas, pool.max_replicas)
    labels = {"app.kubernetes.io/part-of": "thaw", "thaw.dev/pool": pool.name}
    annotations = {
        CLASS_ANNOTATION: AUTOSCALER_CLASS,
        MIN_SCALE_ANNOTATION: str(min(auto.min_replicas, max_scale)),
        INITIAL_SCALE_ANNOTATION: str(min(auto.initial_replicas, max_scale)),
        MAX_SCALE_ANNOTATION: str(max_scale),
        MODEL_ANNOTATION: model.name,
        POOL_ANNOTATION: pool.name,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(ENGINE_PORT),
        "prometheus.io/path": "/metrics",
    }
    if "startup_timeout_s" in model.engine.model_fields_set:
        # How long a revision may take to become ready: Knative's progress deadline, which KPA
        # also waits (plus 30 s) before it gives up activating. Unset: config-deployment's.
        annotations[PROGRESS_DEADLINE_ANNOTATION] = f"{math.ceil(model.engine.startup_timeout_s)}s"
    if model.engine.kind == "emulator":
        container = _emulator_container(cluster, model)
        volumes: list[dict[str, Any]] = []
    else:
        container, volumes = _vllm_container(cluster, model, pool)
    volumes += _guard(container, vllm=model.engine.kind != "emulator")
    pod: dict[str, Any] = {
        "timeoutSeconds": cluster.request_timeout_s,
        "containers": [container],
    }
    node_selector = dict(pool.node_selector)
    if pool.shared and model.engine.kind != "emulator":
        node_selector.setdefault(GPU_REPLICAS_LABEL, str(pool.share))
    if node_selector:
        pod["nodeSelector"] = node_selector
    if pool.tolerations:
        pod["tolerations"] = [
            t.model_dump(exclude_none=True, exclude_defaults=False) for t in pool.tolerations
        ]
    if volumes:
        pod["volumes"] = volumes
    return {
        "apiVersion": API_VERSION,
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": cluster.namespace,
            "labels": dict(labels),
            "annotations": {MODEL_ANNOTATION: model.name, POOL_ANNOTATION: pool.name},
        },
        "spec": {
            "template": {
                "metadata": {"labels": dict(labels), "annotations": annotations},
                "spec": pod,
            }
        },
    }


def _guard(container: dict[str, Any], *, vllm: bool) -> list[dict[str, Any]]:
    """Put Thaw's engine guard on ``container``; the volumes it needs. vLLM loads the module
    from the guard's ConfigMap; the emulator (Thaw's image) has it installed."""
    env = container.setdefault("env", [])
    mounts = container.setdefault("volumeMounts", [])
    env.append({"name": CREDENTIAL_FILE_ENV, "value": f"{CREDENTIAL_DIR}/{ENGINE_CREDENTIAL_KEY}"})
    mounts.append({"name": CREDENTIAL_VOLUME, "mountPath": CREDENTIAL_DIR, "readOnly": True})
    volumes: list[dict[str, Any]] = [
        {
            "name": CREDENTIAL_VOLUME,
            "secret": {
                "secretName": ENGINE_CREDENTIAL_SECRET,
                "items": [{"key": ENGINE_CREDENTIAL_KEY, "path": ENGINE_CREDENTIAL_KEY}],
            },
        }
    ]
    if vllm:  # its --middleware flag is _vllm_container's
        env.append({"name": "PYTHONPATH", "value": ENGINE_GUARD_DIR})
        mounts.append({"name": GUARD_VOLUME, "mountPath": ENGINE_GUARD_DIR, "readOnly": True})
        volumes.append({"name": GUARD_VOLUME, "configMap": {"name": ENGINE_GUARD_CONFIG_MAP}})
    return volumes


def _probe() -> dict[str, Any]:
    return {
        "httpGet": {"path": READY_PATH, "port": ENGINE_PORT},
        "periodSeconds": 2,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    }


def _vllm_container(
    cluster: ClusterConfig, model: ModelConfig, pool: PoolConfig
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    engine = model.engine
    source = engine.model or ""
    vllm_args = ["--served-model-name", model.name, "--port", str(ENGINE_PORT)]
    if pool.gpus_per_replica > 1 and "--tensor-parallel-size" not in engine.args:
        vllm_args += ["--tensor-parallel-size", str(pool.gpus_per_replica)]
    if pool.shared or engine.gpu_memory_utilization is not None:
        vllm_args += ["--gpu-memory-utilization", f"{engine.utilization(pool.share):.4g}"]
    if model.warm_pool.enabled and "--enable-sleep-mode" not in engine.args:
        vllm_args.append("--enable-sleep-mode")
    vllm_args += ["--middleware", VLLM_MIDDLEWARE]
    vllm_args += list(engine.args)
    env: dict[str, str] = {}
    if model.warm_pool.enabled:
        env["VLLM_SERVER_DEV_MODE"] = "1"
    env.update(engine.env)
    gpus = "1" if pool.shared else str(pool.gpus_per_replica)
    container: dict[str, Any] = {
        "name": "vllm",
        "image": cluster.image,
        "ports": [{"name": "http1", "containerPort": ENGINE_PORT}],
        "readinessProbe": _probe(),
        "resources": {
            "requests": {pool.resource_name: gpus},
            "limits": {pool.resource_name: gpus},
        },
    }
    volumes: list[dict[str, Any]] = []
    if source.startswith("s3://"):
        cache = cluster.model_cache
        env.update(
            {
                "THAW_CACHE_URL": cache.url,
                "THAW_MODEL": cache_name(model.name),
                "THAW_MODEL_URI": source,
                "HF_HUB_OFFLINE": "1",
            }
        )
        container["command"] = ["/bin/sh", "-c", _ENSURE_SH, "thaw-engine"]
        container["args"] = vllm_args
        container["volumeMounts"] = [
            {"name": CACHE_VOLUME, "mountPath": cache.host_path, "readOnly": True}
        ]
        volumes.append(
            {"name": CACHE_VOLUME, "hostPath": {"path": cache.host_path, "type": "Directory"}}
        )
    else:
        container["command"] = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
        container["args"] = ["--model", source, *vllm_args]
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return container, volumes


def _emulator_container(cluster: ClusterConfig, model: ModelConfig) -> dict[str, Any]:
    engine = model.engine
    args = ["emulator", "--host", "0.0.0.0", "--port", str(ENGINE_PORT)]
    args += ["--served-model-name", model.name]
    if engine.emulator is not None:
        for key, value in engine.emulator.model_dump().items():
            args += [f"--{key.replace('_', '-')}", str(value)]
    args += list(engine.args)
    container: dict[str, Any] = {
        "name": "emulator",
        "image": cluster.thaw_image,
        "command": ["thaw"],
        "args": args,
        "ports": [{"name": "http1", "containerPort": ENGINE_PORT}],
        "readinessProbe": _probe(),
    }
    if engine.env:
        container["env"] = [{"name": k, "value": v} for k, v in engine.env.items()]
    return container


__all__ = [
    "API_VERSION",
    "ENGINE_PORT",
    "MAX_SERVICE_NAME",
    "REQUIRED_FEATURES",
    "FitCheck",
    "RenderError",
    "cache_name",
    "default_fits",
    "device_plugin_config_map",
    "dns_label",
    "engine_bytes",
    "engine_guard_config_map",
    "pools_for",
    "render_objects",
    "render_services",
    "service_name",
    "time_slicing_config",
    "to_yaml",
]
