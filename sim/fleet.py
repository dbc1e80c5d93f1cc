"""The simulated fleet: heterogeneous GPU pools and the models they serve.

Owns the fleet file (YAML, pydantic v2, ``extra="forbid"``): GPU pools (GPU type and memory,
count, GPUs and host RAM per node, price, local-disk / S3 / host-to-GPU bandwidths) and models
(weights, KV bytes per token, the shared :class:`~engine.perf_model.EnginePerf`, the pools they
fit, engine start and wake overheads). Cold-start seconds by load tier are derived here, never
typed in:

- ``wake_level1``: weights / host_to_gpu_bytes_per_s + wake_overhead_s (a sleeper whose weights
  were offloaded to host RAM wakes);
- ``wake_level2``: weights / local_disk_bytes_per_s + wake_overhead_s (a sleeper whose weights
  were discarded reloads them; the engine process is still up);
- ``local_disk``: engine_start_s + weights / local_disk_bytes_per_s (a new engine, weights in the
  node's model cache);
- ``remote``: engine_start_s + weights / s3_bytes_per_s (a new engine, weights from S3).

Going to sleep at level 1 copies the weights out (weights / host_to_gpu_bytes_per_s); level 2
discards them (no time). The engine model's own ``sleep_*`` / ``wake_*`` fields are the
emulator's typed-in figures and are not used here.

SLOs (:class:`Slo`): per model class (a fleet model; every trace model that runs as it), else the
fleet's: a TTFT target sized to the prompt (base + budget per prompt token) and an optional time
per output token; the report counts a request as meeting it or not.

Engine speed per pool (:meth:`Fleet.engine_perf`): a model's ``perf`` figures were measured on the
GPU type of its ``perf_pool`` (default: its first pool). Each pool's :class:`GpuSpeed` indexes its
GPU type: on a pool, prefill runs ``speed.prefill_ratio / perf_pool's`` times as fast and a decode
step takes ``perf_pool's speed.decode_ratio / this pool's`` times as long; with
``speed.memory_utilization_ratio`` set, the KV capacity is derived from the pool's GPU memory:
``(gpu_memory_bytes x memory_utilization_ratio - weights_bytes) / kv_bytes_per_token``.

:func:`parse_fleet` is pure (text in); :func:`load_fleet` is the file adapter.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.perf_model import EnginePerf
from kernel.config_errors import ConfigFileError, check_size, parse_yaml
from kernel.vocab import FINE_LOAD_TIERS, FineLoadTier


class FleetError(ConfigFileError):
    """The fleet file is unreadable or invalid; lists every problem with its field path, line
    and value."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GpuSpeed(_Frozen):
    """How fast a GPU type runs an engine, as indexes against the other pools' GPU types."""

    prefill_ratio: float = Field(
        1.0,
        gt=0,
        description="Prefill speed index (compute-bound: e.g. relative dense bf16 throughput). "
        "A model's prefill_tokens_per_s on this pool = its perf figure x this / the same index "
        "of its perf_pool.",
    )
    decode_ratio: float = Field(
        1.0,
        gt=0,
        description="Decode speed index (memory-bound: e.g. relative memory bandwidth). A "
        "model's decode_base_s and decode_per_seq_s on this pool = its perf figures x the same "
        "index of its perf_pool / this.",
    )
    memory_utilization_ratio: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Share of GPU memory an engine takes (vLLM's gpu_memory_utilization). Set: "
        "a model's KV capacity on this pool is derived, (gpu_memory_bytes x this - "
        "weights_bytes) / kv_bytes_per_token tokens; unset: its perf.kv_capacity_tokens.",
    )


class Pool(_Frozen):
    """One pool of identical GPUs (one replica uses ``gpus_per_replica`` of them)."""

    name: str = Field(..., min_length=1, pattern=r"^\S+$", description="Pool name, e.g. h100.")
    gpu_type: str = Field(..., min_length=1, description="GPU model, e.g. NVIDIA H100 80GB SXM.")
    gpu_memory_bytes: int = Field(..., gt=0, description="Memory of one GPU, bytes.")
    count: int = Field(..., ge=0, description="GPUs in the pool (the most replicas it can host).")
    gpus_per_node: int = Field(
        8,
        ge=1,
        description="GPUs per node; the pool has ceil(count / gpus_per_node) nodes, each with "
        "host_ram_bytes.",
    )
    cost_per_hour_usd: float = Field(
        ..., ge=0, description="Price of one GPU for one hour, US dollars."
    )
    host_ram_bytes: int = Field(
        ...,
        ge=0,
        description="Host RAM per node available for sleeping (level-1) engines, bytes; a "
        "level-1 sleeper holds its weights_bytes of it.",
    )
    local_disk_bytes_per_s: float = Field(
        ..., gt=0, description="Read bandwidth of the node's local disk (model cache), bytes/s."
    )
    s3_bytes_per_s: float = Field(..., gt=0, description="Download bandwidth from S3, bytes/s.")
    host_to_gpu_bytes_per_s: float = Field(
        ..., gt=0, description="Host RAM to GPU copy bandwidth (wake from sleep level 1), bytes/s."
    )
    speed: GpuSpeed = Field(
        default_factory=GpuSpeed,
        description="Engine speed of this GPU type against the others (default: the same as "
        "every model's perf_pool) and how much of its memory the engine takes.",
    )
    share: int = Field(
        1,
        ge=1,
        le=64,
        description="Engines per GPU, as the policy's cluster.pools[].share (the NVIDIA device "
        "plugin's time-slicing). 1: an engine holds a whole GPU, asleep too. The simulator "
        "does not price shared pools yet: only 1 is accepted.",
    )

    @field_validator("share")
    @classmethod
    def _share_not_priced_yet(cls, value: int) -> int:
        if value != 1:
            raise ValueError(
                "thaw sim does not price shared pools yet (engines per GPU, the GPU-memory "
                "arbiter's sleeps and wakes); accepted: 1"
            )
        return value


