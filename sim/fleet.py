"""The simulated fleet: heterogeneous GPU pools and the models they serve.

Owns the fleet file (YAML, pydantic v2, ``extra="forbid"``): GPU pools (GPU type and memory,
count, GPUs and host RAM per node, price, local-disk / S3 / host-to-GPU bandwidths) and models
(weights, KV bytes per token, the shared :class:`~sim.engine_model.EnginePerf`, the pools they
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

:func:`parse_fleet` is pure (text in); :func:`load_fleet` is the file adapter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sim.engine_model import EnginePerf
from thaw.errors import ConfigError

Tier = Literal["wake_level1", "wake_level2", "local_disk", "remote"]
TIERS: tuple[Tier, ...] = ("wake_level1", "wake_level2", "local_disk", "remote")
#: The tiers a new engine (not a sleeper) can load from.
START_TIERS: tuple[Tier, ...] = ("local_disk", "remote")


class FleetError(ConfigError):
    """The fleet file is invalid; lists every problem with its field path and value."""

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.source = source
        self.errors = tuple(errors)
        super().__init__(f"{source}: invalid fleet file:\n" + "\n".join(f"  {e}" for e in errors))


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class FleetModel(_Frozen):
    """One model as the simulator serves it."""

    name: str = Field(..., min_length=1, pattern=r"^\S+$", description="Model name.")
    weights_bytes: int = Field(..., gt=0, description="Size of the weights, bytes.")
    kv_bytes_per_token: int = Field(..., gt=0, description="KV-cache bytes per token.")
    perf: EnginePerf = Field(
        default_factory=EnginePerf,
        description="Engine performance model (the same one `thaw emulator` runs).",
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


class Fleet(_Frozen):
    """The whole fleet file."""

    pools: tuple[Pool, ...] = Field(..., min_length=1, description="GPU pools.")
    models: tuple[FleetModel, ...] = Field(..., min_length=1, description="Models served.")

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


def cold_start_s(model: FleetModel, pool: Pool, tier: Tier) -> float:
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


def wake_tier(level: int) -> Tier:
    """The load tier of waking a sleeper of ``level``."""
    return "wake_level1" if level == 1 else "wake_level2"


def cold_start_table(fleet: Fleet) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {pool: {tier: seconds}}}`` for every model and pool it fits."""
    return {
        m.name: {
            p: {t: round(cold_start_s(m, fleet.pool(p), t), 3) for t in TIERS} for p in m.pools
        }
        for m in fleet.models
    }


def _path(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top>"


def _format(err: Mapping[str, Any]) -> str:
    where = _path(err["loc"])
    if err["type"] == "missing":
        return f"{where}: required, missing"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    msg = str(err["msg"]).replace("Input should be ", "must be ").replace("Value error, ", "")
    value = repr(err.get("input"))
    if len(value) > 60:
        value = value[:57] + "..."
    return f"{where}: value {value}: {msg}"


def parse_fleet(text: str, source: str = "<fleet>") -> Fleet:
    """Validate fleet YAML text; raise :class:`FleetError` listing every problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise FleetError(source, [f"YAML syntax: {e}"]) from e
    if not isinstance(data, dict):
        raise FleetError(source, ["<top>: must be a mapping with keys pools, models"])
    try:
        return Fleet.model_validate(data)
    except ValidationError as e:
        raise FleetError(source, [_format(err) for err in e.errors()]) from None


def load_fleet(path: str | Path) -> Fleet:
    """Read and validate a fleet file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FleetError(str(p), [f"cannot read the file: {e}"]) from e
    return parse_fleet(text, str(p))


def example_fleet_path() -> Path:
    """The bundled example fleet (H100, A100, L4)."""
    return Path(__file__).parent / "examples" / "fleet.yaml"
