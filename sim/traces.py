"""Request traces for the simulator: what arrives, when, how big, for which model.

Owns :class:`Request`, the loaders of the Azure LLM inference trace CSV
(``TIMESTAMP,ContextTokens,GeneratedTokens``) and of the Mooncake JSONL trace (``timestamp`` in
ms, ``input_length``, ``output_length``), the synthetic generators (Poisson, on/off bursty,
diurnal; numpy ``Generator`` seeded, so the same seed gives the same trace) and
:func:`spread_zipf`, which spreads one trace over many models with Zipf popularity (scale to zero
pays off on a long tail of rarely used models).

Parsing is pure (:func:`parse_azure_csv`, :func:`parse_mooncake_jsonl` take text); the ``load_*``
functions are the thin file adapters. :func:`detect_format` tells the format from the file's
first line (a JSON object: Mooncake; the ``TIMESTAMP,...`` header: Azure), else its extension
(``.jsonl`` / ``.json`` / ``.ndjson``: Mooncake; ``.csv``: Azure). A bad row raises
:class:`TraceError` naming the file, the line number, the field and the value (at most 60
characters of it), and, from :func:`load_trace`, how the format was chosen and the flag that
overrides it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np

from kernel.errors import ThawError

TraceFormat = Literal["azure", "mooncake"]
DEFAULT_MODEL = "model"


class TraceError(ThawError):
    """A trace file or row is malformed; the message names file, line, field and value."""


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a trace. ``arrival_s`` is seconds from the trace's start."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    model: str


# -- Azure CSV -------------------------------------------------------------------------------

_AZURE_HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def _azure_time_s(text: str) -> float:
    """``2023-11-16 18:15:46.6805900`` -> POSIX-like seconds (naive, any fraction length)."""
    head, _, frac = text.strip().partition(".")
    base = _naive_seconds(head)
    if frac:
        if not frac.isdigit():
            raise ValueError(f"fraction {frac!r} is not digits")
        return base + int(frac) / float(10 ** len(frac))
    return base


def _naive_seconds(head: str) -> float:
    dt = datetime.fromisoformat(head)
    if dt.tzinfo is not None:
        raise ValueError("time zones are not accepted")
    # Seconds since an arbitrary epoch without consulting the local time zone.
    return float((dt - datetime(1970, 1, 1)).total_seconds())


def _clip(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (an error quotes the value, not the file)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int_field(source: str, line: int, field: str, value: str) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise TraceError(
            f"{source}:{line}: {field} = {value!r}: must be a non-negative integer"
        ) from None
    if n < 0:
        raise TraceError(f"{source}:{line}: {field} = {value!r}: must be a non-negative integer")
    return n


def parse_azure_csv(
    text: str, source: str = "<azure>", model: str = DEFAULT_MODEL
) -> tuple[Request, ...]:
    """Parse Azure trace CSV text; arrivals are seconds from the first row, sorted."""
    lines = text.splitlines()
    if not lines:
        raise TraceError(f"{source}: empty file; expected the header {','.join(_AZURE_HEADER)}")
    header = tuple(h.strip() for h in lines[0].split(","))
    if header != _AZURE_HEADER:
        raise TraceError(f"{source}:1: header {_clip(lines[0])}: must be {','.join(_AZURE_HEADER)}")
    rows: list[tuple[float, int, int]] = []
    for i, row in enumerate(lines[1:], start=2):
        if not row.strip():
            continue
        parts = row.split(",")
        if len(parts) != 3:
            raise TraceError(
                f"{source}:{i}: row {_clip(row)}: must have 3 fields "
                f"({','.join(_AZURE_HEADER)}), has {len(parts)}"
            )
        try:
            t = _azure_time_s(parts[0])
        except ValueError:
            raise TraceError(
                f"{source}:{i}: TIMESTAMP = {parts[0]!r}: must be like 2023-11-16 18:15:46.6805900"
            ) from None
        rows.append(
            (
                t,
                _int_field(source, i, "ContextTokens", parts[1]),
                _int_field(source, i, "GeneratedTokens", parts[2]),
            )
        )
    if not rows:
        raise TraceError(f"{source}: no rows after the header")
    t0 = rows[0][0]
    reqs = [Request(max(t - t0, 0.0), p, o, model) for t, p, o in rows]
    reqs.sort(key=lambda r: r.arrival_s)
    return tuple(reqs)


# -- Mooncake JSONL --------------------------------------------------------------------------


def parse_mooncake_jsonl(
    text: str, source: str = "<mooncake>", model: str = DEFAULT_MODEL
) -> tuple[Request, ...]:
    """Parse Mooncake JSONL text (``timestamp`` ms, ``input_length``, ``output_length``)."""
    rows: list[tuple[float, int, int]] = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TraceError(f"{source}:{i}: not JSON ({e.msg}): {_clip(line)}") from None
        if not isinstance(obj, dict):
            raise TraceError(f"{source}:{i}: value {_clip(line)}: must be a JSON object")
        values: list[float] = []
        for key in ("timestamp", "input_length", "output_length"):
            if key not in obj:
                raise TraceError(f"{source}:{i}: {key}: required, missing")
            v = obj[key]
            ok = isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
            if key != "timestamp":
                ok = ok and float(v).is_integer()
            if not ok or not math.isfinite(float(v)):
                kind = (
                    "a non-negative number of ms"
                    if key == "timestamp"
                    else "a non-negative integer"
                )
                raise TraceError(f"{source}:{i}: {key} = {_clip(v)}: must be {kind}")
            values.append(float(v))
        rows.append((values[0] / 1000.0, int(values[1]), int(values[2])))
    if not rows:
        raise TraceError(f"{source}: no rows")
    t0 = rows[0][0]
    reqs = [Request(max(t - t0, 0.0), p, o, model) for t, p, o in rows]
    reqs.sort(key=lambda r: r.arrival_s)
    return tuple(reqs)


_FORMAT_NAMES: dict[TraceFormat, str] = {
    "azure": "an Azure CSV trace (TIMESTAMP,ContextTokens,GeneratedTokens)",
    "mooncake": "a Mooncake JSONL trace (timestamp ms, input_length, output_length)",
}
_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


def detect_format(name: str, text: str) -> tuple[TraceFormat, str]:
    """The trace format of a file called ``name`` holding ``text``, and how it was told.

    The first non-empty line decides when it can (a JSON object, or the Azure header); else the
    extension. Raises :class:`TraceError` (naming ``--trace-format``) when neither tells.
    """
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if first.startswith("{"):
        return "mooncake", "its first line is a JSON object"
    if first.split(",")[0].strip() == _AZURE_HEADER[0]:
        return "azure", "its header"
    suffix = Path(name).suffix.lower()
    if suffix in _JSON_SUFFIXES:
        return "mooncake", f"its extension {suffix}"
    if suffix == ".csv":
        return "azure", "its extension .csv"
    raise TraceError(
        f"{name}: cannot tell the trace format: the first line is neither the Azure header "
        f"({','.join(_AZURE_HEADER)}) nor a JSON object, and the extension {suffix or '(none)'} "
        "is neither .csv nor .jsonl; give --trace-format azure or --trace-format mooncake"
    )


def load_trace(path: str | Path, fmt: TraceFormat | None = None) -> tuple[Request, ...]:
    """Read a trace file (the adapter around the parsers); ``fmt`` None: detect it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TraceError(f"{p}: cannot read the trace ({e}); check --trace") from e
    how = "as given by --trace-format"
    if fmt is None:
        fmt, why = detect_format(str(p), text)
        how = f"detected from {why}"
    try:
        if fmt == "azure":
            return parse_azure_csv(text, str(p))
        return parse_mooncake_jsonl(text, str(p))
    except TraceError as e:
        other: TraceFormat = "mooncake" if fmt == "azure" else "azure"
        raise TraceError(
            f"{e}\n  (read as {_FORMAT_NAMES[fmt]}, {how}; --trace-format {other} reads it as "
            f"{_FORMAT_NAMES[other]})"
        ) from None