class Slo(_Frozen):
    """A latency target per request, sized to its prompt: time to first token within
    ``ttft_base_s + ttft_per_prompt_token_s x prompt tokens`` (a long prompt's prefill takes
    longer on any GPU), and, when set, each further token within ``tpot_s`` on average."""

    ttft_base_s: float = Field(
        1.0,
        gt=0,
        description="TTFT target of an empty prompt, seconds: queueing, scheduling, the first "
        "decode step.",
    )
    ttft_per_prompt_token_s: float = Field(
        0.0002,
        ge=0,
        description="TTFT budget added per prompt token, seconds (0.0002: 5,000 prompt tokens a "
        "second, a third of an 8B model's prefill rate on an A100, so a 15,000-token prompt "
        "gets 4 s). 0: the same target for every prompt.",
    )
    tpot_s: float | None = Field(
        None,
        gt=0,
        description="Time per output token after the first, seconds, averaged over the "
        "request ((e2e - ttft) / (output tokens - 1)); null: not part of the SLO.",
    )

    def ttft_target_s(self, prompt_tokens: int) -> float:
        """The TTFT target of a request with ``prompt_tokens`` prompt tokens."""
        return self.ttft_base_s + self.ttft_per_prompt_token_s * prompt_tokens


class FleetModel(_Frozen):
    """One model as the simulator serves it."""

    name: str = Field(..., min_length=1, pattern=r"^\S+$", description="Model name.")
    weights_bytes: int = Field(..., gt=0, description="Size of the weights, bytes.")
    kv_bytes_per_token: int = Field(..., gt=0, description="KV-cache bytes per token.")
    perf: EnginePerf = Field(
        default_factory=EnginePerf,
        description="Engine performance model (the same one `thaw emulator` runs), as measured "
        "on the GPU type of perf_pool; other pools scale it by their speed.",
    )
    perf_pool: str | None = Field(
        None,
        min_length=1,
        description="The pool whose GPU type perf was measured on (default: the model's first "
        "pool).",
    )
    pools: tuple[str, ...] = Field(
        ...,
        min_length=1,
        description="Pools the model fits on, in order of preference (the first with a free "
        "GPU gets a new replica).",
    )
    engine_start_s: float = Field(
        ..., ge=0, description="Engine process start overhead before loading weights, seconds."
    )
    wake_overhead_s: float = Field(
        0.5,
        ge=0,
        description="A sleeping engine's resume overhead once its weights are back on the GPU "
        "(KV cache re-allocated, scheduler resumed), seconds.",
    )
    slo: Slo | None = Field(
        None,
        description="This model class's SLO (every trace model that runs as this model); null: "
        "the fleet's slo.",
    )


