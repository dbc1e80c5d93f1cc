"""The decider on explicit timestamps (Knative's test style) and its invariants (hypothesis).
Each stage on its own: ``tests/test_autoscaler_decider_stages.py``."""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscaler.decider import (
    DeciderState,
    Decision,
    ModelObservation,
    ReplicaObservation,
    cold_start_decision,
    decide,
)
from autoscaler.policy import AutoscalingPolicy
from autoscaler.scale_to_zero import apply_grace

# -- helpers --------------------------------------------------------------------------------


def ready(
    rid: str, *, waiting: float = 0, running: float = 0, kv: float = 0.0, age_s: float = 0.5
) -> ReplicaObservation:
    return ReplicaObservation(rid, "ready", waiting, running, kv, age_s)


def starting(rid: str) -> ReplicaObservation:
    return ReplicaObservation(rid, "starting", None, None, None, None)


def obs(
    *replicas: ReplicaObservation, buffered: int = 0, forecast: float | None = None
) -> ModelObservation:
    return ModelObservation("m", tuple(replicas), buffered, forecast)


def idle(n: int) -> ModelObservation:
    return obs(*(ready(f"r{i}") for i in range(n)))


def policy(**overrides: Any) -> AutoscalingPolicy:
    base: dict[str, Any] = {
        "max_replicas": 10,
        "target_waiting_per_replica": None,
        "target_kv_cache_usage_ratio": None,
        "target_concurrency_per_replica": 10.0,
    }
    base.update(overrides)
    return AutoscalingPolicy(**base)


def run(
    p: AutoscalingPolicy, steps: Sequence[tuple[float, ModelObservation]]
) -> tuple[list[Decision], DeciderState]:
    """The decider, then the scale-to-zero grace every runtime applies after it (Thaw's
    activator always in the path, as in ``thaw up`` and ``thaw sim``)."""
    state = DeciderState.initial()
    zero_since: float | None = None
    out: list[Decision] = []
    for now_s, o in steps:
        d, state = decide(o, p, state, now_s)
        d, zero_since = apply_grace(d, zero_since, True, now_s, p.scale_to_zero_grace_s)
        out.append(d)
    return out, state


def every_second(
    start: int, stop: int, o: ModelObservation
) -> list[tuple[float, ModelObservation]]:
    return [(float(t), o) for t in range(start, stop)]


# -- table: (name, policy overrides, steps, expected desired per step) ------------------------


