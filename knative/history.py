"""Demand history from Prometheus, per model, as numpy arrays for the forecaster.

Owns two things:

- :func:`demand_from_samples` (pure): raw range samples of vLLM's counters and gauges in, one
  :class:`DemandSeries` per model out. Counters become per-interval increments exactly, from the
  sampled values (no ``rate()``/``increase()`` extrapolation): each series (one per engine pod) is
  differenced on the step grid, a drop counts as a counter reset (the new value is the
  increment), and a series that appears after the window's first step started from zero (a new
  pod). Gauges are summed over a model's series at each step.
- :func:`feed` (pure): a series replayed into a forecaster's ``observe(t_s, count)``
  (:class:`autoscaler.forecast.Forecaster`), so a restarted controller forecasts from the
  history Prometheus kept instead of starting cold.
- :class:`PrometheusHistory` (the adapter): ``PrometheusConnect.custom_query_range`` for each
  metric over ``[start_s, end_s]`` at ``step_s``; errors wrapped in :class:`HistoryError`.

Metrics (vLLM V1 names, which ``thaw emulator`` exports too; ``model_name`` is the served name):
``vllm:request_success_total`` (requests finished: vLLM counts a request when it ends, so a
request is counted in the interval it finishes), ``vllm:prompt_tokens_total``,
``vllm:generation_tokens_total``, ``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
and Thaw's activator's ``thaw_activator_buffered_requests`` (label ``model``: demand held while a
model is at zero, which no engine sees).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kernel.errors import ThawError
from kernel.vocab import (
    THAW_ACTIVATOR_BUFFERED_REQUESTS,
    THAW_ACTIVATOR_MODEL_LABEL,
    VLLM_GENERATION_TOKENS,
    VLLM_MODEL_LABEL,
    VLLM_NUM_REQUESTS_RUNNING,
    VLLM_NUM_REQUESTS_WAITING,
    VLLM_PROMPT_TOKENS,
    VLLM_REQUEST_SUCCESS,
    total,
)

Array = npt.NDArray[np.float64]

#: The series queried (names from :mod:`kernel.vocab`; counters as Prometheus exposes them).
REQUESTS = total(VLLM_REQUEST_SUCCESS)
PROMPT_TOKENS = total(VLLM_PROMPT_TOKENS)
GENERATION_TOKENS = total(VLLM_GENERATION_TOKENS)
RUNNING = VLLM_NUM_REQUESTS_RUNNING
WAITING = VLLM_NUM_REQUESTS_WAITING
BUFFERED = THAW_ACTIVATOR_BUFFERED_REQUESTS

COUNTERS = (REQUESTS, PROMPT_TOKENS, GENERATION_TOKENS)
GAUGES = (RUNNING, WAITING, BUFFERED)
#: The label that names the model, per metric (vLLM: model_name; Thaw's activator: model).
MODEL_LABEL = {m: VLLM_MODEL_LABEL for m in (*COUNTERS, RUNNING, WAITING)} | {
    BUFFERED: THAW_ACTIVATOR_MODEL_LABEL
}
#: Most points one range query may return (Prometheus refuses more than 11,000).
MAX_POINTS = 11_000


class HistoryError(ThawError):
    """Prometheus could not be queried, or the window asked for is invalid."""


@dataclass(frozen=True)
class DemandSeries:
    """One model's demand per interval; index ``i`` is the interval ending at
    ``timestamps_s[i]`` (``step_s`` long). Gauges are their value at the interval's end."""

    model: str
    step_s: float
    timestamps_s: Array
    arrivals_per_s: Array
    prompt_tokens_per_s: Array
    generation_tokens_per_s: Array
    running: Array
    waiting: Array
    buffered: Array

    @property
    def tokens_per_s(self) -> Array:
        """Prompt plus generated tokens per second."""
        return self.prompt_tokens_per_s + self.generation_tokens_per_s

    @property
    def requests(self) -> Array:
        """Requests counted per interval (``arrivals_per_s x step_s``)."""
        return self.arrivals_per_s * self.step_s

    def __len__(self) -> int:
        return int(self.timestamps_s.shape[0])


# -- the pure core ---------------------------------------------------------------------------


def step_grid(start_s: float, end_s: float, step_s: float) -> Array:
    """The timestamps a range query evaluates at: ``start_s, start_s + step_s, ... <= end_s``."""
    if not (step_s > 0 and math.isfinite(step_s)):
        raise HistoryError(f"step_s = {step_s}, must be > 0")
    if not end_s > start_s:
        raise HistoryError(f"end_s = {end_s}, must be > start_s ({start_s})")
    n = math.floor((end_s - start_s) / step_s + 1e-9) + 1
    if n > MAX_POINTS:
        raise HistoryError(
            f"({end_s} - {start_s}) / step_s {step_s} = {n} points, must be <= {MAX_POINTS} "
            "(Prometheus' limit); use a larger step_s or a shorter window"
        )
    return start_s + step_s * np.arange(n, dtype=np.float64)


def _on_grid(values: Iterable[Sequence[Any]], grid: Array, step_s: float) -> Array:
    """A series' samples placed on ``grid`` (NaN where it has none)."""
    out = np.full(grid.shape, np.nan)
    for ts, value in values:
        i = round((float(ts) - grid[0]) / step_s)
        if 0 <= i < grid.shape[0]:
            out[i] = float(value)
    return out


