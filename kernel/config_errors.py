"""One formatter for every config error a person reads: the policy file, the simulator's fleet
file, the emulator's file and flags, a PodAutoscaler's annotations.

Every problem is one line, ``path (line N): value V: what is accepted``:

- ``path`` is the key's place in the document (``models[0].autoscaling.stable_window_s``), or a
  name the caller gives a top-level key (``--max-num-seqs`` for a flag,
  ``annotation autoscaling.knative.dev/min-scale``); ``(line N)`` is the YAML line when the value
  came from a file;
- ``value V`` is the value as given (its ``repr``, cut at 60 characters);
- what is accepted: pydantic's message in plain words (``must be >= 6``) with the field's range
  when it has two bounds (``(accepted: [6, 3600])``), the accepted keys for an unknown key, a
  hint for ``60s`` written for a number of seconds. A cross-field check's message quotes the
  values itself and follows the path (``models[0].engine (line 3): emulator is set but ...``).

YAML is read with :func:`read_yaml`: a syntax error becomes ``YAML syntax (line L, column C):
...``, a key given twice (YAML would silently keep the last) is a problem of its own, and every
key's line is kept for the messages. It is linear in the text's size: one pass of libyaml (where
PyYAML has it) builds the node tree that gives both the data and each key's line, with the cyclic
GC held off meanwhile; a text over :data:`MAX_CONFIG_BYTES` (1 MiB, what a Kubernetes ConfigMap
holds) is refused unparsed (:func:`check_size` lets a caller refuse a file before reading it),
and nesting too deep to walk is a problem, not a crash. :func:`parse_yaml` is the whole path for
a file whose root is one pydantic model; callers with extra checks (the policy file's duplicate
model names) use the parts. :class:`ConfigFileError` carries every problem at once, one per line.

Pure: text and pydantic errors in, strings out. Imports PyYAML and pydantic, nothing of Thaw's
but the error root.
"""

from __future__ import annotations

import gc
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from kernel.errors import ConfigError

#: A key's place in a document: mapping keys and sequence indexes, outermost first.
Loc = tuple[str | int, ...]
#: The YAML line (1-based) of each key (and of each sequence item) in a document.
Lines = Mapping[Loc, int]

M = TypeVar("M", bound=BaseModel)

#: The largest config file read: a Kubernetes ConfigMap (how a cluster delivers one) holds at
#: most 1 MiB; a policy file that size holds about 2,500 models with their own blocks.
MAX_CONFIG_BYTES = 1_048_576
#: libyaml's parser when PyYAML was built with it (about 10x faster), else the pure-Python one.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigFileError(ConfigError):
    """A config file (or its flags) is invalid: every problem, one per line, under its source."""

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.source = source
        self.errors: tuple[str, ...] = tuple(errors)
        noun = "error" if len(self.errors) == 1 else "errors"
        lines = "\n".join(f"  {e}" for e in self.errors)
        super().__init__(f"{source}: {len(self.errors)} {noun}\n{lines}")


# -- the parts of a line ---------------------------------------------------------------------


def path_of(loc: Sequence[str | int]) -> str:
    """``("models", 0, "name")`` -> ``models[0].name``; the empty path is ``<top>``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<top>"


def show(value: Any, limit: int = 60) -> str:
    """A value as the user gave it (``repr``), cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def line_of(loc: Loc, lines: Lines) -> int | None:
    """The line of ``loc``, else of its nearest ancestor that has one."""
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return None


def where(loc: Loc, lines: Lines | None = None, names: Mapping[str, str] | None = None) -> str:
    """``path (line N)``; a top-level key in ``names`` is shown by that name, without a line."""
    if loc and isinstance(loc[0], str) and names and loc[0] in names:
        rest = path_of(loc[1:]) if len(loc) > 1 else ""
        return names[loc[0]] + ("" if not rest else rest if rest.startswith("[") else "." + rest)
    line = line_of(loc, lines or {})
    return path_of(loc) + (f" (line {line})" if line is not None else "")


def problem(at: str, value: Any, accepted: str) -> str:
    """One line: ``at: value V: accepted`` (``at`` from :func:`where`)."""
    return f"{at}: value {show(value)}: {accepted}"