@dataclass(frozen=True)
class Case:
    name: str
    overrides: dict[str, Any]
    steps: list[tuple[float, ModelObservation]]
    want: list[int]
    reason_has: str = ""
    panic: bool | None = None
    stale: bool | None = None
    cold: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("idle at zero stays at zero", {}, every_second(0, 3, obs()), [0, 0, 0], "hold at 0"),
    Case(
        "cold start: one buffered request -> 1 at once",
        {},
        [(0.0, obs(buffered=1))],
        [1],
        "scale up 0 -> 1: cold start: 1 buffered",
        cold=True,
    ),
    Case(
        "cold start honours activation_scale",
        {"activation_scale": 3},
        [(0.0, obs(buffered=1))],
        [3],
        "cold start: 1 buffered",
        cold=True,
    ),
    Case(
        "cold start within max_replicas",
        {"activation_scale": 3, "max_replicas": 2},
        [(0.0, obs(buffered=1))],
        [2],
        "max_replicas 2",
    ),
    Case(
        "a starting replica is capacity: no second cold start",
        {},
        [(0.0, obs(buffered=1)), (1.0, obs(starting("r1"), buffered=1))],
        [1, 1],
        "hold at 1",
        cold=False,
    ),
    Case(
        "many buffered at zero ask for more than one (waiting target)",
        {"target_waiting_per_replica": 4.0, "target_concurrency_per_replica": None},
        [(0.0, obs(buffered=10))],
        [3],
        "waiting 10/4 -> 3",
        cold=True,
    ),
    Case(
        "concurrency: ceil(running + waiting / target)",
        {"panic_threshold_pct": 1000},
        [(0.0, obs(ready("a", running=18, waiting=7)))],
        [3],
        "concurrency 25/10 -> 3",
    ),
    Case(
        "queue depth: ceil(waiting / target)",
        {"target_waiting_per_replica": 2.0, "target_concurrency_per_replica": None},
        [(0.0, obs(ready("a", waiting=5, running=100)))],
        [3],
        "waiting 5/2 -> 3",
    ),
    Case(
        "KV usage: ceil(ready x average / target)",
        {"target_kv_cache_usage_ratio": 0.5, "target_concurrency_per_replica": None},
        [(0.0, obs(ready("a", kv=0.9, running=1), ready("b", kv=0.7, running=1)))],
        [4],
        "kv_cache 1.6/0.5 -> 4",
    ),
    Case(
        "the largest signal wins",
        {
            "target_kv_cache_usage_ratio": 0.8,
            "target_waiting_per_replica": 4.0,
            "panic_threshold_pct": 1000,
        },
        [(0.0, obs(ready("a", running=5, waiting=1, kv=0.95), ready("b", running=5, kv=0.9)))],
        [3],
        "kv_cache 1.85/0.8 -> 3",
    ),
    Case(
        "an average of exactly the target is one replica, not two",
        {"target_concurrency_per_replica": 0.1, "panic_threshold_pct": 1000},
        [(0.0, obs(ready("a", running=0.3)))],
        [3],
    ),
    Case(
        "stable window averages: a 1 s spike of 60 moves the 60 s average to 60/11",
        {"panic_threshold_pct": 1000},
        [*every_second(0, 10, idle(1)), (10.0, obs(ready("a", running=60)))],
        [1] * 10 + [1],
        "concurrency 5.455/10 -> 1",
    ),
    Case(
        "scale-up rate: at most ceil(rate x ready)",
        {"max_scale_up_rate": 2.0},
        [(0.0, obs(ready("a", running=100)))],
        [2],
        "scale-up limited to ceil(2 x 1) = 2",
    ),
    Case(
        "scale-down rate: at least floor(ready / rate)",
        {},
        [(0.0, idle(8))],
        [4],
        "scale-down limited to floor(8 ready / 2) = 4",
    ),
    Case(
        "one replica stays during the scale-to-zero grace",
        {"stable_window_s": 6},
        every_second(0, 31, idle(1)),
        [1] * 30 + [0],
        "wants 0 for 30.0 s >= grace 30 s",
    ),
    Case(
        "scale-to-zero grace counts from when the decider first wants 0 (the stable window empty)",
        {"stable_window_s": 6},
        [
            *every_second(0, 20, idle(1)),
            (20.0, obs(ready("a", running=1))),
            *every_second(21, 57, idle(1)),
        ],
        # The stable window (20, 26] is empty at 26: the decider wants 0 from then, 30 s more.
        [1] * 56 + [0],
        "wants 0 for 30.0 s >= grace 30 s",
    ),
    Case(
        "buffered requests are demand even with replicas up",
        {"stable_window_s": 6, "scale_to_zero_grace_s": 0},
        [(0.0, obs(ready("a"), buffered=1))],
        [1],
    ),
    Case(
        "panic: enter at 200 % of ready in the panic window",
        {},
        [(0.0, obs(ready("a", running=30)))],
        [3],
        "panic",
        panic=True,
    ),
    Case(
        "panic: no scale-down for a stable window after the last over-threshold tick",
        {},
        [(0.0, obs(ready("a", running=30))), *every_second(1, 62, idle(3))],
        [3] * 61 + [1],
        "scale down 3 -> 1",
        panic=False,
    ),
    Case(
        "panic: below threshold is calm (3 wanted / 2 ready < 200 %)",
        {},
        [(0.0, obs(ready("a", running=15), ready("b", running=10)))],
        [3],
        panic=False,
    ),
    Case(
        "panic never drops below the current count (starting replicas included)",
        {},
        [(0.0, obs(ready("a", running=30), starting("b"), starting("c"), starting("d")))],
        [4],
        "no scale-down below 4",
        panic=True,
    ),
    Case(
        "stale metrics: hold, never down",
        {},
        [(0.0, obs(ready("a"), ready("b", age_s=11.0)))],
        [2],
        "metrics stale: replica b last scraped 11.0 s ago (stale after 10 s)",
        stale=True,
    ),
    Case(
        "missing metrics: hold, never to zero",
        {"stable_window_s": 6, "scale_to_zero_grace_s": 0},
        [(0.0, obs(ReplicaObservation("a", "ready", None, None, None, None)))],
        [1],
        "replica a has no metrics yet",
        stale=True,
    ),
    Case(
        "stale metrics still scale up for buffered demand",
        {"target_waiting_per_replica": 4.0},
        [(0.0, obs(ready("a", age_s=99.0), buffered=20))],
        [5],
        "visible demand wants 5",
        stale=True,
    ),
    Case(
        "stale metrics during panic keep the panic count",
        {},
        [(0.0, obs(ready("a", running=30))), (1.0, obs(ready("a", age_s=30.0), ready("b")))],
        [3, 3],
        "panic keeps 3",
        panic=True,
        stale=True,
    ),
    Case(
        "KV usage of an idle engine is cache, not demand: it still scales to zero",
        {"target_kv_cache_usage_ratio": 0.5, "stable_window_s": 6, "scale_to_zero_grace_s": 2},
        every_second(0, 4, obs(ready("a", kv=0.4))),
        [1, 1, 0, 0],
        ">= grace 2 s",
    ),
    Case(
        "scale-down delay keeps the largest count of the delay window",
        {"scale_down_delay_s": 10, "stable_window_s": 6, "panic_threshold_pct": 1000},
        [
            (0.0, obs(ready("a", running=40), ready("b", running=40))),
            *every_second(1, 12, idle(8)),
        ],
        [8] * 10 + [4, 4],  # the t=0 sample leaves the (now - 10, now] window at t=10
        "scale-down limited",
    ),
    Case(
        "min_replicas starts a replica without traffic",
        {"min_replicas": 1},
        [(0.0, obs())],
        [1],
        "min_replicas 1",
        cold=True,
    ),
    Case(
        "max_replicas caps any load",
        {"max_replicas": 3},
        [(0.0, obs(ready("a", running=1000)))],
        [3],
        "max_replicas 3 (wanted",
    ),
    Case(
        "forecast is a floor",
        {},
        [(0.0, obs(ready("a", running=1), forecast=2.3))],
        [3],
        "forecast wants 3",
    ),
    Case(
        "initial_replicas holds for the first stable window",
        {"initial_replicas": 2, "stable_window_s": 6, "scale_to_zero_grace_s": 0},
        [(0.0, obs()), (5.0, obs(ready("a"), ready("b"))), (6.0, obs(ready("a"), ready("b")))],
        [2, 2, 1],
    ),
    Case(
        "sleeping and draining replicas are not capacity",
        {},
        [
            (
                0.0,
                obs(
                    ReplicaObservation("s", "sleeping", None, None, None, None),
                    ReplicaObservation("d", "draining", 0, 5, 0.1, 0.5),
                    buffered=2,
                ),
            )
        ],
        [1],
        "cold start: 2 buffered",
        cold=True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decider_table(case: Case) -> None:
    decisions, _ = run(policy(**case.overrides), case.steps)
    assert [d.desired_replicas for d in decisions] == case.want, [d.reason for d in decisions]
    last = decisions[-1]
    assert case.reason_has in last.reason
    if case.panic is not None:
        assert last.panic is case.panic, last.reason
    if case.stale is not None:
        assert last.stale_metrics is case.stale, last.reason
    if case.cold is not None:
        assert last.cold_start is case.cold, last.reason


# -- the smaller pieces ---------------------------------------------------------------------


def test_cold_start_decision_only_at_zero_with_buffered() -> None:
    p = policy(activation_scale=2)
    assert cold_start_decision(obs(), p) is None
    assert cold_start_decision(obs(ready("a"), buffered=3), p) is None
    assert cold_start_decision(obs(starting("a"), buffered=3), p) is None
    d = cold_start_decision(obs(buffered=3), p)
    assert d is not None
    assert (d.desired_replicas, d.current_replicas, d.cold_start) == (2, 0, True)
    assert d.reason == "cold start: 3 buffered"


def test_panic_is_extended_while_over_threshold() -> None:
    burst = obs(ready("a", running=30), ready("b", running=30), ready("c", running=30))
    steps = [(0.0, obs(ready("a", running=30))), *every_second(1, 40, burst)]
    steps += every_second(40, 103, idle(3))
    decisions, state = run(policy(max_replicas=3), steps)
    # The 6 s panic window still holds the burst after it ends: at t=41 it averages
    # 4 x 90 / 6 = 60 -> 6 replicas = 200 % of 3 ready, the last tick over the threshold.
    # Panic ends one stable window (60 s) later: strictly after t=101.
    assert all(d.panic for d in decisions[:102])
    assert all(d.desired_replicas == 3 for d in decisions[1:102])
    assert not decisions[102].panic
    assert state.panic_since_s is None and state.max_panic_replicas == 0


def test_signals_report_each_target() -> None:
    p = policy(target_waiting_per_replica=2.0, target_kv_cache_usage_ratio=0.5)
    d, _ = decide(obs(ready("a", waiting=3, running=4, kv=0.6), buffered=1), p, DeciderState(), 0)
    assert d.signals["waiting"] == 2  # (3 + 1 buffered) / 2
    assert d.signals["concurrency"] == 1  # 8 / 10
    assert d.signals["kv_cache"] == 2  # 0.6 / 0.5
    assert d.signals["buffered"] == 1
    assert d.signals["stable"] == 2


def test_stale_metrics_do_not_feed_the_window() -> None:
    p = policy()
    _, s1 = decide(obs(ready("a", running=50)), p, DeciderState(), 0.0)
    _, s2 = decide(obs(ready("a", age_s=60.0)), p, s1, 1.0)
    assert s2.samples == s1.samples


def test_policy_reload_shrinks_the_window() -> None:
    steps = every_second(0, 60, obs(ready("a", running=5)))
    _, state = run(policy(), steps)
    d, state = decide(idle(1), policy(stable_window_s=6), state, 60.0)
    assert len(state.samples) <= 7
    assert d.desired_replicas == 1


# -- invariants -----------------------------------------------------------------------------

_opt_ratio = st.one_of(st.none(), st.floats(0.05, 1.0))
_opt_target = st.one_of(st.none(), st.floats(0.5, 50.0))


@st.composite
def policies(draw: st.DrawFn) -> AutoscalingPolicy:
    lo = draw(st.integers(0, 3))
    hi = draw(st.integers(max(lo, 1), 8))
    targets = draw(st.tuples(_opt_target, _opt_ratio, _opt_target))
    if all(t is None for t in targets):
        targets = (None, None, 10.0)
    return AutoscalingPolicy(
        min_replicas=lo,
        max_replicas=hi,
        initial_replicas=draw(st.integers(lo, hi)),
        target_waiting_per_replica=targets[0],
        target_kv_cache_usage_ratio=targets[1],
        target_concurrency_per_replica=targets[2],
        stable_window_s=draw(st.sampled_from([6.0, 10.0, 60.0])),
        panic_window_pct=draw(st.sampled_from([10.0, 50.0, 100.0])),
        panic_threshold_pct=draw(st.sampled_from([110.0, 200.0, 400.0])),
        max_scale_up_rate=draw(st.sampled_from([1.5, 2.0, 1000.0])),
        max_scale_down_rate=draw(st.sampled_from([1.5, 2.0, 10.0])),
        scale_down_delay_s=draw(st.sampled_from([0.0, 5.0])),
        scale_to_zero_grace_s=draw(st.sampled_from([0.0, 3.0, 30.0])),
        activation_scale=draw(st.integers(1, 3)),
        metrics_stale_after_s=5.0,
    )


_metric = st.one_of(st.none(), st.integers(0, 200).map(float))
replicas = st.builds(
    ReplicaObservation,
    replica_id=st.sampled_from(["a", "b", "c", "d", "e"]),
    state=st.sampled_from(["starting", "ready", "ready", "ready", "sleeping", "draining"]),
    num_requests_waiting=_metric,
    num_requests_running=_metric,
    kv_cache_usage_ratio=st.one_of(st.none(), st.floats(0.0, 1.0)),
    scrape_age_s=st.one_of(st.none(), st.floats(0.0, 8.0)),
)
step = st.tuples(
    st.floats(0.1, 8.0),  # seconds since the previous decision
    st.lists(replicas, max_size=6),
    st.integers(0, 30),  # buffered
    st.one_of(st.none(), st.floats(0.0, 12.0)),  # forecast
)


def _facts(o: ModelObservation, p: AutoscalingPolicy) -> dict[str, Any]:
    ready_reps = [r for r in o.replicas if r.state == "ready"]
    live = [r for r in o.replicas if r.state in ("ready", "starting")]
    stale = any(
        r.num_requests_waiting is None
        or r.num_requests_running is None
        or r.kv_cache_usage_ratio is None
        or r.scrape_age_s is None
        or r.scrape_age_s > p.metrics_stale_after_s
        for r in ready_reps
    )
    demand = o.buffered_requests > 0 or any(
        (r.num_requests_waiting or 0) > 0 or (r.num_requests_running or 0) > 0 for r in ready_reps
    )
    return {"ready": len(ready_reps), "current": len(live), "stale": stale, "demand": demand}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=policies(), steps=st.lists(step, min_size=1, max_size=40))
