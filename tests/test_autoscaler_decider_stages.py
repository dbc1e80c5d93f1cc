"""Each stage of the decider on its own: one table per stage, explicit timestamps (Knative's
``expectScale(t, a, now, ...)`` style). The composed decider is tested in
``tests/test_autoscaler_decider.py``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from autoscaler.decider import ModelObservation, ReplicaObservation
from autoscaler.decider import stages as s
from autoscaler.policy import AutoscalingPolicy


def policy(**overrides: Any) -> AutoscalingPolicy:
    base: dict[str, Any] = {
        "max_replicas": 10,
        "target_waiting_per_replica": None,
        "target_kv_cache_usage_ratio": None,
        "target_concurrency_per_replica": 10.0,
    }
    base.update(overrides)
    return AutoscalingPolicy(**base)


def expect(name: str, *, want: object, **args: object) -> Any:
    """One row: the stage called with ``args`` (``now_s``: the explicit time) returns ``want``."""
    return pytest.param(args, want, id=name)


def check(stage: Callable[..., object], args: dict[str, Any], want: object) -> None:
    assert stage(**args) == want


# -- 1. signals -----------------------------------------------------------------------------


def ready(
    rid: str,
    waiting: float | None = 0.0,
    running: float | None = 0.0,
    kv: float | None = 0.0,
    age_s: float | None = 0.5,
    in_flight: float | None = None,
) -> ReplicaObservation:
    return ReplicaObservation(rid, "ready", waiting, running, kv, age_s, in_flight)


def other(rid: str, state: Any) -> ReplicaObservation:
    return ReplicaObservation(rid, state, None, None, None, None)


def model(*replicas: ReplicaObservation, buffered: int = 0) -> ModelObservation:
    return ModelObservation("m", replicas, buffered)


SIGNALS = [
    expect(
        "a ready replica: its waiting, running (+ waiting) and KV",
        obs=model(ready("a", waiting=2, running=3, kv=0.5)),
        want=(1, 0, (2.0, 5.0, 0.5), 0, None),
    ),
    expect(
        "ready replicas add up",
        obs=model(ready("a", 1, 2, 0.25), ready("b", 3, 4, 0.5)),
        want=(2, 0, (4.0, 10.0, 0.75), 0, None),
    ),
    expect(
        "buffered requests wait: in waiting and concurrency",
        obs=model(ready("a", waiting=1, running=1), buffered=3),
        want=(1, 0, (4.0, 5.0, 0.0), 3, None),
    ),
    expect(
        "a negative buffered count is none",
        obs=model(ready("a"), buffered=-2),
        want=(1, 0, (0.0, 0.0, 0.0), 0, None),
    ),
    expect(
        "starting replicas are counted and carry no load",
        obs=model(other("s", "starting"), ready("a", running=1)),
        want=(1, 1, (0.0, 1.0, 0.0), 0, None),
    ),
    expect(
        "sleeping and draining replicas are neither capacity nor load",
        obs=model(other("s", "sleeping"), ReplicaObservation("d", "draining", 4, 5, 0.9, 0.1)),
        want=(0, 0, (0.0, 0.0, 0.0), 0, None),
    ),
    expect(
        "in-flight above the scrape: the excess waits",
        obs=model(ready("a", waiting=1, running=2, in_flight=10)),
        want=(1, 0, (8.0, 10.0, 0.0), 0, None),
    ),
    expect(
        "in-flight below the scrape changes nothing",
        obs=model(ready("a", waiting=1, running=4, in_flight=2)),
        want=(1, 0, (1.0, 5.0, 0.0), 0, None),
    ),
    expect(
        "a scrape older than the limit is stale",
        obs=model(ready("a"), ready("b", age_s=10.5)),
        want=(2, 0, (0.0, 0.0, 0.0), 0, ready("b", age_s=10.5)),
    ),
    expect(
        "a scrape exactly at the limit is fresh",
        obs=model(ready("a", age_s=10.0)),
        want=(1, 0, (0.0, 0.0, 0.0), 0, None),
    ),
    expect(
        "a missing metric is stale; the first stale replica is the one named",
        obs=model(ready("a", kv=None, running=2), ready("b", age_s=None)),
        want=(2, 0, (0.0, 2.0, 0.0), 0, ready("a", kv=None, running=2)),
    ),
]


@pytest.mark.parametrize(("args", "want"), SIGNALS)
def test_signals(args: dict[str, Any], want: object) -> None:
    check(s.signals, {"metrics_stale_after_s": 10.0, **args}, want)


# -- 2. windows -----------------------------------------------------------------------------


def window(*rows: tuple[float, float, float, float]) -> s.Window:
    """Columns from rows of (time_s, waiting, concurrency, kv_usage_sum)."""
    if not rows:
        return (), (), (), ()
    t, w, c, k = zip(*rows, strict=True)
    return tuple(t), tuple(w), tuple(c), tuple(k)


#: Stable window 10 s, panic window 20 % of it: 2 s; every target on.
ALL = policy(
    stable_window_s=10.0,
    panic_window_pct=20.0,
    target_waiting_per_replica=1.0,
    target_kv_cache_usage_ratio=0.5,
)

WINDOWS = [
    expect(
        "the first sample: both windows hold it alone",
        window=window(),
        now_s=0.0,
        totals=(1.0, 2.0, 0.5),
        want=(window((0.0, 1.0, 2.0, 0.5)), (1.0, 2.0, 0.5), None),
    ),
    expect(
        "the samples of (now - 10 s, now] stay: the one at now - 10 s leaves",
        window=window((0.0, 9.0, 9.0, 0.0), (5.0, 2.0, 4.0, 1.0), (9.0, 4.0, 8.0, 1.0)),
        now_s=10.0,
        totals=(0.0, 6.0, 1.0),
        want=(
            window((5.0, 2.0, 4.0, 1.0), (9.0, 4.0, 8.0, 1.0), (10.0, 0.0, 6.0, 1.0)),
            (2.0, 6.0, 1.0),
            (2.0, 7.0, 1.0),  # (8 s, 10 s]: the samples at 9 s and 10 s
        ),
    ),
    expect(
        "the panic window holds every sample: its averages are the stable ones (None)",
        window=window((9.0, 2.0, 2.0, 0.0)),
        now_s=10.0,
        totals=(4.0, 4.0, 0.0),
        want=(window((9.0, 2.0, 2.0, 0.0), (10.0, 4.0, 4.0, 0.0)), (3.0, 3.0, 0.0), None),
    ),
    expect(
        "time went back: samples after now are forgotten",
        window=window((0.0, 1.0, 1.0, 0.0), (5.0, 3.0, 3.0, 0.0), (9.0, 8.0, 8.0, 0.0)),
        now_s=6.0,
        totals=(5.0, 5.0, 0.0),
        want=(
            window((0.0, 1.0, 1.0, 0.0), (5.0, 3.0, 3.0, 0.0), (6.0, 5.0, 5.0, 0.0)),
            (3.0, 3.0, 0.0),
            (4.0, 4.0, 0.0),  # (4 s, 6 s]: the samples at 5 s and 6 s
        ),
    ),
    expect(
        "nothing waits or runs: KV blocks still in use are cache, the sample's KV is 0",
        window=window(),
        now_s=0.0,
        totals=(0.0, 0.0, 0.7),
        want=(window((0.0, 0.0, 0.0, 0.0)), (0.0, 0.0, 0.0), None),
    ),
]


@pytest.mark.parametrize(("args", "want"), WINDOWS)
def test_windows(args: dict[str, Any], want: object) -> None:
    check(s.windows, {"policy": ALL, **args}, want)


def test_windows_record_a_total_no_target_reads_but_do_not_average_it() -> None:
    only_concurrency = policy(stable_window_s=10.0)
    got = s.windows(window(), 0.0, (3.0, 4.0, 0.5), only_concurrency)
    assert got == (window((0.0, 3.0, 4.0, 0.5)), (0.0, 4.0, 0.0), None)


def test_windows_step_on_a_virtual_clock() -> None:
    # One sample a second from t=0: the stable window (10 s) fills, then slides.
    w = window()
    stable: s.Totals = (0.0, 0.0, 0.0)
    for t in range(15):
        w, stable, panic = s.windows(w, float(t), (float(t), float(t), 0.0), ALL)
        if t >= 2:
            assert panic == (t - 0.5, t - 0.5, 0.0)  # (t - 2, t]: t - 1 and t
    assert w[0] == tuple(float(t) for t in range(5, 15))
    assert stable == (9.5, 9.5, 0.0)  # mean of 5 ... 14


# -- 3. desired -----------------------------------------------------------------------------

THREE = policy(target_waiting_per_replica=4.0, target_kv_cache_usage_ratio=0.8)

DESIRED = [
    expect(
        "ceil(total / target); the panic window is the stable one",
        policy=policy(),
        stable=(0.0, 25.0, 0.0),
        panic=None,
        want=((None, 3, None), 3, 3),
    ),
    expect(
        "an average of exactly the target is one replica, not two",
        policy=policy(target_concurrency_per_replica=0.1),
        stable=(0.0, 0.3, 0.0),
        panic=None,
        want=((None, 3, None), 3, 3),
    ),
    expect(
        "each enabled target counts; the largest wins",
        policy=THREE,
        stable=(5.0, 12.0, 1.7),
        panic=None,
        want=((2, 2, 3), 3, 3),
    ),
    expect(
        "the panic window's own largest",
        policy=THREE,
        stable=(0.0, 5.0, 0.1),
        panic=(20.0, 45.0, 0.1),
        want=((0, 1, 1), 1, 5),
    ),
    expect(
        "no demand: zero",
        policy=THREE,
        stable=(0.0, 0.0, 0.0),
        panic=(0.0, 0.0, 0.0),
        want=((0, 0, 0), 0, 0),
    ),
]


@pytest.mark.parametrize(("args", "want"), DESIRED)
def test_desired(args: dict[str, Any], want: object) -> None:
    check(s.desired, args, want)


# -- 4. rate limits -------------------------------------------------------------------------

RATES = [
    expect("within the rates", stable=3, panic=3, ready=2, want=(3, 3, None)),
    expect(
        "scale-up limited to ceil(rate x ready)",
        stable=10,
        panic=12,
        ready=2,
        want=(4, 4, "scale-up limited to ceil(2 x 2) = 4"),
    ),
    expect(
        "no ready replica: the base is 1",
        stable=5,
        panic=5,
        ready=0,
        want=(2, 2, "scale-up limited to ceil(2 x 1) = 2"),
    ),
    expect(
        "scale-down limited to floor(ready / rate)",
        stable=0,
        panic=0,
        ready=8,
        want=(4, 4, "scale-down limited to floor(8 ready / 2) = 4"),
    ),
    expect("only a limited stable count is noted", stable=3, panic=20, ready=2, want=(3, 4, None)),
]


@pytest.mark.parametrize(("args", "want"), RATES)
def test_rate_limits(args: dict[str, Any], want: object) -> None:
    check(s.rate_limits, {"policy": policy(max_scale_up_rate=2.0), **args}, want)


# -- 5. panic -------------------------------------------------------------------------------


def calm(**overrides: Any) -> dict[str, Any]:
    """A calm start: nothing asked for over the ready count, no panic memory."""
    args: dict[str, Any] = {
        "stable": 1,
        "panic_count": 1,
        "want_panic": 1,
        "current": 1,
        "ready": 1,
        "since_s": None,
        "max_replicas": 0,
        "now_s": 10.0,
    }
    args.update(overrides)
    return args


PANIC = [
    expect("calm below the threshold", **calm(stable=3, panic_count=3, want_panic=3, ready=2),
           want=(3, None, 0, None)),  # 3 / 2 ready = 150 % < 200 %
    expect("enters at 200 % of ready", **calm(stable=2, panic_count=2, want_panic=2),
           want=(2, 10.0, 2, "panic (panic window 6 s wants 2)")),
    expect(
        "over the threshold, the panic count is a floor",
        **calm(stable=1, panic_count=4, want_panic=4),
        want=(4, 10.0, 4, "panic (panic window 6 s wants 4, >= 200 % of 1 ready): "
              "no scale-down below 4"),
    ),
    expect(
        "the threshold reads the panic window before the rates",
        **calm(stable=1, panic_count=1, want_panic=9),
        want=(1, 10.0, 1, "panic (panic window 6 s wants 9)"),
    ),
    expect(
        "extended: the panic maximum holds below the threshold",
        **calm(current=4, ready=4, since_s=5.0, max_replicas=4, now_s=30.0),
        want=(4, 5.0, 4, "panic (panic window 6 s wants 1): no scale-down below 4"),
    ),
    expect(
        "while panicking, never below the current count",
        **calm(current=3, ready=1, since_s=5.0, max_replicas=2, now_s=30.0),
        want=(3, 5.0, 2, "panic (panic window 6 s wants 1): no scale-down below 3"),
    ),
    expect(
        "still panicking exactly one stable window after it last held",
        **calm(current=4, ready=4, since_s=0.0, max_replicas=4, now_s=60.0),
        want=(4, 0.0, 4, "panic (panic window 6 s wants 1): no scale-down below 4"),
    ),
    expect(
        "calm strictly after: the memory is cleared",
        **calm(current=4, ready=4, since_s=0.0, max_replicas=4, now_s=60.5),
        want=(1, None, 0, None),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("args", "want"), PANIC)
def test_panic(args: dict[str, Any], want: object) -> None:
    check(s.panic, {"policy": policy(), **args}, want)


# -- 6. floors ------------------------------------------------------------------------------

ACTIVATION = [
    expect("zero stays zero", desired=0, activation_scale=3, want=(0, None)),
    expect("above zero: at least the activation scale", desired=1, activation_scale=3,
           want=(3, "activation scale 3")),
    expect("already above it", desired=5, activation_scale=3, want=(5, None)),
    expect("activation scale 1 never moves a count", desired=1, activation_scale=1,
           want=(1, None)),
]  # fmt: skip


@pytest.mark.parametrize(("args", "want"), ACTIVATION)
def test_activation_floor(args: dict[str, Any], want: object) -> None:
    check(s.activation_floor, args, want)


DELAY = [
    expect("no delay keeps no window", desired=2, times_s=(0.0,), counts=(5,), now_s=1.0,
           delay_s=0.0, want=(2, (), (), None)),
    expect("the largest count of (now - delay, now] holds", desired=1, times_s=(0.0, 5.0),
           counts=(4, 2), now_s=6.0, delay_s=10.0,
           want=(4, (0.0, 5.0, 6.0), (4, 2, 1), "scale-down delay 10 s keeps 4")),
    expect("the count at now - delay has left", desired=1, times_s=(0.0, 5.0), counts=(4, 2),
           now_s=10.0, delay_s=10.0,
           want=(2, (5.0, 10.0), (2, 1), "scale-down delay 10 s keeps 2")),
    expect("a scale-up passes at once", desired=6, times_s=(0.0,), counts=(4,), now_s=1.0,
           delay_s=10.0, want=(6, (0.0, 1.0), (4, 6), None)),
    expect("time went back: later counts are forgotten", desired=1,
           times_s=(0.0, 5.0, 9.0), counts=(1, 7, 9), now_s=6.0, delay_s=10.0,
           want=(7, (0.0, 5.0, 6.0), (1, 7, 1), "scale-down delay 10 s keeps 7")),
]  # fmt: skip


@pytest.mark.parametrize(("args", "want"), DELAY)
def test_scale_down_delay(args: dict[str, Any], want: object) -> None:
    check(s.scale_down_delay, args, want)


FIRST_WINDOW = "initial_replicas 2 during the first stable window"

FLOORS = [
    expect("nothing to add", desired=1, forecast_replicas=None, now_s=100.0,
           want=(1, None, None, None)),
    expect("the forecast is a floor, rounded up", desired=1, forecast_replicas=2.3, now_s=100.0,
           want=(3, None, "forecast wants 3", None)),
    expect("a forecast of 2 (within rounding) is 2", desired=1, forecast_replicas=2.0 + 1e-12,
           now_s=100.0, want=(2, None, "forecast wants 2", None)),
    expect("a forecast below the count changes nothing", desired=4, forecast_replicas=2.3,
           now_s=100.0, want=(4, None, None, None)),
    expect("initial_replicas during the first stable window", desired=0, forecast_replicas=None,
           now_s=59.0, want=(2, None, None, FIRST_WINDOW)),
    expect("not once it has passed", desired=0, forecast_replicas=None, now_s=60.0,
           want=(0, None, None, None)),
    expect("in order: each notes what it raised", desired=0, forecast_replicas=1.0, now_s=10.0,
           want=(2, None, "forecast wants 1", FIRST_WINDOW)),
    expect("at zero with requests buffered: the cold start's count", desired=0,
           forecast_replicas=None, current=0, buffered=4, now_s=100.0,
           want=(3, "cold start: 4 buffered", None, None)),
    expect("the cold start speaks even when the count is already higher", desired=5,
           forecast_replicas=None, current=0, buffered=1, now_s=100.0,
           want=(5, "cold start: 1 buffered", None, None)),
    expect("buffered requests with replicas up: no cold start", desired=0,
           forecast_replicas=None, current=1, buffered=4, now_s=100.0,
           want=(0, None, None, None)),
    expect("at zero with nothing buffered: no cold start", desired=0, forecast_replicas=None,
           current=0, buffered=0, now_s=100.0, want=(0, None, None, None)),
]  # fmt: skip


@pytest.mark.parametrize(("args", "want"), FLOORS)
def test_floors(args: dict[str, Any], want: object) -> None:
    p = policy(initial_replicas=2, activation_scale=3)
    check(s.floors, {"current": 1, "buffered": 0, "started_s": 0.0, "policy": p, **args}, want)


COLD = [
    expect("one", policy=policy(), want=1),
    expect("activation scale", policy=policy(activation_scale=3), want=3),
    expect("min_replicas", policy=policy(min_replicas=2), want=2),
    expect("within max_replicas", policy=policy(activation_scale=3, max_replicas=2), want=2),
]


@pytest.mark.parametrize(("args", "want"), COLD)
def test_cold_start_count(args: dict[str, Any], want: object) -> None:
    check(s.cold_start_count, args, want)


# -- 7. bounds ------------------------------------------------------------------------------

BOUNDS = [
    expect("within the bounds", desired=5, want=(5, None)),
    expect("min_replicas wins", desired=0, want=(1, "min_replicas 1")),
    expect("max_replicas wins", desired=12, want=(10, "max_replicas 10 (wanted 12)")),
]


@pytest.mark.parametrize(("args", "want"), BOUNDS)
def test_bounds(args: dict[str, Any], want: object) -> None:
    check(s.bounds, {"policy": policy(min_replicas=1), **args}, want)


# -- the stale-metrics path's own stages ----------------------------------------------------

VISIBLE = [
    expect("hold the current count", current=2, seen=1, ready=2, want=(2, None)),
    expect("scale up for what is seen", current=1, seen=3, ready=1,
           want=(3, "visible demand wants 3")),
    expect("within the scale-up rate", current=1, seen=9, ready=1,
           want=(4, "visible demand wants 4")),
]  # fmt: skip


@pytest.mark.parametrize(("args", "want"), VISIBLE)
def test_visible_demand(args: dict[str, Any], want: object) -> None:
    check(s.visible_demand, {"policy": policy(max_scale_up_rate=4.0), **args}, want)


PANIC_HOLD = [
    expect("panicking: the panic maximum holds", desired=2, panicking=True, max_panic_replicas=4,
           want=(4, "panic keeps 4")),
    expect("calm: nothing held", desired=2, panicking=False, max_panic_replicas=4,
           want=(2, None)),
    expect("already above the maximum", desired=5, panicking=True, max_panic_replicas=4,
           want=(5, None)),
]  # fmt: skip


@pytest.mark.parametrize(("args", "want"), PANIC_HOLD)
def test_panic_hold(args: dict[str, Any], want: object) -> None:
    check(s.panic_hold, args, want)


# -- words and numbers ----------------------------------------------------------------------

VERB = [
    expect("up", current=1, desired=3, want="scale up 1 -> 3: "),
    expect("down", current=3, desired=1, want="scale down 3 -> 1: "),
    expect("hold", current=2, desired=2, want="hold at 2: "),
]


@pytest.mark.parametrize(("args", "want"), VERB)
def test_verb(args: dict[str, Any], want: object) -> None:
    check(s.verb, args, want)


REASON = [
    expect("no stage had its say", current=1, desired=1, head="stable 60 s wants 1 (...)",
           notes=(None, None), want="hold at 1: stable 60 s wants 1 (...)"),
    expect("the notes that were said, in order", current=1, desired=4, head="H",
           notes=("panic (...)", None, "forecast wants 4"),
           want="scale up 1 -> 4: H; panic (...); forecast wants 4"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "want"), REASON)
def test_reason(args: dict[str, Any], want: object) -> None:
    check(s.reason, args, want)


DESCRIBE = [
    expect(
        "the enabled targets only",
        want_count=3,
        c=(None, 3, None),
        totals=(0.0, 25.0, 0.0),
        policy=policy(),
        want="stable 60 s wants 3 (concurrency 25/10 -> 3)",
    ),
    expect(
        "every target, totals to four digits",
        want_count=3,
        c=(2, 2, 3),
        totals=(5.4545454, 12.0, 1.85),
        policy=THREE,
        want="stable 60 s wants 3 (waiting 5.455/4 -> 2, concurrency 12/10 -> 2, "
        "kv_cache 1.85/0.8 -> 3)",
    ),
]


@pytest.mark.parametrize(("args", "want"), DESCRIBE)
def test_describe(args: dict[str, Any], want: object) -> None:
    args = dict(args)
    assert s.describe(args.pop("want_count"), **args) == want


WHY_STALE = [
    expect("never scraped", r=ready("a", age_s=None), want="replica a has no metrics yet"),
    expect("a metric missing", r=ready("a", kv=None), want="replica a has no metrics yet"),
    expect("too old", r=ready("a", age_s=12.34),
           want="replica a last scraped 12.3 s ago (stale after 10 s)"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "want"), WHY_STALE)
def test_why_stale(args: dict[str, Any], want: object) -> None:
    check(s.why_stale, {"metrics_stale_after_s": 10.0, **args}, want)


SIGNAL_VALUES = [
    expect(
        "a fresh decision: targets, windows, buffered, forecast, in that order",
        c=(2, None, 1),
        stable=2,
        panic=5,
        buffered=3,
        forecast_replicas=1.5,
        want={"waiting": 2.0, "kv_cache": 1.0, "stable": 2.0, "panic": 5.0, "buffered": 3.0,
              "forecast": 1.5},
    ),
    expect(
        "a stale decision: no windows, no forecast",
        c=(None, 4, None),
        stable=None,
        panic=None,
        buffered=0,
        forecast_replicas=None,
        want={"concurrency": 4.0, "buffered": 0.0},
    ),
]  # fmt: skip


@pytest.mark.parametrize(("args", "want"), SIGNAL_VALUES)
def test_signal_values(args: dict[str, Any], want: dict[str, float]) -> None:
    got = s.signal_values(**args)
    assert got == want
    assert list(got) == list(want)  # the order logs print them in
    assert all(type(v) is float for v in got.values())