class Fleet(_Frozen):
    """The whole fleet file."""

    pools: tuple[Pool, ...] = Field(..., min_length=1, description="GPU pools.")
    models: tuple[FleetModel, ...] = Field(..., min_length=1, description="Models served.")
    slo: Slo = Field(
        default_factory=Slo,
        description="The SLO of every model without its own: TTFT within a base plus a budget "
        "per prompt token, optionally a time per output token.",
    )

    @model_validator(mode="after")
    def _check_refs(self) -> Fleet:
        problems: list[str] = []
        names = [p.name for p in self.pools]
        for i, n in enumerate(names):
            if n in names[:i]:
                problems.append(f"pools[{i}].name {n!r} repeats an earlier pool")
        mnames = [m.name for m in self.models]
        for i, n in enumerate(mnames):
            if n in mnames[:i]:
                problems.append(f"models[{i}].name {n!r} repeats an earlier model")
        for i, m in enumerate(self.models):
            if m.perf_pool is not None and m.perf_pool not in names:
                problems.append(
                    f"models[{i}].perf_pool = {m.perf_pool!r}: must be one of {', '.join(names)}"
                )
            for j, p in enumerate(m.pools):
                if p not in names:
                    problems.append(
                        f"models[{i}].pools[{j}] = {p!r}: must be one of {', '.join(names)}"
                    )
                elif self.pool(p).gpu_memory_bytes < m.weights_bytes:
                    problems.append(
                        f"models[{i}].pools[{j}] = {p!r}: weights_bytes {m.weights_bytes} do not "
                        f"fit in gpu_memory_bytes {self.pool(p).gpu_memory_bytes}"
                    )
                else:
                    pool = self.pool(p)
                    kv = derived_kv_tokens(m, pool)
                    if kv is not None and kv < m.perf.max_model_len_tokens:
                        problems.append(
                            f"models[{i}].pools[{j}] = {p!r}: KV capacity {kv} tokens = "
                            f"(gpu_memory_bytes {pool.gpu_memory_bytes} x "
                            f"speed.memory_utilization_ratio "
                            f"{pool.speed.memory_utilization_ratio:g} - weights_bytes "
                            f"{m.weights_bytes}) / kv_bytes_per_token {m.kv_bytes_per_token}, "
                            f"must be >= perf.max_model_len_tokens ({m.perf.max_model_len_tokens})"
                        )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def pool_nodes(self, name: str) -> int:
        """Nodes in pool ``name``: ceil(count / gpus_per_node)."""
        p = self.pool(name)
        return -(-p.count // p.gpus_per_node)

    def pool(self, name: str) -> Pool:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    def model(self, name: str) -> FleetModel:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def slo_of(self, model_name: str) -> Slo:
        """The SLO of fleet model ``model_name``: its own, else the fleet's."""
        own = self.model(model_name).slo
        return own if own is not None else self.slo

    def engine_perf(self, model: FleetModel, pool_name: str) -> EnginePerf:
        """``model``'s engine on pool ``pool_name``: its perf scaled by the pool's GPU speed
        against its perf_pool's, with the KV capacity the pool's memory leaves (see the module
        doc). Unchanged figures stay bit for bit what the fleet file says."""
        pool = self.pool(pool_name)
        ref = self.pool(model.perf_pool or model.pools[0]).speed
        speed, perf = pool.speed, model.perf
        update: dict[str, float | int] = {}
        if speed.prefill_ratio != ref.prefill_ratio:
            update["prefill_tokens_per_s"] = (
                perf.prefill_tokens_per_s * speed.prefill_ratio / ref.prefill_ratio
            )
        if speed.decode_ratio != ref.decode_ratio:
            slower = ref.decode_ratio / speed.decode_ratio
            update["decode_base_s"] = perf.decode_base_s * slower
            update["decode_per_seq_s"] = perf.decode_per_seq_s * slower
        kv = derived_kv_tokens(model, pool)
        if kv is not None and kv != perf.kv_capacity_tokens:
            update["kv_capacity_tokens"] = kv
        return perf.model_copy(update=update) if update else perf


def derived_kv_tokens(model: FleetModel, pool: Pool) -> int | None:
    """KV tokens ``model`` gets on ``pool`` when its speed sets a memory share; else None."""
    share = pool.speed.memory_utilization_ratio
    if share is None:
        return None
    free = int(pool.gpu_memory_bytes * share) - model.weights_bytes
    return max(free, 0) // model.kv_bytes_per_token


def cold_start_s(model: FleetModel, pool: Pool, tier: FineLoadTier) -> float:
    """Seconds from the decision to a ready replica of ``model`` on ``pool`` from ``tier``."""
    w = model.weights_bytes
    if tier == "wake_level1":
        return w / pool.host_to_gpu_bytes_per_s + model.wake_overhead_s
    if tier == "wake_level2":
        return w / pool.local_disk_bytes_per_s + model.wake_overhead_s
    if tier == "local_disk":
        return model.engine_start_s + w / pool.local_disk_bytes_per_s
    return model.engine_start_s + w / pool.s3_bytes_per_s


def sleep_s(model: FleetModel, pool: Pool, level: int) -> float:
    """Seconds to put ``model`` to sleep on ``pool``: level 1 copies weights out, 2 drops them."""
    return model.weights_bytes / pool.host_to_gpu_bytes_per_s if level == 1 else 0.0


def cold_start_table(fleet: Fleet) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {pool: {tier: seconds}}}`` for every model and pool it fits."""
    return {
        m.name: {
            p: {t: round(cold_start_s(m, fleet.pool(p), t), 3) for t in FINE_LOAD_TIERS}
            for p in m.pools
        }
        for m in fleet.models
    }


def parse_fleet(text: str, source: str = "<fleet>") -> Fleet:
    """Validate fleet YAML text; raise :class:`FleetError` listing every problem, each as
    ``path (line N): value V: what is accepted`` (:mod:`kernel.config_errors`)."""
    empty = "the file is empty; a fleet needs `pools:` and `models:`"
    return parse_yaml(text, Fleet, source, FleetError, empty=empty)


def load_fleet(path: str | Path) -> Fleet:
    """Read and validate a fleet file (one over the kernel's 1 MiB limit is refused unread)."""
    p = Path(path)
    try:
        check_size(p.stat().st_size, str(p), FleetError)
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FleetError(str(p), [f"cannot read the file: {e}"]) from e
    return parse_fleet(text, str(p))


def example_fleet_path() -> Path:
    """The bundled example fleet (H100, A100, L4)."""
    return Path(__file__).parent / "examples" / "fleet.yaml"