def test_decider_invariants(p: AutoscalingPolicy, steps: list[Any]) -> None:
    state = DeciderState.initial()
    now_s = 0.0
    zero_since: float | None = None
    wanted_zero_since: float | None = None
    for dt, reps, buffered, forecast in steps:
        now_s += dt
        o = ModelObservation("m", tuple(reps), buffered, forecast)
        f = _facts(o, p)
        d, state = decide(o, p, state, now_s)
        if d.desired_replicas > 0 or d.current_replicas == 0:
            wanted_zero_since = None
        elif wanted_zero_since is None:
            wanted_zero_since = now_s
        d, zero_since = apply_grace(d, zero_since, True, now_s, p.scale_to_zero_grace_s)
        n = d.desired_replicas
        assert d.current_replicas == f["current"]
        # Bounds always win.
        assert p.min_replicas <= n <= p.max_replicas, d.reason
        # Never scale down while panicking.
        if d.panic:
            assert n >= min(f["current"], p.max_replicas), d.reason
        # Never zero while requests are buffered (or any demand is seen).
        if f["demand"]:
            assert n >= 1, d.reason
        # At zero with requests buffered: activation scale at once.
        if f["current"] == 0 and o.buffered_requests > 0:
            assert n >= min(max(1, p.activation_scale), p.max_replicas), d.reason
            assert d.cold_start and "cold start: " in d.reason
        # Missing or stale metrics: no scale-down, never to zero.
        assert d.stale_metrics == f["stale"]
        if f["stale"]:
            assert n >= min(f["current"], p.max_replicas), d.reason
        # Scale-down rate: at most from ready to floor(ready / rate).
        floor_ = math.floor(max(1, f["ready"]) / p.max_scale_down_rate)
        assert n >= min(floor_, p.max_replicas), d.reason
        # To zero only once the decider has wanted 0 for the grace.
        if n == 0 and f["current"] > 0:
            assert wanted_zero_since is not None, d.reason
            assert now_s - wanted_zero_since >= p.scale_to_zero_grace_s, d.reason
        # The forecast is a floor (within max).
        if forecast is not None:
            assert n >= min(math.ceil(forecast - 1e-9), p.max_replicas), d.reason
        # A readable reason that names the counts.
        assert str(d.current_replicas) in d.reason


