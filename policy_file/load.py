"""Loading the policy file: YAML text or a file in, a validated :class:`ThawConfig` or one
:class:`PolicyError` listing *every* problem out, each as ``path (line N): value V: what is
accepted`` (the kernel's one formatter, :mod:`kernel.config_errors`); the built-in default file
and the JSON Schema.

The file is parsed once, in time linear in its size, and one over :data:`MAX_POLICY_BYTES` (1 MiB,
what a Kubernetes ConfigMap holds) is refused unread (:func:`kernel.config_errors.read_yaml`).

Given the runtime that will run it (:class:`~policy_file.support.Runtime`), a valid file that
sets a key that runtime does not honour is refused too (:func:`policy_file.support.refusals`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kernel.config_errors import (
    MAX_CONFIG_BYTES,
    ConfigFileError,
    Lines,
    check_size,
    format_error,
    not_a_mapping,
    problem,
    read_yaml,
    where,
)
from policy_file.schema import ThawConfig
from policy_file.support import Runtime, refusals

DEFAULT_CONFIG_NAME = "default_config.yaml"
#: The largest policy file accepted: the kernel's limit for every config file, what a Kubernetes
#: ConfigMap (how a cluster delivers the file) holds; about 2,500 models with their own blocks.
MAX_POLICY_BYTES = MAX_CONFIG_BYTES
#: What to do with a policy over the limit.
_TOO_LARGE_HINT = "split the models across deployments or drop repeated defaults"


class PolicyError(ConfigFileError):
    """A policy file is unreadable, invalid, or refused by the runtime that loads it; the
    message lists every problem, one per line."""


def default_config_path() -> Path:
    """The built-in policy: the tiny Llama on real vLLM, min 0, max 1."""
    return Path(__file__).with_name(DEFAULT_CONFIG_NAME)


def parse_policy(text: str, source: str = "<policy>", runtime: Runtime | None = None) -> ThawConfig:
    """Validate policy YAML text; raise :class:`PolicyError` listing every error. With
    ``runtime``, also every setting that runtime refuses. Over :data:`MAX_POLICY_BYTES` the text
    is refused unparsed."""
    doc = read_yaml(text, source, PolicyError, too_large_hint=_TOO_LARGE_HINT)
    if doc.data is None:
        raise PolicyError(source, ["the file is empty; a policy needs at least `models:`"])
    if not isinstance(doc.data, dict):
        raise PolicyError(source, [not_a_mapping(doc.data, ThawConfig)])
    problems = list(doc.duplicates)
    dups = _duplicate_names(doc.data, doc.lines)
    try:
        config = ThawConfig.model_validate(doc.data)
    except ValidationError as e:
        errors = e.errors()
        for err in errors:
            if err["loc"] == ("models",) and (
                (dups and err["type"] == "value_error")
                or (err["type"] == "too_short" and len(errors) > 1)
            ):
                continue  # said better by _duplicate_names, or a side effect of a bad item
            problems.append(format_error(err, ThawConfig, doc.lines))
        problems += dups
        raise PolicyError(source, problems) from None
    if runtime is not None:
        problems += refusals(config, runtime, doc.lines, doc.data)
    if problems:
        raise PolicyError(source, problems)
    return config


def load_policy(path: str | Path, runtime: Runtime | None = None) -> ThawConfig:
    """Read and validate a policy file; raise :class:`PolicyError` listing every error. With
    ``runtime``, also every setting that runtime refuses. A file over :data:`MAX_POLICY_BYTES`
    is refused before it is read."""
    p = Path(path)
    try:
        check_size(p.stat().st_size, str(p), PolicyError, _TOO_LARGE_HINT)
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(str(p), [f"cannot read the file: {e}"]) from e
    return parse_policy(text, str(p), runtime)


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of the policy file."""
    schema = ThawConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Thaw policy file"
    return schema


def _duplicate_names(data: Mapping[str, Any], lines: Lines) -> list[str]:
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
            at = where(("models", i, "name"), lines)
            out.append(problem(at, name, f"must be unique; models[{first[name]}].name is the same"))
        else:
            first[name] = i
    return out