def counter_increments(samples: Array) -> Array:
    """Per-step increments of one counter series on the grid (length ``len(samples) - 1``).

    A step where the series is missing adds nothing; a drop is a reset (the new value counts);
    a series that starts after the first step started from zero (its first value counts).
    """
    out = np.zeros(max(samples.shape[0] - 1, 0))
    prev = samples[0]
    for i in range(1, samples.shape[0]):
        cur = samples[i]
        if math.isnan(cur):
            continue
        if math.isnan(prev):
            out[i - 1] = cur
        elif cur >= prev:
            out[i - 1] = cur - prev
        else:
            out[i - 1] = cur
        prev = cur
    return out


def demand_from_samples(
    results: Mapping[str, Sequence[Mapping[str, Any]]],
    start_s: float,
    end_s: float,
    step_s: float,
    models: Sequence[str] | None = None,
) -> dict[str, DemandSeries]:
    """Per-model demand from range-query results (``{metric: [{"metric": labels, "values":
    [[ts, "v"], ...]}, ...]}``, Prometheus' matrix shape). ``models``: only these (each present,
    zeros where unseen); None: every model any metric names."""
    grid = step_grid(start_s, end_s, step_s)
    n = grid.shape[0] - 1
    per_model: dict[str, dict[str, Array]] = {}

    def slot(model: str, metric: str) -> Array:
        m = per_model.setdefault(model, {})
        return m.setdefault(metric, np.zeros(n))

    for metric, series_list in results.items():
        label = MODEL_LABEL.get(metric)
        if label is None:
            raise HistoryError(f"metric {metric!r}: not one of {', '.join(MODEL_LABEL)}")
        for series in series_list:
            model = series.get("metric", {}).get(label)
            if model is None or (models is not None and model not in models):
                continue
            on_grid = _on_grid(series.get("values", ()), grid, step_s)
            if metric in COUNTERS:
                slot(model, metric)[:] += counter_increments(on_grid)
            else:
                slot(model, metric)[:] += np.nan_to_num(on_grid[1:], nan=0.0)
    names = list(models) if models is not None else sorted(per_model)
    out: dict[str, DemandSeries] = {}
    for name in names:
        m = per_model.get(name, {})

        def get(metric: str, m: dict[str, Array] = m) -> Array:
            return m.get(metric, np.zeros(n))

        out[name] = DemandSeries(
            model=name,
            step_s=step_s,
            timestamps_s=grid[1:].copy(),
            arrivals_per_s=get(REQUESTS) / step_s,
            prompt_tokens_per_s=get(PROMPT_TOKENS) / step_s,
            generation_tokens_per_s=get(GENERATION_TOKENS) / step_s,
            running=get(RUNNING),
            waiting=get(WAITING),
            buffered=get(BUFFERED),
        )
    return out


def feed(
    series: DemandSeries, observe: Callable[[float, float], None], offset_s: float = 0.0
) -> float:
    """Replay ``series`` into a forecaster: ``observe(t_s, count)`` once per interval (zeros
    too, so the forecaster's history starts at the window's start), at the interval's middle
    plus ``offset_s`` (Prometheus' unix seconds moved onto the forecaster's clock). With
    ``step_s`` equal to the forecaster's ``interval_s`` its history is these counts. Returns
    the requests fed."""
    total = 0.0
    for end_s, count in zip(series.timestamps_s, series.requests, strict=True):
        observe(float(end_s) - series.step_s / 2 + offset_s, float(count))
        total += float(count)
    return total


# -- the adapter -----------------------------------------------------------------------------


class PrometheusHistory:
    """Reads demand history from one Prometheus server (``url``, e.g. http://prometheus:9090)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 30.0,
        retries: int = 2,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        from prometheus_api_client import PrometheusConnect
        from urllib3.util.retry import Retry

        if not url.startswith(("http://", "https://")):
            raise HistoryError(f"url = {url!r}: accepted: an http:// or https:// URL")
        if retries < 0:
            raise HistoryError(f"retries = {retries}, must be >= 0")
        self.url = url
        self.timeout_s = timeout_s
        retry = Retry(
            total=retries,
            connect=retries,
            backoff_factor=0.2,
            status_forcelist=(502, 503, 504),
            allowed_methods=("GET",),
        )
        self._prom = PrometheusConnect(
            url=url, headers=dict(headers or {}), retry=retry, timeout=timeout_s
        )

    def query_range(
        self, query: str, start_s: float, end_s: float, step_s: float
    ) -> list[dict[str, Any]]:
        """One PromQL range query; the matrix as Prometheus answers it."""
        from datetime import UTC, datetime

        try:
            result = self._prom.custom_query_range(
                query,
                start_time=datetime.fromtimestamp(start_s, UTC),
                end_time=datetime.fromtimestamp(end_s, UTC),
                step=f"{step_s:g}s",
                params={"timeout": f"{self.timeout_s:g}s"},
            )
        except Exception as e:  # the client raises requests' errors and its own, untyped
            raise HistoryError(f"Prometheus {self.url}: query {query!r} failed: {e}") from e
        return list(result)

    def demand(
        self,
        start_s: float,
        end_s: float,
        step_s: float,
        models: Sequence[str] | None = None,
    ) -> dict[str, DemandSeries]:
        """Per-model demand over ``[start_s, end_s]`` (unix seconds) in ``step_s`` intervals."""
        step_grid(start_s, end_s, step_s)  # validate before asking
        results = {
            metric: self.query_range(metric, start_s, end_s, step_s)
            for metric in (*COUNTERS, *GAUGES)
        }
        return demand_from_samples(results, start_s, end_s, step_s, models)


__all__ = [
    "BUFFERED",
    "COUNTERS",
    "GAUGES",
    "DemandSeries",
    "HistoryError",
    "PrometheusHistory",
    "counter_increments",
    "demand_from_samples",
    "feed",
    "step_grid",
]