@settings(max_examples=50, deadline=None)
@given(p=policies(), steps=st.lists(step, min_size=1, max_size=20))
def test_decider_is_deterministic(p: AutoscalingPolicy, steps: list[Any]) -> None:
    def replay() -> list[tuple[Decision, DeciderState]]:
        state = DeciderState.initial()
        out = []
        now_s = 0.0
        for dt, reps, buffered, forecast in steps:
            now_s += dt
            d, state = decide(
                ModelObservation("m", tuple(reps), buffered, forecast), p, state, now_s
            )
            out.append((d, state))
        return out

    assert replay() == replay()


def test_stale_metrics_run_the_same_floors_and_bounds() -> None:
    # Stale metrics hold the count, then the forecast, initial_replicas and max_replicas apply
    # as on the fresh path, and say so in the same words, in the same order.
    p = policy(max_replicas=3, initial_replicas=2)
    d, _ = decide(obs(ready("a", age_s=60.0), forecast=1.2), p, DeciderState.initial(), 0.0)
    assert d.stale_metrics and d.desired_replicas == 2
    assert d.reason.endswith("never scaling down on missing metrics; forecast wants 2"), d.reason
    d, _ = decide(obs(ready("a", age_s=60.0), forecast=0.5), p, DeciderState.initial(), 0.0)
    assert d.reason.endswith("; initial_replicas 2 during the first stable window"), d.reason
    d, _ = decide(obs(ready("a", age_s=60.0), forecast=7.5), p, DeciderState.initial(), 0.0)
    assert d.desired_replicas == 3
    assert d.reason.endswith("; forecast wants 8; max_replicas 3 (wanted 8)"), d.reason


