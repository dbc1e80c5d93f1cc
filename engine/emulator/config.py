"""The emulator's options: the engine model's fields plus what the server needs.

Owns :class:`EmulatorConfig` and :func:`load_config`, which merges built-in defaults, an optional
YAML/JSON file and command-line overrides (in that order of precedence, last wins) and validates
once, with every error in the kernel's one format (:mod:`kernel.config_errors`): the key (a
file key with its line, a flag as ``--flag``), the bad value and what is accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from engine.perf_model import EnginePerf
from kernel.config_errors import (
    ConfigFileError,
    Lines,
    check_size,
    not_a_mapping,
    problem,
    read_yaml,
    validation_problems,
)


class EmulatorConfigError(ConfigFileError):
    """The emulator's file or flags hold a bad key or value; lists every problem."""


class EmulatorConfig(EnginePerf):
    """Every option of ``thaw emulator``: :class:`EnginePerf` fields plus the server's own."""

    host: str = Field("127.0.0.1", min_length=1, description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (0: any free one).")
    served_model_name: tuple[str, ...] = Field(
        ("thaw-emulator",),
        min_length=1,
        description="Model names the server answers to; the first one labels the metrics.",
    )
    seed: int = Field(0, description="Seed of the filler text; same seed and prompt, same text.")
    default_max_tokens: int = Field(
        64,
        gt=0,
        description="Output length of a chat request that sets no max_tokens (it ends as a "
        "natural stop, finish_reason 'stop'); completions default to 16 tokens, like vLLM.",
    )
    graceful_shutdown_s: int = Field(
        5,
        ge=0,
        description="On SIGTERM, how long in-flight requests may run before they are cut.",
    )
    gpu_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="The emulated GPU this engine runs on; emulators with the same id share one "
        "GPU-memory ledger that refuses a start or a wake that would not fit. null: no GPU.",
    )
    gpu_memory_bytes: int | None = Field(
        None, gt=0, description="Memory of the emulated GPU, bytes (with gpu_id)."
    )
    gpu_memory_utilization: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Share of the GPU's memory this engine takes while awake (weights + KV "
        "cache), as vLLM's --gpu-memory-utilization; asleep it takes none.",
    )
    gpu_ledger_dir: str | None = Field(
        None,
        min_length=1,
        description="Directory of the GPU-memory ledgers (with gpu_id); null: thaw-gpu-ledger "
        "in the system's temporary directory.",
    )

    @model_validator(mode="after")
    def _gpu_id_and_memory_together(self) -> EmulatorConfig:
        if (self.gpu_id is None) != (self.gpu_memory_bytes is None):
            given, missing = (
                ("gpu_id", "gpu_memory_bytes") if self.gpu_id else ("gpu_memory_bytes", "gpu_id")
            )
            raise ValueError(f"{given} is set but {missing} is not; an emulated GPU needs both")
        return self

    @property
    def gpu_awake_bytes(self) -> int:
        """GPU memory this engine holds awake: ``gpu_memory_utilization`` x the GPU's memory."""
        return int((self.gpu_memory_bytes or 0) * self.gpu_memory_utilization)

    @field_validator("served_model_name", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("served_model_name")
    @classmethod
    def _names_not_blank(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not name.strip():
                raise ValueError("names must not be blank")
        return value

    def perf(self) -> EnginePerf:
        """The engine-model part, as the plain :class:`EnginePerf` the scheduler takes."""
        return EnginePerf(**{name: getattr(self, name) for name in EnginePerf.model_fields})


def accepted_keys() -> list[str]:
    return sorted(EmulatorConfig.model_fields)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _key(name: str) -> str:
    """A file key as a field name: ``max-num-seqs`` and ``max_num_seqs`` are the same key."""
    return name.replace("-", "_")


def _read_file(path: Path) -> tuple[dict[str, Any], Lines, tuple[str, ...]]:
    """The file's values, each key's line, and keys given twice (a file over the kernel's 1 MiB
    limit is refused unread)."""
    try:
        check_size(path.stat().st_size, str(path), EmulatorConfigError)
        text = path.read_text()
    except OSError as e:
        raise EmulatorConfigError(str(path), [f"cannot read the config file: {e}"]) from e
    doc = read_yaml(text, str(path), EmulatorConfigError, key=_key)
    if doc.data is None:
        return {}, doc.lines, doc.duplicates
    if not isinstance(doc.data, dict):
        raise EmulatorConfigError(str(path), [not_a_mapping(doc.data, EmulatorConfig)])
    return {_key(str(k)): v for k, v in doc.data.items()}, doc.lines, doc.duplicates


def load_config(
    path: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> EmulatorConfig:
    """Defaults, then the file at ``path``, then ``overrides`` (``None`` values are skipped).

    Every problem is reported at once, in the kernel's one format
    (:mod:`kernel.config_errors`): a file key as ``key (line N)``, a flag as ``--flag``."""
    values, lines, duplicates = _read_file(path) if path is not None else ({}, {}, ())
    cli = {k: v for k, v in (overrides or {}).items() if v is not None}
    source = str(path) if path is not None else "command line"
    unknown = [
        problem(_flag(k), v, f"unknown option; accepted: {', '.join(accepted_keys())}")
        for k, v in cli.items()
        if k not in EmulatorConfig.model_fields
    ]
    if unknown:
        raise EmulatorConfigError(source, unknown)
    values.update(cli)
    try:
        config = EmulatorConfig(**values)
    except ValidationError as e:
        flags = {k: _flag(k) for k in cli}
        problems = validation_problems(e, EmulatorConfig, lines, flags)
        raise EmulatorConfigError(source, [*duplicates, *problems]) from e
    if duplicates:
        raise EmulatorConfigError(source, duplicates)
    return config
