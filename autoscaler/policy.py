"""The policy types the autoscaler's core reads: how one model scales
(:class:`AutoscalingPolicy`), forecasts (:class:`ForecastConfig`) and keeps a warm pool
(:class:`WarmPoolConfig`). Pydantic v2, ``extra="forbid"``, frozen; validated once at the edge
(the policy file, :mod:`policy_file`), read by the decider, the forecaster and the warm-pool plan.

Defaults follow Knative's ``config-autoscaler`` where the concept is Knative's: stable window 60 s,
panic window 10 % of it, panic threshold 200 %, max scale-up rate 1000, max scale-down rate 2,
scale-to-zero grace 30 s, scale-down delay 0 s, activation scale 1, a concurrency target of
100 x 70 % = 70 per replica. :func:`kpa_policy` is Knative's KPA as a policy: these defaults with
the LLM signals off; the simulator's ``kpa`` baseline runs it. One deliberate difference:
Knative's ``initial-scale`` is 1, ours (``initial_replicas``) is 0, so that ``thaw up`` costs
nothing until the first request.
The LLM signals (waiting requests, KV-cache usage) have no Knative counterpart; their defaults are
ours and documented on the fields.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

#: Knative's ``container-concurrency-target-default``: requests per replica KPA aims at ...
KNATIVE_CONCURRENCY_TARGET = 100
#: ... times its ``container-concurrency-target-percentage``: KPA's target is 100 x 70 % = 70.
KNATIVE_TARGET_UTILIZATION_PCT = 70.0


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
        KNATIVE_CONCURRENCY_TARGET * KNATIVE_TARGET_UTILIZATION_PCT / 100,
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


def kpa_policy(max_replicas: int) -> AutoscalingPolicy:
    """Knative KPA's defaults as a policy: every field at its default (Knative's
    ``config-autoscaler`` where the concept is Knative's, see the module doc), the signals KPA
    does not have (waiting requests, KV-cache usage) off, at most ``max_replicas``."""
    return AutoscalingPolicy(
        max_replicas=max_replicas,
        target_waiting_per_replica=None,
        target_kv_cache_usage_ratio=None,
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