def test_state_is_immutable() -> None:
    d, state = decide(obs(buffered=1), policy(), DeciderState.initial(), 0.0)
    with pytest.raises(AttributeError):
        state.samples = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        d.desired_replicas = 5  # type: ignore[misc]


# -- the front door's in-flight count: a floor under a late scrape ----------------------------


def busy(
    rid: str, in_flight: float, *, running: float = 0, age_s: float = 0.5
) -> ReplicaObservation:
    return ReplicaObservation(rid, "ready", 0, running, 0.0, age_s, in_flight)


def test_in_flight_count_scales_up_while_the_scrape_still_shows_an_idle_engine() -> None:
    # The engine's last good scrape (fresh enough) says idle; the activator has 16 outstanding.
    p = policy(target_concurrency_per_replica=1.0, stable_window_s=6.0)
    decisions, _ = run(p, every_second(0, 3, obs(busy("r0", 16))))
    assert decisions[-1].desired_replicas == 10  # max_replicas bounds 16
    assert decisions[-1].signals["concurrency"] == 16
    # Without the in-flight floor the same scrape holds one replica.
    same, _ = run(p, every_second(0, 3, obs(ready("r0"))))
    assert same[-1].desired_replicas == 1


def test_in_flight_count_scales_up_when_scrapes_are_stale() -> None:
    p = policy(target_concurrency_per_replica=2.0, metrics_stale_after_s=5.0)
    d, _ = decide(obs(busy("r0", 8, age_s=30.0)), p, DeciderState.initial(), 0.0)
    assert d.stale_metrics
    assert d.desired_replicas == 4