def keys(model: type[BaseModel]) -> str:
    """The keys a model accepts, in declaration order."""
    return ", ".join(model.model_fields)


# -- pydantic errors -------------------------------------------------------------------------


def model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model that holds the fields at ``loc`` under ``root`` (None: not a model)."""
    current: Any = root
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


def accepted_range(root: type[BaseModel], loc: Sequence[str | int]) -> str | None:
    """``[low, high]``-style text for a field with both bounds, e.g. ``[6, 3600]``."""
    if not loc or not isinstance(loc[-1], str):
        return None
    owner = model_at(root, loc[:-1])
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
    return f"{'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"


def _num(x: Any) -> str:
    """A bound as written: ``1000000`` stays an integer, ``0.5`` a short float."""
    return str(x) if isinstance(x, int) else f"{x:g}"


_REWORD = (
    ("Input should be ", "must be "),
    ("String should ", "must "),
    ("Tuple should ", "must "),
    ("List should ", "must "),
    ("Dictionary should ", "must "),
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


def format_error(
    err: Mapping[str, Any],
    root: type[BaseModel],
    lines: Lines | None = None,
    names: Mapping[str, str] | None = None,
) -> str:
    """One pydantic error (an item of ``ValidationError.errors()``) under ``root`` as one line."""
    loc: Loc = tuple(
        p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))
    )
    kind = err["type"]
    at = where(loc, lines, names)
    value = err.get("input")
    if kind == "extra_forbidden":
        owner = model_at(root, loc[:-1])
        accepted = f"accepted keys: {keys(owner)}" if owner else "not an accepted key"
        return problem(at, value, f"unknown key; {accepted}")
    if kind == "missing":
        return f"{at}: required, missing"
    msg = str(err["msg"])
    for old, new in _REWORD:
        if msg.startswith(old):
            msg = new + msg[len(old) :]
            break
    for old, new in _COMPARE:
        msg = msg.replace(old, new)
    if kind in _BOUND_ERRORS:
        bounds = accepted_range(root, loc)
        if bounds:
            msg += f" (accepted: {bounds})"
    if kind in ("model_type", "dataclass_type"):
        owner = model_at(root, loc)
        if owner is not None:
            msg = f"must be a mapping with keys {keys(owner)}"
    if isinstance(value, str) and loc and str(loc[-1]).endswith("_s") and "number" in msg:
        msg += " of seconds"
        number = value.rstrip("s ")
        if _is_number(number):  # a Knative-style duration, "60s"
            msg += f" (write {number}, not {value!r})"
    if kind == "value_error" and isinstance(value, dict):
        # a cross-field check: the message quotes the values (at the top, it names the fields)
        return f"{at}: {msg}" if loc else msg
    return problem(at, value, msg)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def validation_problems(
    error: ValidationError,
    root: type[BaseModel],
    lines: Lines | None = None,
    names: Mapping[str, str] | None = None,
) -> list[str]:
    """Every error of ``error`` (raised validating ``root``) as one line each, in order."""
    return [format_error(e, root, lines, names) for e in error.errors()]


# -- YAML --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class YamlDocument:
    """A parsed YAML document: its data, each key's line, and keys given twice."""

    data: Any
    lines: Mapping[Loc, int]
    duplicates: tuple[str, ...]


def yaml_syntax(e: yaml.YAMLError) -> str:
    """A YAML syntax error as one line: ``YAML syntax (line L, column C): problem``."""
    mark = getattr(e, "problem_mark", None)
    what = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    context_mark = getattr(e, "context_mark", None)
    text = str(what)
    if context:
        text += f" ({context}"
        text += f" that starts on line {context_mark.line + 1})" if context_mark else ")"
    if mark is not None:
        return f"YAML syntax (line {mark.line + 1}, column {mark.column + 1}): {text}"
    return f"YAML syntax: {text}"


def too_large(size_bytes: int, hint: str = "") -> str:
    """The problem a file of ``size_bytes`` over :data:`MAX_CONFIG_BYTES` is (``hint``: what to
    do instead, for this kind of file)."""
    return (
        f"the file is {size_bytes:,} bytes; a config file may hold at most "
        f"{MAX_CONFIG_BYTES:,} bytes (1 MiB, what a Kubernetes ConfigMap holds)"
        + (f": {hint}" if hint else "")
    )


