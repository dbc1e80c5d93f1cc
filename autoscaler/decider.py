"""The decider: how many replicas a model should have now. Pure — no I/O, no clock, no globals.

``decide(obs, policy, state, now_s) -> (decision, state)``: the observation of one model (its
replicas' engine metrics and the requests buffered at the activator), its
:class:`~autoscaler.policy.AutoscalingPolicy`, the decider's previous immutable state and the time
(seconds on any monotonic clock) in; a :class:`Decision` with a reason a person can read and the
next state out. The local stack, the simulator and the Knative controller all call this one
function; only the adapters that fill :class:`ModelObservation` differ.

The steps, in order (Knative KPA semantics, ``pkg/autoscaler/scaling/autoscaler.go``, with vLLM
signals instead of request concurrency alone):

1. Signals. Each enabled target turns an observed *total* into replicas: ``ceil(total / target)``.
   ``waiting`` = engines' waiting requests + activator-buffered ones; ``concurrency`` = running +
   waiting + buffered; ``kv_cache`` = the sum of ready replicas' KV usage (= ready x average) over
   the target ratio (counted only while something runs or waits: an idle engine's KV blocks
   are cache). Totals are averaged over the stable window and over the panic window
   (Knative averages the metric, then divides by the target); each window's desired count is the
   largest over the signals.
2. Rates. Both counts are kept within ``[floor(ready / max_scale_down_rate),
   ceil(ready x max_scale_up_rate)]`` with ``ready`` at least 1.
3. Panic. Panic starts when the panic window asks for ``panic_threshold_pct`` of the ready count,
   is extended while that holds, and ends one stable window after it last held. While panicking
   the count never goes down (not below the panic maximum, nor below the current count).
4. Activation scale, scale-down delay (the largest count over the delay window), the forecast
   (a floor), ``initial_replicas`` (a floor during the first stable window).
5. Scale to zero only after ``scale_to_zero_grace_s`` without demand (no waiting, running or
   buffered request); until then one replica stays.
6. Cold start (:func:`cold_start_decision`): at zero replicas with requests buffered, at least
   ``max(1, activation_scale)`` at once.
7. Bounds: ``min_replicas`` and ``max_replicas`` always win.

Stale or missing metrics on any ready replica: the window is not fed with half a picture; the
decider holds the current count (never down, never to zero) and only scales up for the demand it
can still see (buffered requests, fresh replicas). Starting replicas count as current capacity,
so a cold start in flight is not repeated.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, NamedTuple

from autoscaler.policy import AutoscalingPolicy
from kernel.vocab import ReplicaState

#: Tolerance on ``ceil`` so that an average of exactly the target is one replica, not two.
_EPS = 1e-9


@dataclass(frozen=True)
class ReplicaObservation:
    """One replica as the adapter saw it. Metric fields are None when not (yet) scraped."""

    replica_id: str
    state: ReplicaState
    num_requests_waiting: float | None
    num_requests_running: float | None
    kv_cache_usage_ratio: float | None
    scrape_age_s: float | None
    #: Requests the front door (activator) has outstanding at this replica now: fresh without a
    #: scrape, so a floor under the scraped running + waiting (the excess counts as waiting). A
    #: busy engine answers ``/metrics`` late; without this floor a burst would look like an idle
    #: replica until the next good scrape. None: not known (the simulator's exact metrics).
    in_flight_requests: float | None = None


@dataclass(frozen=True)
class ModelObservation:
    """Everything the decider sees of one model at one instant."""

    model: str
    replicas: tuple[ReplicaObservation, ...]
    buffered_requests: int
    forecast_replicas: float | None = None


@dataclass(frozen=True)
class Decision:
    """What the decider wants for one model, and why.

    ``current_replicas`` is ready + starting (sleeping and draining replicas are not capacity).
    ``signals`` holds, for logs and metrics, each enabled signal's desired count over the stable
    window (``waiting``, ``concurrency``, ``kv_cache``), the window results (``stable``,
    ``panic``), ``buffered`` and, when given, ``forecast``. For decisions :func:`decide` makes,
    ``reason`` and ``signals`` are built on first read (then kept): a plain str and dict to every
    reader, paid for only by those that read them.
    """

    model: str
    desired_replicas: int
    current_replicas: int
    reason: str
    panic: bool
    stale_metrics: bool
    cold_start: bool
    signals: Mapping[str, float] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        """True when the decision asks for a different replica count."""
        return self.desired_replicas != self.current_replicas

    if not TYPE_CHECKING:  # for mypy, ``reason`` and ``signals`` stay plain fields

        def __getattr__(self, name: str) -> object:
            # Reached only for an attribute the instance lacks. :func:`decide` leaves ``reason``
            # and ``signals`` unset and keeps their parts in ``_parts`` (see ``_deferred``):
            # formatting them costs more than the rest of a decision, and most decisions are
            # never logged. Each is built on first read and kept, so every reader (logs, eq,
            # repr, ``dataclasses.replace``) sees the same str and dict as before.
            parts = self.__dict__.get("_parts")
            if parts is None or name not in ("reason", "signals"):
                raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")
            value = _reason_of(parts) if name == "reason" else _signals_of(parts)
            self.__dict__[name] = value
            return value

    @classmethod
    def _deferred(
        cls,
        model: str,
        desired_replicas: int,
        current_replicas: int,
        panic: bool,
        cold_start: bool,
        parts: _Parts,
    ) -> Decision:
        """A non-stale decision whose ``reason`` and ``signals`` are built from ``parts`` when
        first read. Fills ``__dict__`` in one update instead of calling the frozen dataclass's
        ``__init__`` (one ``object.__setattr__`` a field); keep the fields in step with it."""
        d = object.__new__(cls)
        d.__dict__.update(
            model=model,
            desired_replicas=desired_replicas,
            current_replicas=current_replicas,
            panic=panic,
            stale_metrics=False,
            cold_start=cold_start,
            _parts=parts,
        )
        return d


#: One sample of the observed totals: (time_s, waiting, concurrency, kv_usage_sum).
Sample = tuple[float, float, float, float]


@dataclass(frozen=True)
class DeciderState:
    """The decider's memory for one model; immutable, replaced by each :func:`decide`.

    The stable window (Knative's metric buckets) is kept as parallel columns, oldest first:
    ``sample_times_s`` and the observed totals ``waiting_samples``, ``concurrency_samples``,
    ``kv_usage_samples`` (columns, so that sums and trims run in C). ``panic_since_s``: when panic
    last held (Knative's panicTime), None when calm. ``max_panic_replicas``: the most replicas
    asked for during this panic. ``idle_since_s``: start of the current stretch without demand,
    None while there is demand. ``delay_times_s`` / ``delay_desired``: the counts wanted within
    the scale-down delay. ``started_s``: the first decision's time.
    """

    sample_times_s: tuple[float, ...] = ()
    waiting_samples: tuple[float, ...] = ()
    concurrency_samples: tuple[float, ...] = ()
    kv_usage_samples: tuple[float, ...] = ()
    panic_since_s: float | None = None
    max_panic_replicas: int = 0
    idle_since_s: float | None = None
    delay_times_s: tuple[float, ...] = ()
    delay_desired: tuple[int, ...] = ()
    started_s: float | None = None

    @classmethod
    def initial(cls) -> DeciderState:
        """The state before the first decision."""
        return cls()

    @classmethod
    def _of(
        cls,
        sample_times_s: tuple[float, ...],
        waiting_samples: tuple[float, ...],
        concurrency_samples: tuple[float, ...],
        kv_usage_samples: tuple[float, ...],
        panic_since_s: float | None,
        max_panic_replicas: int,
        idle_since_s: float | None,
        delay_times_s: tuple[float, ...],
        delay_desired: tuple[int, ...],
        started_s: float | None,
    ) -> DeciderState:
        """``DeciderState(...)`` for :func:`decide`, at half the cost: a frozen dataclass's
        ``__init__`` sets each field through ``object.__setattr__``; this fills ``__dict__`` in
        one update. Same instance, same fields; keep the two in step."""
        s = object.__new__(cls)
        s.__dict__.update(
            sample_times_s=sample_times_s,
            waiting_samples=waiting_samples,
            concurrency_samples=concurrency_samples,
            kv_usage_samples=kv_usage_samples,
            panic_since_s=panic_since_s,
            max_panic_replicas=max_panic_replicas,
            idle_since_s=idle_since_s,
            delay_times_s=delay_times_s,
            delay_desired=delay_desired,
            started_s=started_s,
        )
        return s

    @property
    def panicking(self) -> bool:
        return self.panic_since_s is not None

    @property
    def samples(self) -> tuple[Sample, ...]:
        """The stable window as rows: (time_s, waiting, concurrency, kv_usage_sum)."""
        return tuple(
            zip(
                self.sample_times_s,
                self.waiting_samples,
                self.concurrency_samples,
                self.kv_usage_samples,
                strict=True,
            )
        )


# -- small pure stages ----------------------------------------------------------------------


def _ceil(x: float) -> int:
    return max(0, math.ceil(x - _EPS))


def _signal_counts(
    policy: AutoscalingPolicy, waiting: float, concurrency: float, kv_sum: float
) -> dict[str, int]:
    """Each enabled target's replicas for these totals: ``ceil(total / target)``."""
    out: dict[str, int] = {}
    ceil = math.ceil
    target = policy.target_waiting_per_replica
    if target is not None:
        out["waiting"] = max(0, ceil(waiting / target - _EPS))
    target = policy.target_concurrency_per_replica
    if target is not None:
        out["concurrency"] = max(0, ceil(concurrency / target - _EPS))
    target = policy.target_kv_cache_usage_ratio
    if target is not None:
        out["kv_cache"] = max(0, ceil(kv_sum / target - _EPS))
    return out


#: A disabled signal's count in :func:`_counts`: below every real count, so ``max`` skips it
#: (the policy enables at least one target).
_OFF = -1


def _counts(
    policy: AutoscalingPolicy, waiting: float, concurrency: float, kv_sum: float
) -> tuple[int, int, int]:
    """:func:`_signal_counts` as a (waiting, concurrency, kv_cache) tuple, ``_OFF`` when off."""
    # Conditionals rather than ``max(0, ...)``: this runs twice a decision, and a builtin call
    # costs more than the arithmetic.
    ceil = math.ceil
    w = c = k = _OFF
    target = policy.target_waiting_per_replica
    if target is not None:
        w = ceil(waiting / target - _EPS)
        w = w if w > 0 else 0
    target = policy.target_concurrency_per_replica
    if target is not None:
        c = ceil(concurrency / target - _EPS)
        c = c if c > 0 else 0
    target = policy.target_kv_cache_usage_ratio
    if target is not None:
        k = ceil(kv_sum / target - _EPS)
        k = k if k > 0 else 0
    return w, c, k


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(value, high))


#: A note on the reason: a ``str.format`` template and its values, formatted only when the
#: reason is read (``"{:g}".format(x)`` is ``f"{x:g}"``).
Note = tuple[str, tuple[object, ...]]


def _notes(notes: list[Note]) -> str:
    return "".join("; " + template.format(*values) for template, values in notes)


class _Parts(NamedTuple):
    """What a non-stale decision's ``reason`` and ``signals`` are built from, on first read."""

    policy: AutoscalingPolicy
    current: int
    desired: int
    stable_counts: tuple[int, int, int]
    dspc_raw: int
    dppc_raw: int
    averages: tuple[float, float, float]
    buffered: int
    forecast: float | None
    cold_reason: str | None
    notes: list[Note]


def _reason_of(p: _Parts) -> str:
    head = (
        f"stable {p.policy.stable_window_s:g} s wants {p.dspc_raw} ("
        + _describe(p.stable_counts, p.policy, *p.averages)
        + ")"
    )
    if p.cold_reason is not None:
        head = f"{p.cold_reason}; {head}"
    return _verb(p.current, p.desired) + head + _notes(p.notes)


def _signals_of(p: _Parts) -> dict[str, float]:
    signals: dict[str, float] = {}
    cw, cc, ck = p.stable_counts
    if cw != _OFF:
        signals["waiting"] = float(cw)
    if cc != _OFF:
        signals["concurrency"] = float(cc)
    if ck != _OFF:
        signals["kv_cache"] = float(ck)
    signals["stable"] = float(p.dspc_raw)
    signals["panic"] = float(p.dppc_raw)
    signals["buffered"] = float(p.buffered)
    if p.forecast is not None:
        signals["forecast"] = float(p.forecast)
    return signals


def _describe(
    counts: tuple[int, int, int],
    policy: AutoscalingPolicy,
    waiting: float,
    concurrency: float,
    kv_sum: float,
) -> str:
    """``waiting 5/2 -> 3, concurrency 12/10 -> 2``: each enabled signal's total, target and
    count (``counts`` from :func:`_counts`)."""
    cw, cc, ck = counts
    parts = []
    if cw != _OFF:
        parts.append(f"waiting {waiting:.4g}/{policy.target_waiting_per_replica:g} -> {cw}")
    if cc != _OFF:
        parts.append(
            f"concurrency {concurrency:.4g}/{policy.target_concurrency_per_replica:g} -> {cc}"
        )
    if ck != _OFF:
        parts.append(f"kv_cache {kv_sum:.4g}/{policy.target_kv_cache_usage_ratio:g} -> {ck}")
    return ", ".join(parts)


def _why_stale(r: ReplicaObservation, limit_s: float) -> str:
    if r.scrape_age_s is None or r.num_requests_waiting is None:
        return f"replica {r.replica_id} has no metrics yet"
    if r.num_requests_running is None or r.kv_cache_usage_ratio is None:
        return f"replica {r.replica_id} has no metrics yet"
    return (
        f"replica {r.replica_id} last scraped {r.scrape_age_s:.1f} s ago "
        f"(stale after {limit_s:g} s)"
    )


def cold_start_decision(obs: ModelObservation, policy: AutoscalingPolicy) -> Decision | None:
    """The scale-from-zero path: no ready or starting replica and requests buffered.

    Returns a decision for ``max(1, activation_scale, min_replicas)`` replicas (within
    ``max_replicas``) at once — no window, no delay — or None when the model is not at zero or
    nothing is buffered.
    """
    if obs.buffered_requests <= 0:
        return None
    for r in obs.replicas:
        if r.state in ("ready", "starting"):
            return None
    desired = _clamp(max(1, policy.activation_scale, policy.min_replicas), 1, policy.max_replicas)
    return Decision(
        model=obs.model,
        desired_replicas=desired,
        current_replicas=0,
        reason=f"cold start: {obs.buffered_requests} buffered",
        panic=False,
        stale_metrics=False,
        cold_start=True,
        signals={"buffered": float(obs.buffered_requests)},
    )


# -- the decision ---------------------------------------------------------------------------


def decide(
    obs: ModelObservation, policy: AutoscalingPolicy, state: DeciderState, now_s: float
) -> tuple[Decision, DeciderState]:
    """Decide the replica count of one model at ``now_s``; see the module docstring."""
    n_ready = n_starting = 0
    waiting = running = kv_sum = 0.0
    limit_s = policy.metrics_stale_after_s
    stale_replica: ReplicaObservation | None = None
    for r in obs.replicas:
        if r.state == "ready":
            n_ready += 1
            w, run, kv, age = (
                r.num_requests_waiting,
                r.num_requests_running,
                r.kv_cache_usage_ratio,
                r.scrape_age_s,
            )
            if w is None or run is None or kv is None or age is None or age > limit_s:
                stale_replica = stale_replica or r
            if w is not None:
                waiting += w
            if run is not None:
                running += run
            if kv is not None:
                kv_sum += kv
            if r.in_flight_requests is not None:
                unseen = r.in_flight_requests - (w or 0.0) - (run or 0.0)
                if unseen > 0:
                    waiting += unseen
        elif r.state == "starting":
            n_starting += 1
    current = n_ready + n_starting
    buffered = obs.buffered_requests if obs.buffered_requests > 0 else 0
    waiting += buffered
    concurrency = waiting + running
    started_s = state.started_s if state.started_s is not None else now_s

    ready_base = n_ready if n_ready > 1 else 1
    max_up = math.ceil(policy.max_scale_up_rate * ready_base)
    max_down = math.floor(ready_base / policy.max_scale_down_rate)
    cold = cold_start_decision(obs, policy) if current == 0 and buffered > 0 else None

    if stale_replica is not None:
        return _decide_stale(
            obs, policy, state, now_s, _why_stale(stale_replica, limit_s), current, max_up, cold,
            _signal_counts(policy, waiting, concurrency, kv_sum),
            started_s,
        )  # fmt: skip

    demand = concurrency > 0
    if demand:
        idle_since_s: float | None = None
    else:
        idle_since_s = state.idle_since_s if state.idle_since_s is not None else now_s
        # With nothing running or waiting, KV blocks still marked used are cache, not demand;
        # counting them would keep a replica alive forever.
        kv_sum = 0.0

    # 1. Windows: keep the samples of (now - stable window, now]; average each total.
    times = state.sample_times_s
    ws, cs, ks = state.waiting_samples, state.concurrency_samples, state.kv_usage_samples
    if times and now_s < times[-1]:  # time went back: forget the future
        cut = bisect_right(times, now_s)
        times, ws, cs, ks = times[:cut], ws[:cut], cs[:cut], ks[:cut]
    i = bisect_right(times, now_s - policy.stable_window_s)
    # Concatenation copies each column twice (slice, join); ``(*t[i:], x)`` three times (via a
    # list). With ~60 samples a column, on every decision, that difference shows.
    times = times[i:] + (now_s,)  # noqa: RUF005
    ws = ws[i:] + (waiting,)  # noqa: RUF005
    cs = cs[i:] + (concurrency,)  # noqa: RUF005
    ks = ks[i:] + (kv_sum,)  # noqa: RUF005
    n = len(times)
    sw, sc, sk = sum(ws) / n, sum(cs) / n, sum(ks) / n
    j = bisect_right(times, now_s - policy.panic_window_s)
    m = n - j
    if j:
        pw, pc, pk = sum(ws[j:]) / m, sum(cs[j:]) / m, sum(ks[j:]) / m
    else:
        pw, pc, pk = sw, sc, sk
    stable_counts = _counts(policy, sw, sc, sk)
    dspc_raw = max(stable_counts)
    dppc_raw = max(_counts(policy, pw, pc, pk)) if j else dspc_raw  # j == 0: the same window

    # 2. Rates: ``_clamp`` written out (min, then max), saving four builtin calls a decision.
    dspc = max_up if max_up < dspc_raw else dspc_raw
    dspc = dspc if dspc > max_down else max_down
    dppc = max_up if max_up < dppc_raw else dppc_raw
    dppc = dppc if dppc > max_down else max_down
    notes: list[Note] = []
    if dspc != dspc_raw:
        if dspc > dspc_raw:
            notes.append(
                (
                    "scale-down limited to floor({} ready / {:g}) = {}",
                    (n_ready, policy.max_scale_down_rate, max_down),
                )
            )
        else:
            notes.append(
                (
                    "scale-up limited to ceil({:g} x {}) = {}",
                    (policy.max_scale_up_rate, ready_base, max_up),
                )
            )

    # 3. Panic.
    over = dppc_raw / ready_base >= policy.panic_threshold_pct / 100.0
    panic_since_s = state.panic_since_s
    max_panic = state.max_panic_replicas
    if over:
        panic_since_s = now_s
    elif panic_since_s is not None and now_s - panic_since_s > policy.stable_window_s:
        panic_since_s = None
        max_panic = 0
    desired = dspc
    if panic_since_s is not None:
        floor_ = max(dspc, dppc, max_panic, current)
        max_panic = max(max_panic, dspc, dppc)
        if floor_ <= dspc:
            notes.append(
                ("panic (panic window {:g} s wants {})", (policy.panic_window_s, dppc_raw))
            )
        elif over:
            notes.append(
                (
                    "panic (panic window {:g} s wants {}, >= {:g} % of {} ready): "
                    "no scale-down below {}",
                    (
                        policy.panic_window_s,
                        dppc_raw,
                        policy.panic_threshold_pct,
                        ready_base,
                        floor_,
                    ),
                )
            )
        else:
            notes.append(
                (
                    "panic (panic window {:g} s wants {}): no scale-down below {}",
                    (policy.panic_window_s, dppc_raw, floor_),
                )
            )
        desired = floor_

    # 4. Activation scale, delay, forecast, initial.
    if 0 < desired < policy.activation_scale:
        desired = policy.activation_scale
        notes.append(("activation scale {}", (policy.activation_scale,)))
    delay_times, delay_desired = state.delay_times_s, state.delay_desired
    if policy.scale_down_delay_s > 0:
        if delay_times and now_s < delay_times[-1]:
            cut = bisect_right(delay_times, now_s)
            delay_times, delay_desired = delay_times[:cut], delay_desired[:cut]
        k = bisect_right(delay_times, now_s - policy.scale_down_delay_s)
        delay_times = (*delay_times[k:], now_s)
        delay_desired = (*delay_desired[k:], desired)
        delayed = max(delay_desired)
        if delayed > desired:
            notes.append(("scale-down delay {:g} s keeps {}", (policy.scale_down_delay_s, delayed)))
            desired = delayed
    elif delay_times:
        delay_times, delay_desired = (), ()
    forecast = obs.forecast_replicas
    if forecast is not None:
        wanted = _ceil(forecast)
        if wanted > desired:
            notes.append(("forecast wants {}", (wanted,)))
            desired = wanted
    if policy.initial_replicas > desired and now_s - started_s < policy.stable_window_s:
        notes.append(
            ("initial_replicas {} during the first stable window", (policy.initial_replicas,))
        )
        desired = policy.initial_replicas

    # 5. Scale-to-zero grace.
    if desired == 0 and current > 0:
        idle_s = 0.0 if idle_since_s is None else now_s - idle_since_s
        if idle_since_s is None or idle_s < policy.scale_to_zero_grace_s:
            desired = 1
            notes.append(
                (
                    "scale-to-zero grace: idle {:.1f} s of {:g} s",
                    (idle_s, policy.scale_to_zero_grace_s),
                )
            )
        else:
            notes.append(("idle {:.1f} s >= grace {:g} s", (idle_s, policy.scale_to_zero_grace_s)))

    # 6. Cold start.
    if cold is not None and cold.desired_replicas > desired:
        desired = cold.desired_replicas

    # 7. Bounds.
    desired = _bound(desired, policy, notes)

    decision = Decision._deferred(
        obs.model,
        desired,
        current,
        panic_since_s is not None,
        current == 0 and desired > 0,
        _Parts(
            policy, current, desired, stable_counts, dspc_raw, dppc_raw, (sw, sc, sk), buffered,
            forecast, None if cold is None else cold.reason, notes,
        ),
    )  # fmt: skip
    new_state = DeciderState._of(
        sample_times_s=times,
        waiting_samples=ws,
        concurrency_samples=cs,
        kv_usage_samples=ks,
        panic_since_s=panic_since_s,
        max_panic_replicas=max_panic if panic_since_s is not None else 0,
        idle_since_s=idle_since_s,
        delay_times_s=delay_times,
        delay_desired=delay_desired,
        started_s=started_s,
    )
    return decision, new_state


def _bound(desired: int, policy: AutoscalingPolicy, notes: list[Note]) -> int:
    if desired < policy.min_replicas:
        notes.append(("min_replicas {}", (policy.min_replicas,)))
        return policy.min_replicas
    if desired > policy.max_replicas:
        notes.append(("max_replicas {} (wanted {})", (policy.max_replicas, desired)))
        return policy.max_replicas
    return desired


def _verb(current: int, desired: int) -> str:
    if desired > current:
        return f"scale up {current} -> {desired}: "
    if desired < current:
        return f"scale down {current} -> {desired}: "
    return f"hold at {current}: "


def _decide_stale(
    obs: ModelObservation,
    policy: AutoscalingPolicy,
    state: DeciderState,
    now_s: float,
    why: str,
    current: int,
    max_up: int,
    cold: Decision | None,
    counts: Mapping[str, int],
    started_s: float,
) -> tuple[Decision, DeciderState]:
    """Metrics are stale or missing: hold, never down, never to zero; scale up for what is seen.

    The windows are not fed (half a picture would drag the averages down); panic state is kept
    as it was; the idle stretch restarts, since demand is unknown.
    """
    seen = max(counts.values()) if counts else 0
    up = min(seen, max_up)
    notes: list[Note] = []
    desired = current
    if up > current:
        desired = up
        notes.append(("visible demand wants {}", (up,)))
    if state.panicking and state.max_panic_replicas > desired:
        desired = state.max_panic_replicas
        notes.append(("panic keeps {}", (desired,)))
    if obs.forecast_replicas is not None:
        wanted = _ceil(obs.forecast_replicas)
        if wanted > desired:
            notes.append(("forecast wants {}", (wanted,)))
            desired = wanted
    if policy.initial_replicas > desired and now_s - started_s < policy.stable_window_s:
        notes.append(
            ("initial_replicas {} during the first stable window", (policy.initial_replicas,))
        )
        desired = policy.initial_replicas
    if cold is not None and cold.desired_replicas > desired:
        desired = cold.desired_replicas
    desired = _bound(desired, policy, notes)
    signals: dict[str, float] = {k: float(v) for k, v in counts.items()}
    signals["buffered"] = float(max(0, obs.buffered_requests))
    if obs.forecast_replicas is not None:
        signals["forecast"] = float(obs.forecast_replicas)
    decision = Decision(
        model=obs.model,
        desired_replicas=desired,
        current_replicas=current,
        reason=_verb(current, desired)
        + f"metrics stale: {why}; never scaling down on missing metrics"
        + _notes(notes),
        panic=state.panicking,
        stale_metrics=True,
        cold_start=False,
        signals=signals,
    )
    new_state = replace(state, idle_since_s=None, started_s=started_s)
    return decision, new_state


__all__ = [
    "DeciderState",
    "Decision",
    "ModelObservation",
    "ReplicaObservation",
    "ReplicaState",
    "cold_start_decision",
    "decide",
]