def test_in_flight_below_the_scraped_load_changes_nothing() -> None:
    p = policy(target_concurrency_per_replica=1.0)
    with_floor, _ = run(p, every_second(0, 3, obs(busy("r0", 1, running=4))))
    without, _ = run(p, every_second(0, 3, obs(ready("r0", running=4))))
    assert [d.desired_replicas for d in with_floor] == [d.desired_replicas for d in without]
    assert with_floor[-1].desired_replicas == 4


# -- a decision is a plain value ------------------------------------------------------------


def panicking_decision() -> Decision:
    p = AutoscalingPolicy(max_replicas=2, scale_down_delay_s=5.0, target_waiting_per_replica=2.0)
    state = DeciderState.initial()
    d: Decision | None = None
    for t, running in enumerate([1.0, 1.0, 40.0, 40.0]):
        rep = ReplicaObservation("a", "ready", 3.0, running, 0.4, 0.1)
        d, state = decide(ModelObservation("m", (rep,), 2, 1.5), p, state, float(t))
    assert d is not None
    return d


def plain_copy(d: Decision) -> Decision:
    return Decision(**{f.name: getattr(d, f.name) for f in fields(d)})


def test_reason_and_signals_are_plain_values() -> None:
    d = panicking_decision()
    assert d.panic and d.desired_replicas == 2
    assert d.reason.startswith("scale up 1 -> 2: stable 60 s wants 3 (waiting 5/2 -> 3")
    assert "; panic (panic window 6 s wants " in d.reason
    assert "; max_replicas 2 (wanted 3)" in d.reason
    assert type(d.reason) is str and type(d.signals) is dict
    assert d.signals["forecast"] == 1.5 and d.signals["buffered"] == 2.0


@pytest.mark.parametrize("reader", ["eq", "repr", "replace", "asdict", "pickle", "copy"])
def test_every_reader_sees_the_same_decision(reader: str) -> None:
    d = panicking_decision()
    readers: dict[str, Callable[[], bool]] = {
        "eq": lambda: d == plain_copy(panicking_decision()),
        "repr": lambda: repr(d) == repr(plain_copy(panicking_decision())),
        "replace": lambda: replace(d, desired_replicas=3).reason == panicking_decision().reason,
        "asdict": lambda: asdict(d) == asdict(plain_copy(panicking_decision())),
        "pickle": lambda: pickle.loads(pickle.dumps(d)) == plain_copy(panicking_decision()),
        "copy": lambda: copy.deepcopy(d) == plain_copy(panicking_decision()),
    }
    assert readers[reader]()
    assert d == plain_copy(d) and repr(d) == repr(plain_copy(d))


def test_missing_attributes_still_raise() -> None:
    d = panicking_decision()
    with pytest.raises(AttributeError, match="nonexistent"):
        d.nonexistent  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(AttributeError):
        d.reason = "x"  # type: ignore[misc]