def check_size(
    size_bytes: int,
    source: str,
    error: Callable[[str, Sequence[str]], ConfigFileError] = ConfigFileError,
    hint: str = "",
) -> None:
    """Raise ``error(source, [line])`` for a file of ``size_bytes`` over
    :data:`MAX_CONFIG_BYTES` (a caller that can stat the file refuses it unread)."""
    if size_bytes > MAX_CONFIG_BYTES:
        raise error(source, [too_large(size_bytes, hint)])


def read_yaml(
    text: str,
    source: str,
    error: Callable[[str, Sequence[str]], ConfigFileError] = ConfigFileError,
    key: Callable[[str], str] = str,
    *,
    too_large_hint: str = "",
) -> YamlDocument:
    """Parse one YAML document; raise ``error(source, [line])`` on a syntax error, on a text
    over :data:`MAX_CONFIG_BYTES` (unparsed; ``too_large_hint`` says what to do instead) and on
    nesting too deep to walk.

    ``key`` maps each mapping key as the line map records it (e.g. ``-`` to ``_`` where flags
    and keys are spelt both ways). An empty document has data None. Linear in the text's size:
    parsed once (libyaml where available) into a node tree that gives both the data and each
    key's line.
    """
    check_size(len(text.encode("utf-8", errors="surrogatepass")), source, error, too_large_hint)
    loader = _Loader(text)
    lines: dict[Loc, int] = {}
    # The cyclic GC is held off while the tree is built: its collections, triggered by the
    # allocations themselves, made the parse superlinear (16,000 pools took 9x 4,000's time).
    collecting = gc.isenabled()
    gc.disable()
    try:
        root = loader.get_single_node()
        duplicates = tuple(_walk(root, (), lines, key)) if root is not None else ()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as e:
        raise error(source, [yaml_syntax(_pure_python_error(text, e))]) from e
    except RecursionError:
        raise error(source, ["the file nests too deeply to be a config file"]) from None
    finally:
        loader.dispose()
        if collecting:
            gc.enable()
    return YamlDocument(data, lines, duplicates)


def _pure_python_error(text: str, e: yaml.YAMLError) -> yaml.YAMLError:
    """The pure-Python parser's wording of a syntax error (clearer than libyaml's)."""
    if _Loader is yaml.SafeLoader:
        return e
    try:
        yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as pure:
        return pure
    except RecursionError:
        return e
    return e


def _walk(
    node: yaml.Node, loc: Loc, lines: dict[Loc, int], key: Callable[[str], str]
) -> Iterator[str]:
    """Record the line of every key; yield duplicate-key errors (YAML would keep the last)."""
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            name = key(str(key_node.value))
            line = key_node.start_mark.line + 1
            if name in seen:
                yield (
                    f"{path_of((*loc, name))} (line {line}): duplicate key; first given on line "
                    f"{seen[name]}, and YAML would silently keep only the last"
                )
            else:
                seen[name] = line
            lines[(*loc, name)] = line
            yield from _walk(value_node, (*loc, name), lines, key)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _walk(item, (*loc, i), lines, key)


def not_a_mapping(data: Any, root: type[BaseModel]) -> str:
    """The line for a document whose top level is not a mapping."""
    return problem("<top>", data, f"must be a mapping with keys {keys(root)}")


def parse_yaml(
    text: str,
    root: type[M],
    source: str,
    error: Callable[[str, Sequence[str]], ConfigFileError] = ConfigFileError,
    *,
    empty: str | None = None,
) -> M:
    """YAML text whose top level is one ``root`` model, validated; raise ``error(source,
    problems)`` listing every problem at once. ``empty``: the problem an empty document is
    (None: it is an empty mapping)."""
    doc = read_yaml(text, source, error)
    data = doc.data
    if data is None:
        if empty is not None:
            raise error(source, [empty])
        data = {}
    if not isinstance(data, dict):
        raise error(source, [not_a_mapping(data, root)])
    try:
        config = root.model_validate(data)
    except ValidationError as e:
        raise error(source, [*doc.duplicates, *validation_problems(e, root, doc.lines)]) from None
    if doc.duplicates:
        raise error(source, doc.duplicates)
    return config
