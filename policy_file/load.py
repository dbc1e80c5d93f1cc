"""Loading the policy file: YAML text or a file in, a validated :class:`ThawConfig` or one
:class:`PolicyError` listing *every* problem out, each as ``path: value V: what is accepted``,
with the YAML line where the file has one; the built-in default file and the JSON Schema."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kernel.errors import ConfigError
from policy_file.schema import ThawConfig

DEFAULT_CONFIG_NAME = "default_config.yaml"


class PolicyError(ConfigError):
    """A policy file is unreadable or invalid; the message lists every error, one per line."""

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.source = source
        self.errors: tuple[str, ...] = tuple(errors)
        noun = "error" if len(self.errors) == 1 else "errors"
        lines = "\n".join(f"  {e}" for e in self.errors)
        super().__init__(f"{source}: {len(self.errors)} {noun}\n{lines}")


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