def load_azure_csv(path: str | Path) -> tuple[Request, ...]:
    return load_trace(path, "azure")


def load_mooncake_jsonl(path: str | Path) -> tuple[Request, ...]:
    return load_trace(path, "mooncake")


# -- synthetic -------------------------------------------------------------------------------


def _sizes(
    rng: np.random.Generator, n: int, mean_prompt: int, mean_output: int
) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and output lengths: geometric around the means, at least 1 token."""
    p = rng.geometric(1.0 / max(mean_prompt, 1), size=n)
    o = rng.geometric(1.0 / max(mean_output, 1), size=n)
    return p, o


def _build(
    times: np.ndarray, rng: np.random.Generator, mean_prompt: int, mean_output: int, model: str
) -> tuple[Request, ...]:
    p, o = _sizes(rng, len(times), mean_prompt, mean_output)
    return tuple(
        Request(float(t), int(a), int(b), model)
        for t, a, b in zip(times.tolist(), p.tolist(), o.tolist(), strict=True)
    )


def poisson(
    rate_per_s: float,
    duration_s: float,
    seed: int,
    mean_prompt_tokens: int = 512,
    mean_output_tokens: int = 128,
    model: str = DEFAULT_MODEL,
) -> tuple[Request, ...]:
    """A Poisson process of ``rate_per_s`` over ``duration_s``."""
    rng = np.random.default_rng(seed)
    n = int(rng.poisson(rate_per_s * duration_s))
    times = np.sort(rng.uniform(0.0, duration_s, size=n))
    return _build(times, rng, mean_prompt_tokens, mean_output_tokens, model)


def bursty(
    on_rate_per_s: float,
    on_s: float,
    off_s: float,
    duration_s: float,
    seed: int,
    mean_prompt_tokens: int = 512,
    mean_output_tokens: int = 128,
    model: str = DEFAULT_MODEL,
) -> tuple[Request, ...]:
    """On/off bursts: Poisson at ``on_rate_per_s`` for ``on_s``, silence for ``off_s``, repeat."""
    rng = np.random.default_rng(seed)
    chunks: list[np.ndarray] = []
    start = 0.0
    while start < duration_s:
        end = min(start + on_s, duration_s)
        n = int(rng.poisson(on_rate_per_s * (end - start)))
        chunks.append(np.sort(rng.uniform(start, end, size=n)))
        start += on_s + off_s
    times = np.concatenate(chunks) if chunks else np.zeros(0)
    return _build(times, rng, mean_prompt_tokens, mean_output_tokens, model)


def diurnal(
    mean_rate_per_s: float,
    period_s: float,
    amplitude_ratio: float,
    duration_s: float,
    seed: int,
    mean_prompt_tokens: int = 512,
    mean_output_tokens: int = 128,
    model: str = DEFAULT_MODEL,
) -> tuple[Request, ...]:
    """Rate ``mean x (1 + amplitude x sin(2 pi t / period))`` by thinning a Poisson process."""
    if not 0 <= amplitude_ratio <= 1:
        raise ValueError(f"amplitude_ratio = {amplitude_ratio}, must be in [0, 1]")
    rng = np.random.default_rng(seed)
    peak = mean_rate_per_s * (1 + amplitude_ratio)
    n = int(rng.poisson(peak * duration_s))
    times = np.sort(rng.uniform(0.0, duration_s, size=n))
    rate = mean_rate_per_s * (1 + amplitude_ratio * np.sin(2 * np.pi * times / period_s))
    keep = rng.uniform(0.0, 1.0, size=n) < rate / peak
    return _build(times[keep], rng, mean_prompt_tokens, mean_output_tokens, model)


def model_names(n_models: int) -> tuple[str, ...]:
    """``model-00`` .. ``model-{n-1}``, most popular first under :func:`spread_zipf`."""
    width = max(2, len(str(n_models - 1)))
    return tuple(f"model-{i:0{width}d}" for i in range(n_models))


def spread_zipf(
    requests: Sequence[Request], n_models: int, s: float, seed: int
) -> tuple[Request, ...]:
    """Give each request a model drawn with Zipf popularity ``1 / rank**s`` over ``n_models``."""
    if n_models < 1:
        raise ValueError(f"n_models = {n_models}, must be >= 1")
    if s < 0:
        raise ValueError(f"s = {s}, must be >= 0")
    names = model_names(n_models)
    weights = 1.0 / np.arange(1, n_models + 1, dtype=float) ** s
    rng = np.random.default_rng(seed)
    picks = rng.choice(n_models, size=len(requests), p=weights / weights.sum())
    return tuple(replace(r, model=names[k]) for r, k in zip(requests, picks.tolist(), strict=True))


def clip(requests: Iterable[Request], duration_s: float) -> tuple[Request, ...]:
    """The requests that arrive before ``duration_s``."""
    return tuple(r for r in requests if r.arrival_s < duration_s)
