"""The forecaster: methods, history and confidence gates, Little's law, and the decider's floor."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.decider import DeciderState, ModelObservation, ReplicaObservation, decide
from autoscaler.forecast import (
    Forecast,
    Forecaster,
    ReplicaForecaster,
    pinball_loss,
    replicas_for,
)
from autoscaler.policy import AutoscalingPolicy, ForecastConfig
from policy_file.load import PolicyError, parse_policy

IV = 10.0  # interval_s


def feed(f: Forecaster | ReplicaForecaster, counts: list[int], start: int = 0) -> None:
    """``counts[i]`` arrivals spread inside interval ``start + i``."""
    for i, c in enumerate(counts):
        for j in range(c):
            f.observe((start + i) * IV + (j + 0.5) * IV / (c + 1))


def periodic(n: int, period: int = 12, high: int = 20) -> list[int]:
    return [high if (i % period) < period // 2 else 0 for i in range(n)]


def test_no_forecast_before_min_history() -> None:
    f = Forecaster(interval_s=IV, min_history=10, method="ewma", season_s=0)
    feed(f, [3] * 9)
    assert f.forecast(9 * IV, 30.0) is None  # 9 complete intervals
    feed(f, [3], start=9)
    fc = f.forecast(10 * IV, 30.0)
    assert fc is not None and fc.method == "ewma"


def test_constant_demand_is_forecast_exactly() -> None:
    for method in ("seasonal_naive", "ewma", "ridge"):
        f = Forecaster(interval_s=IV, min_history=30, method=method, season_s=0)
        feed(f, [5] * 60)
        fc = f.forecast(60 * IV, 33.0)
        assert fc is not None
        assert fc.value == pytest.approx(5.0, abs=1e-6), method
        # the target is the interval holding now + 33 s: 3 intervals after the last complete
        assert fc.target_start_s == 63 * IV


@pytest.mark.parametrize("method", ["seasonal_naive", "ridge", "gbr"])
def test_seasonal_methods_see_the_ramp_coming(method: str) -> None:
    """Four seasons of on/off demand; at the end of an off stretch the on stretch is forecast."""
    f = Forecaster(interval_s=IV, season_s=12 * IV, min_history=30, method=method, quantile=0.5)
    feed(f, periodic(54))  # intervals 48..53 'on', then 54..59 'off' (nothing fed), 60 'on'
    fc = f.forecast(58 * IV, 15.0)  # complete: 0..57; target interval 59: off
    assert fc is not None and fc.value == pytest.approx(0.0, abs=2.0), method
    feed(f, [0, 0], start=58)
    fc = f.forecast(60 * IV, 1.0)  # target interval 60: on
    assert fc is not None and fc.value > 15.0, method


def test_ewma_without_season_cannot_see_the_ramp() -> None:
    """Where prediction does not help: no season, no warning before demand comes back."""
    f = Forecaster(interval_s=IV, season_s=0, min_history=30, method="ewma", quantile=0.5)
    feed(f, [5] * 10 + [0] * 30)  # busy, then quiet for 30 intervals; the burst at 43 is unseen
    fc = f.forecast(40 * IV, 30.0)
    assert fc is not None and fc.value < 0.5  # asks for no replica


def test_auto_picks_by_season() -> None:
    assert Forecaster(season_s=0, method="auto").method_for(10_000) == "ewma"
    seasonal = Forecaster(interval_s=IV, season_s=600, method="auto")
    assert seasonal.method_for(30) == "ewma"  # less than a season seen
    assert seasonal.method_for(60 + 12) == "ridge"
    assert Forecaster(interval_s=IV, season_s=600, method="ridge").method_for(30) == "ridge"


def test_confidence_from_recent_accuracy() -> None:
    f = Forecaster(interval_s=IV, min_history=5, method="ewma", season_s=0)
    feed(f, [4] * 5)
    for i in range(5, 15):  # forecast one interval ahead each interval, then see it come true
        assert f.forecast(i * IV, 1.0) is not None
        feed(f, [4], start=i)
    fc = f.forecast(15 * IV, 1.0)
    assert fc is not None and fc.confidence == pytest.approx(1.0)
    # demand stops: forecasts of 4 meet zeros, no better than forecasting nothing
    for i in range(15, 60):
        f.forecast(i * IV, 1.0)
    fc = f.forecast(60 * IV, 1.0)
    assert fc is not None and fc.value == pytest.approx(0.0, abs=1e-3)
    assert f.confidence() is not None


def test_too_few_scored_forecasts_give_no_confidence() -> None:
    f = Forecaster(interval_s=IV, min_history=5, method="ewma", season_s=0)
    feed(f, [4] * 5)
    fc = f.forecast(5 * IV, 1.0)
    assert fc is not None and fc.confidence == 0.0
    assert f.confidence() is None


def test_pinball_loss() -> None:
    a = np.array([10.0, 0.0])
    assert pinball_loss(a, np.array([10.0, 0.0]), 0.9) == 0.0
    assert pinball_loss(a, np.array([0.0, 0.0]), 0.9) == pytest.approx(4.5)  # under: q x 10 / 2
    assert pinball_loss(a, np.array([10.0, 10.0]), 0.9) == pytest.approx(0.5)  # over: 0.1 x 10 / 2


def fc(value: float) -> Forecast:
    return Forecast(value, 0.9, 1.0, "ewma", 0.0, IV)


def test_replicas_by_littles_law() -> None:
    # 140 arrivals per 10 s = 14/s x 5 s in the system = 70 concurrent / 7 per replica = 10
    assert replicas_for(fc(140.0), 5.0, 7.0) == pytest.approx(10.0)
    assert replicas_for(fc(1.0), 5.0, 70.0) == 1.0  # any demand: one replica
    assert replicas_for(fc(0.4), 5.0, 70.0) == 0.0  # less than one arrival: none
    assert replicas_for(fc(3.0), 5.0, None) == 1.0


def test_replica_forecaster_gates_on_confidence() -> None:
    cfg = ForecastConfig(enabled=True, interval_s=IV, season_s=0, min_history=5, method="ewma")
    rf = ReplicaForecaster(cfg, service_s=5.0)
    feed(rf, [20] * 5)
    out = rf.replicas(5 * IV, 1.0, 7.0)
    assert out.replicas is None and "confidence 0.00 < min_confidence" in out.reason
    for i in range(5, 12):
        feed(rf, [20], start=i)
        rf.replicas((i + 1) * IV, 1.0, 7.0)
    out = rf.replicas(12 * IV, 1.0, 7.0)
    assert out.replicas == pytest.approx(20 / IV * 5.0 / 7.0), out.reason


def test_service_time_by_littles_law() -> None:
    cfg = ForecastConfig(enabled=True, interval_s=IV, season_s=0)
    rf = ReplicaForecaster(cfg)
    assert rf.service_s() is None
    for t in range(11):  # 2 in the system for 10 s, 4 arrivals -> 5 s each
        rf.observe_concurrency(float(t), 2.0)
    for t_s in (1.0, 3.0, 5.0, 7.0):
        rf.observe(t_s)
    assert rf.service_s() == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("interval_s: 10\n      season_s: 15", "season_s = 15 is not a multiple of interval_s"),
        ("season_s: 10", "must be 0 or at least 2 x interval_s"),
        ("quantile: 1.0", "quantile"),
        ("method: arima", "method"),
        ("min_confidence: 2", "min_confidence"),
    ],
)
def test_bad_forecast_config_is_refused(block: str, message: str) -> None:
    text = (
        "models:\n  - name: m\n    engine: {kind: emulator}\n    autoscaling:\n"
        f"      forecast:\n        {block.replace(chr(10) + '      ', chr(10) + '        ')}\n"
    )
    with pytest.raises(PolicyError, match=message):
        parse_policy(text)


def test_bad_forecaster_arguments() -> None:
    with pytest.raises(ValueError, match="interval_s = 0"):
        Forecaster(interval_s=0)
    with pytest.raises(ValueError, match="method = 'arima'"):
        Forecaster(method="arima")
    with pytest.raises(ValueError, match="horizon_s = -1"):
        Forecaster().forecast(0.0, -1)


# -- the decider: a forecast is a floor, never a ceiling --------------------------------------

POLICY = AutoscalingPolicy(
    max_replicas=20,
    target_waiting_per_replica=None,
    target_kv_cache_usage_ratio=None,
    target_concurrency_per_replica=10.0,
    stable_window_s=6.0,
    scale_to_zero_grace_s=0.0,
)

_reps = st.lists(
    st.builds(
        ReplicaObservation,
        replica_id=st.sampled_from(["a", "b", "c", "d"]),
        state=st.sampled_from(["starting", "ready", "ready", "sleeping"]),
        num_requests_waiting=st.integers(0, 100).map(float),
        num_requests_running=st.integers(0, 100).map(float),
        kv_cache_usage_ratio=st.floats(0.0, 1.0),
        scrape_age_s=st.floats(0.0, 12.0),
    ),
    max_size=5,
)
_steps = st.lists(
    st.tuples(st.floats(0.1, 5.0), _reps, st.integers(0, 50), st.floats(0.0, 30.0)),
    min_size=1,
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(steps=_steps)
def test_a_wrong_forecast_never_blocks_reactive_scaling(steps: list[Any]) -> None:
    """With any forecast (zero, too low, too high) the count is at least the reactive one."""
    plain = with_fc = zero = DeciderState.initial()
    now = 0.0
    for dt, reps, buffered, forecast in steps:
        now += dt
        o = ModelObservation("m", tuple(reps), buffered)
        d0, plain = decide(o, POLICY, plain, now)
        d1, with_fc = decide(
            ModelObservation("m", tuple(reps), buffered, forecast), POLICY, with_fc, now
        )
        d2, zero = decide(ModelObservation("m", tuple(reps), buffered, 0.0), POLICY, zero, now)
        assert d1.desired_replicas >= d0.desired_replicas, d1.reason
        assert (
            d1.desired_replicas
            == max(d0.desired_replicas, min(math.ceil(forecast - 1e-9), POLICY.max_replicas))
            or d0.desired_replicas >= POLICY.max_replicas
        ), (d0.reason, d1.reason)
        assert d2.desired_replicas == d0.desired_replicas, (d0.reason, d2.reason)


def test_forecast_of_zero_under_a_burst_still_scales_up() -> None:
    burst = ModelObservation(
        "m", (ReplicaObservation("a", "ready", 60.0, 40.0, 0.9, 0.0),), 30, 0.0
    )
    d, _ = decide(burst, POLICY, DeciderState.initial(), 0.0)
    assert d.desired_replicas == 13  # (60 + 40 + 30) / 10


def test_memory_is_bounded_and_forecasts_go_on() -> None:
    f = Forecaster(interval_s=IV, min_history=5, method="ewma", season_s=0)
    for i in range(2 * f.keep + 50):
        f.observe(i * IV + 1.0, 3.0)
        if i % 500 == 0:
            f.forecast(i * IV + IV, 1.0)
    now = (2 * f.keep + 50) * IV
    fc = f.forecast(now, 25.0)
    assert len(f.history(now)) <= 2 * f.keep
    assert fc is not None and fc.value == pytest.approx(3.0)
    assert fc.target_start_s == now + 20.0


# -- the same numbers, cheaper: each shortcut against what it replaces ----------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=300),
    st.sampled_from([0.1, 0.5, 0.75, 0.9, 0.95, 0.99, 1 / 3]),
)
def test_quantile_is_numpys(values: list[float], q: float) -> None:
    from autoscaler.forecast import quantile

    a = np.array(values)
    assert quantile(a, q) == float(np.quantile(a, q))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=300))
def test_pinball_loss_is_the_mean(values: list[float]) -> None:
    a = np.array(values)
    f = a[::-1].copy()
    diff = a - f
    assert pinball_loss(a, f, 0.9) == float(np.mean(np.maximum(0.9 * diff, (0.9 - 1.0) * diff)))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 30), min_size=40, max_size=400),
    st.integers(0, 100),
    st.lists(st.integers(1, 4), min_size=1, max_size=8),
)
def test_forecasts_of_a_sliding_series_equal_a_fresh_forecasters(
    counts: list[int], zeros_pct: int, ks: list[int]
) -> None:
    """ewma's levels reused from the last forecast (where they meet bit for bit) give exactly
    the forecast of a forecaster that computes everything anew."""
    y = np.array([c if (i * 37) % 100 >= zeros_pct else 0 for i, c in enumerate(counts)], float)
    f = Forecaster(interval_s=IV, method="ewma", season_s=0)
    for n in range(20, len(y)):
        k = ks[n % len(ks)]
        fresh = Forecaster(interval_s=IV, method="ewma", season_s=0)
        assert f.predict(y[:n], k) == fresh.predict(y[:n], k)


def test_ridge_forecasts_are_sklearns_predictions() -> None:
    f = Forecaster(interval_s=IV, season_s=12 * IV, min_history=30, method="ridge")
    feed(f, [(i * 7) % 13 + (10 if i % 12 < 4 else 0) for i in range(120)])
    for k in (1, 3):
        y = f.history(120 * IV)
        value = f.predict(y, k)
        model, offset, _ = f._fits[("ridge", k)]
        x_now = f._features(y, np.array([len(y) - 1]), k)
        assert value == max(0.0, float(model.predict(x_now)[0]) + offset)


def test_confidence_covers_the_last_window_of_scored_forecasts() -> None:
    """More scored forecasts than the window (30 without a season): the oldest leave it."""
    f = Forecaster(interval_s=IV, min_history=5, method="ewma", season_s=0)
    counts = [(i * 5) % 9 + 1 for i in range(120)]
    feed(f, counts[:5])
    made: dict[int, float] = {}
    for i in range(5, 120):
        fc = f.forecast(i * IV, 1.0)  # for interval i
        assert fc is not None
        made.setdefault(i, fc.value)
        feed(f, [counts[i]], start=i)
    f.forecast(120 * IV, 1.0)
    last = sorted(made)[-30:]
    a = np.array([float(counts[i]) for i in last])
    p = np.array([made[i] for i in last])
    want = 1.0 - pinball_loss(a, p, 0.9) / pinball_loss(a, np.zeros_like(a), 0.9)
    assert f.confidence() == pytest.approx(min(1.0, max(0.0, want)), abs=1e-12)
