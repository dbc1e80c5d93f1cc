"""The emulator's options: the engine model's fields plus what the server needs.

Owns :class:`EmulatorConfig` and :func:`load_config`, which merges built-in defaults, an optional
YAML/JSON file and command-line overrides (in that order of precedence, last wins) and validates
once, with errors that name the key, the bad value and what is accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from engine.perf_model import EnginePerf
from kernel.errors import ConfigError


class EmulatorConfigError(ConfigError):
    """The emulator's file or flags hold a bad key or value."""


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

    @field_validator("served_model_name", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("served_model_name")
    @classmethod
    def _names_not_blank(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not name.strip():
                raise ValueError(f"served_model_name = {value!r}, names must not be blank")
        return value

    def perf(self) -> EnginePerf:
        """The engine-model part, as the plain :class:`EnginePerf` the scheduler takes."""
        return EnginePerf(**{name: getattr(self, name) for name in EnginePerf.model_fields})


def accepted_keys() -> list[str]:
    return sorted(EmulatorConfig.model_fields)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise EmulatorConfigError(f"{path}: cannot read the config file: {e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise EmulatorConfigError(f"{path}: not valid YAML or JSON: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise EmulatorConfigError(
            f"{path}: the top level is a {type(data).__name__}, must be a mapping of keys "
            f"({', '.join(accepted_keys())})"
        )
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in EmulatorConfig.model_fields:
            raise EmulatorConfigError(
                f"{path}: unknown key {key!r} (value {value!r}); accepted keys: "
                f"{', '.join(accepted_keys())}"
            )
        out[name] = value
    return out


def load_config(
    path: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> EmulatorConfig:
    """Defaults, then the file at ``path``, then ``overrides`` (``None`` values are skipped)."""
    values = _read_file(path) if path is not None else {}
    cli = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key in cli:
        if key not in EmulatorConfig.model_fields:
            raise EmulatorConfigError(
                f"unknown option {key!r}; accepted: {', '.join(accepted_keys())}"
            )
    values.update(cli)
    try:
        return EmulatorConfig(**values)
    except ValidationError as e:
        raise EmulatorConfigError(_describe(e, path, set(cli))) from e


def _describe(error: ValidationError, path: Path | None, from_cli: set[str]) -> str:
    lines = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"])
        msg = item["msg"].removeprefix("Value error, ")
        if not loc:  # a cross-field check: its message names the fields and values
            lines.append(msg)
            continue
        top = str(item["loc"][0])
        where = (
            f"--{top.replace('_', '-')}"
            if top in from_cli
            else (f"{path}: {loc}" if path is not None else loc)
        )
        lines.append(f"{where} = {item.get('input')!r}: {msg}")
    return "; ".join(lines)
