"""The decider's stages, in pipeline order: each a small pure function, values in, values out.

No stage reads a clock, keeps anything between calls or looks at more than its arguments; time
comes in as ``now_s``. A stage that may move the count takes the count so far and returns the new
one with a *note* for the decision's reason: a short phrase when it had its say, None when it
left the count alone. :mod:`autoscaler.decider.pipeline` composes them;
``tests/test_autoscaler_decider_stages.py`` holds a table per stage.

1. :func:`signals` — the observed totals of one model now (and the first stale replica).
2. :func:`windows` — the sample recorded; the stable and panic windows' averages.
3. :func:`desired` — each target's count, the largest per window.
4. :func:`rate_limits` — Knative's max scale-up and scale-down rates.
5. :func:`panic` — enter, extend, leave panic; no scale-down while in it.
6. Floors: :func:`activation_floor`, :func:`scale_down_delay`, then :func:`floors` (the
   forecast, ``initial_replicas``, the cold start).
7. :func:`bounds` — ``min_replicas`` and ``max_replicas`` always win.

The scale-to-zero grace is not a stage: like Knative, Thaw keeps it in the actuation, one rule
every runtime calls after the decider (:mod:`autoscaler.scale_to_zero`).

The stale-metrics path has two stages of its own (:func:`visible_demand`, :func:`panic_hold`),
then runs the same floors and bounds. :func:`reason` words the decision (with :func:`verb`,
:func:`describe`, :func:`why_stale`); :func:`signal_values` gives the numbers behind it.

Values passed between stages are plain tuples (a type alias names each one's fields): a decision
runs every stage, and a tuple costs a tenth of a ``NamedTuple`` to build.
"""

from __future__ import annotations

import math
from bisect import bisect_right

from autoscaler.decider.types import ModelObservation, ReplicaObservation
from autoscaler.policy import AutoscalingPolicy

#: Tolerance on ``ceil`` so that an average of exactly the target is one replica, not two.
EPS = 1e-9


def ceil_count(x: float) -> int:
    """Replicas for ``x`` replicas' worth of demand: ``ceil(x)``, within ``EPS``, at least 0."""
    n = math.ceil(x - EPS)
    return n if n > 0 else 0


# -- 1. signals -----------------------------------------------------------------------------

#: The totals ``(waiting, concurrency, kv_usage_sum)``, observed now or averaged over a window.
#: ``waiting``: the engines' waiting requests, plus in-flight requests the scrape does not show
#: yet, plus the requests buffered at the front door; ``concurrency``: ``waiting`` + the engines'
#: running requests; ``kv_usage_sum``: the ready replicas' KV-cache usage ratios summed
#: (= ready x average).
Totals = tuple[float, float, float]

#: What :func:`signals` sees of one model now: ``(ready, starting, totals, buffered,
#: stale_replica)``; ``buffered``: requests buffered at the front door (never below 0);
#: ``stale_replica``: the first ready replica whose metrics are missing or too old.
Signals = tuple[int, int, Totals, int, ReplicaObservation | None]


def signals(obs: ModelObservation, metrics_stale_after_s: float) -> Signals:
    """One pass over the replicas: ready ones carry load; starting ones are counted."""
    ready = starting = 0
    waiting = running = kv_sum = 0.0
    stale: ReplicaObservation | None = None
    for r in obs.replicas:
        if r.state == "ready":
            ready += 1
            w = r.num_requests_waiting
            run = r.num_requests_running
            kv = r.kv_cache_usage_ratio
            age = r.scrape_age_s
            if w is None or run is None or kv is None or age is None or age > metrics_stale_after_s:
                stale = stale or r
            if w is not None:
                waiting += w
            if run is not None:
                running += run
            if kv is not None:
                kv_sum += kv
            if r.in_flight_requests is not None:
                # The front door's count is fresh without a scrape: a floor under the scraped
                # running + waiting; the excess is waiting.
                unseen = r.in_flight_requests - (w or 0.0) - (run or 0.0)
                if unseen > 0:
                    waiting += unseen
        elif r.state == "starting":
            starting += 1
    buffered = obs.buffered_requests if obs.buffered_requests > 0 else 0
    waiting += buffered
    return ready, starting, (waiting, waiting + running, kv_sum), buffered, stale


# -- 2. windows -----------------------------------------------------------------------------

#: The stable window's samples as columns, oldest first: ``(times_s, waiting, concurrency,
#: kv_usage_sum)`` (the four columns of :class:`~autoscaler.decider.types.DeciderState`).
Window = tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...]]


def windows(
    window: Window, now_s: float, totals: Totals, policy: AutoscalingPolicy
) -> tuple[Window, Totals, Totals | None]:
    """Record this sample, keep those of ``(now - stable window, now]`` (forgetting any after
    ``now_s``: time went back), and average each total over the stable and the panic window
    (Knative averages the metric, then divides by the target).

    With nothing running or waiting, KV blocks still marked used are cache, not demand: the
    sample's KV total is 0 (counting it would keep a replica alive forever). A total that no
    enabled target reads is not summed: its averages are 0.0. The panic averages are None when
    the panic window holds every sample (they are then the stable ones).
    """
    waiting, concurrency, kv_sum = totals
    demand = concurrency > 0
    if not demand:
        kv_sum = 0.0
    times, ws, cs, ks = window
    if times and now_s < times[-1]:
        cut = bisect_right(times, now_s)
        times, ws, cs, ks = times[:cut], ws[:cut], cs[:cut], ks[:cut]
    i = bisect_right(times, now_s - policy.stable_window_s)
    # Concatenation copies each column twice (slice, join); ``(*t[i:], x)`` three times (via a
    # list). With ~60 samples a column, on every decision, that difference shows.
    times = times[i:] + (now_s,)  # noqa: RUF005
    ws = ws[i:] + (waiting,)  # noqa: RUF005
    cs = cs[i:] + (concurrency,)  # noqa: RUF005
    ks = ks[i:] + (kv_sum,)  # noqa: RUF005
    use_w = policy.target_waiting_per_replica is not None
    use_c = policy.target_concurrency_per_replica is not None
    use_k = policy.target_kv_cache_usage_ratio is not None
    n = len(times)
    stable = (
        sum(ws) / n if use_w else 0.0,
        sum(cs) / n if use_c else 0.0,
        sum(ks) / n if use_k else 0.0,
    )
    j = bisect_right(times, now_s - policy.panic_window_s)
    panic: Totals | None = None
    if j:
        m = n - j
        panic = (
            sum(ws[j:]) / m if use_w else 0.0,
            sum(cs[j:]) / m if use_c else 0.0,
            sum(ks[j:]) / m if use_k else 0.0,
        )
    return (times, ws, cs, ks), stable, panic


# -- 3. desired counts ----------------------------------------------------------------------

#: Replicas each target asks for, ``ceil(total / target)``: ``(waiting, concurrency,
#: kv_cache)``, None where the target is disabled.
Counts = tuple[int | None, int | None, int | None]


def desired(
    policy: AutoscalingPolicy, stable: Totals, panic: Totals | None
) -> tuple[Counts, int, int]:
    """What each window asks for, before any guard rail: each enabled target's count over the
    stable window, ``ceil(average / target)`` (the decision's ``signals``), then the largest
    count of each window. ``panic`` None: the panic window is the stable one.

    (:func:`ceil_count`, written out: this runs for every decision.)
    """
    ceil = math.ceil
    w = c = k = None
    want = want_panic = 0
    target = policy.target_waiting_per_replica
    if target is not None:
        w = ceil(stable[0] / target - EPS)
        w = want = w if w > 0 else 0
        if panic is not None:
            n = ceil(panic[0] / target - EPS)
            want_panic = n if n > 0 else 0
    target = policy.target_concurrency_per_replica
    if target is not None:
        c = ceil(stable[1] / target - EPS)
        c = c if c > 0 else 0
        want = c if c > want else want
        if panic is not None:
            n = ceil(panic[1] / target - EPS)
            want_panic = n if n > want_panic else want_panic
    target = policy.target_kv_cache_usage_ratio
    if target is not None:
        k = ceil(stable[2] / target - EPS)
        k = k if k > 0 else 0
        want = k if k > want else want
        if panic is not None:
            n = ceil(panic[2] / target - EPS)
            want_panic = n if n > want_panic else want_panic
    return (w, c, k), want, want if panic is None else want_panic


# -- 4. rate limits -------------------------------------------------------------------------


def ready_base(ready: int) -> int:
    """The ready count, at least 1: the base of both rates and of the panic threshold."""
    return ready if ready > 1 else 1


def max_scale_up(ready: int, policy: AutoscalingPolicy) -> int:
    """``ceil(ready x max_scale_up_rate)`` (Knative's max-scale-up-rate)."""
    return math.ceil(policy.max_scale_up_rate * ready_base(ready))


def rate_limits(
    stable: int, panic: int, ready: int, policy: AutoscalingPolicy
) -> tuple[int, int, str | None]:
    """Both windows' counts within ``[floor(ready / max_scale_down_rate), ceil(ready x
    max_scale_up_rate)]``, and a note when the stable one was limited."""
    base = ready if ready > 1 else 1
    max_up = math.ceil(policy.max_scale_up_rate * base)
    max_down = math.floor(base / policy.max_scale_down_rate)
    # Clamps written out (min, then max): four builtin calls cost more than the comparisons.
    limited = max_up if stable > max_up else stable
    limited = limited if limited > max_down else max_down
    panic = max_up if panic > max_up else panic
    panic = panic if panic > max_down else max_down
    if limited > stable:
        note = (
            f"scale-down limited to floor({ready} ready / {policy.max_scale_down_rate:g}) = "
            f"{max_down}"
        )
        return limited, panic, note
    if limited < stable:
        note = f"scale-up limited to ceil({policy.max_scale_up_rate:g} x {base}) = {max_up}"
        return limited, panic, note
    return limited, panic, None


# -- 5. panic -------------------------------------------------------------------------------


def panic(
    stable: int,
    panic_count: int,
    want_panic: int,
    current: int,
    ready: int,
    since_s: float | None,
    max_replicas: int,
    now_s: float,
    policy: AutoscalingPolicy,
) -> tuple[int, float | None, int, str | None]:
    """Panic starts when the panic window (``want_panic``, before the rates) asks for
    ``panic_threshold_pct`` of the ready count, is extended while that holds and ends one stable
    window after it last held. While panicking the count never goes down: not below either
    window's rate-limited count (``stable``, ``panic_count``), the panic maximum or the current
    count.

    ``since_s`` / ``max_replicas``: when panic last held (Knative's panicTime; None: calm) and the
    most replicas asked for during it. Returns the count, both for the next decision (0 replicas
    when calm) and the note.
    """
    base = ready if ready > 1 else 1
    over = want_panic / base >= policy.panic_threshold_pct / 100.0
    if over:
        since_s = now_s
    elif since_s is not None and now_s - since_s > policy.stable_window_s:
        since_s = None
    if since_s is None:
        return stable, None, 0, None
    floor_ = max(stable, panic_count, max_replicas, current)
    max_replicas = max(max_replicas, stable, panic_count)
    window_s = policy.panic_window_s
    if floor_ <= stable:
        note = f"panic (panic window {window_s:g} s wants {want_panic})"
    elif over:
        note = (
            f"panic (panic window {window_s:g} s wants {want_panic}, >= "
            f"{policy.panic_threshold_pct:g} % of {base} ready): no scale-down below {floor_}"
        )
    else:
        note = (
            f"panic (panic window {window_s:g} s wants {want_panic}): no scale-down below {floor_}"
        )
    return floor_, since_s, max_replicas, note


# -- 6. floors ------------------------------------------------------------------------------


def activation_floor(desired: int, activation_scale: int) -> tuple[int, str | None]:
    """Any count above zero is at least ``activation_scale``."""
    if 0 < desired < activation_scale:
        return activation_scale, f"activation scale {activation_scale}"
    return desired, None


def scale_down_delay(
    desired: int,
    times_s: tuple[float, ...],
    counts: tuple[int, ...],
    now_s: float,
    delay_s: float,
) -> tuple[int, tuple[float, ...], tuple[int, ...], str | None]:
    """The largest count wanted over ``(now - delay, now]`` (Knative's scale-down delay).

    ``times_s`` / ``counts``: the counts wanted (before this stage) within the delay, oldest
    first. Returns the count, the delay window with this one recorded, and the note; ``delay_s``
    0 keeps no window.
    """
    if delay_s <= 0:
        return desired, (), (), None
    if times_s and now_s < times_s[-1]:  # time went back: forget the future
        cut = bisect_right(times_s, now_s)
        times_s, counts = times_s[:cut], counts[:cut]
    k = bisect_right(times_s, now_s - delay_s)
    times_s = times_s[k:] + (now_s,)  # noqa: RUF005  (as the stable window: two copies, not three)
    counts = counts[k:] + (desired,)  # noqa: RUF005
    delayed = max(counts)
    if delayed > desired:
        return delayed, times_s, counts, f"scale-down delay {delay_s:g} s keeps {delayed}"
    return desired, times_s, counts, None


def cold_start_count(policy: AutoscalingPolicy) -> int:
    """How many replicas a cold start (zero replicas, requests buffered) asks for at once:
    ``max(1, activation_scale, min_replicas)`` within ``max_replicas``."""
    want = max(1, policy.activation_scale, policy.min_replicas)
    return max(1, min(want, policy.max_replicas))


def cold_start_note(buffered: int) -> str:
    """The words of a cold start: they lead the reason."""
    return f"cold start: {buffered} buffered"


def floors(
    desired: int,
    forecast_replicas: float | None,
    current: int,
    buffered: int,
    now_s: float,
    started_s: float,
    policy: AutoscalingPolicy,
) -> tuple[int, str | None, str | None, str | None]:
    """The floors both paths share, in order:

    - the forecast (replicas needed one cold start ahead, ``ceil``);
    - ``initial_replicas`` during the first stable window after ``started_s``;
    - the cold start: at zero replicas (``current``) with requests buffered,
      :func:`cold_start_count` at once.

    Returns the count and three notes: the cold start's (whenever it applies, raised or not: it
    leads the reason), the forecast's and the initial floor's.
    """
    cold_note = forecast_note = initial_note = None
    if forecast_replicas is not None:
        wanted = ceil_count(forecast_replicas)
        if wanted > desired:
            desired = wanted
            forecast_note = f"forecast wants {wanted}"
    initial = policy.initial_replicas
    if initial > desired and now_s - started_s < policy.stable_window_s:
        desired = initial
        initial_note = f"initial_replicas {initial} during the first stable window"
    if current == 0 and buffered > 0:
        cold_note = cold_start_note(buffered)
        desired = max(desired, cold_start_count(policy))
    return desired, cold_note, forecast_note, initial_note


# -- 7. bounds ------------------------------------------------------------------------------


def bounds(desired: int, policy: AutoscalingPolicy) -> tuple[int, str | None]:
    """``min_replicas`` and ``max_replicas`` always win."""
    if desired < policy.min_replicas:
        return policy.min_replicas, f"min_replicas {policy.min_replicas}"
    if desired > policy.max_replicas:
        return policy.max_replicas, f"max_replicas {policy.max_replicas} (wanted {desired})"
    return desired, None


# -- the stale-metrics path's own stages ----------------------------------------------------


def visible_demand(
    current: int, seen: int, ready: int, policy: AutoscalingPolicy
) -> tuple[int, str | None]:
    """With stale metrics, hold the current count; scale up, within the scale-up rate, only
    for the demand still visible: ``seen``, the largest count over the targets for the totals
    observed now (buffered requests, fresh replicas, in-flight counts)."""
    up = min(seen, max_scale_up(ready, policy))
    if up > current:
        return up, f"visible demand wants {up}"
    return current, None


def panic_hold(desired: int, panicking: bool, max_panic_replicas: int) -> tuple[int, str | None]:
    """With stale metrics during a panic, the panic maximum still holds."""
    if panicking and max_panic_replicas > desired:
        return max_panic_replicas, f"panic keeps {max_panic_replicas}"
    return desired, None


# -- words and numbers ----------------------------------------------------------------------


def verb(current: int, desired: int) -> str:
    """The reason's opening: ``scale up 1 -> 3: ``, ``scale down 3 -> 1: ``, ``hold at 1: ``."""
    if desired > current:
        return f"scale up {current} -> {desired}: "
    if desired < current:
        return f"scale down {current} -> {desired}: "
    return f"hold at {current}: "


def reason(current: int, desired: int, head: str, notes: tuple[str | None, ...]) -> str:
    """``scale up 1 -> 3: <head>; <note>; ...``: :func:`verb`, then the head, then the notes of
    the stages that had their say, in pipeline order."""
    said = "; ".join(filter(None, notes))
    if said:
        return f"{verb(current, desired)}{head}; {said}"
    return verb(current, desired) + head


def describe(want: int, c: Counts, totals: Totals, policy: AutoscalingPolicy) -> str:
    """``stable 60 s wants 3 (waiting 5/2 -> 3, concurrency 12/10 -> 2)``: what the stable
    window asks for, from each enabled target's average total, target and count."""
    cw, cc, ck = c
    waiting, concurrency, kv_usage_sum = totals
    parts = []
    if cw is not None:
        parts.append(f"waiting {waiting:.4g}/{policy.target_waiting_per_replica:g} -> {cw}")
    if cc is not None:
        parts.append(
            f"concurrency {concurrency:.4g}/{policy.target_concurrency_per_replica:g} -> {cc}"
        )
    if ck is not None:
        parts.append(f"kv_cache {kv_usage_sum:.4g}/{policy.target_kv_cache_usage_ratio:g} -> {ck}")
    return f"stable {policy.stable_window_s:g} s wants {want} ({', '.join(parts)})"


def why_stale(r: ReplicaObservation, metrics_stale_after_s: float) -> str:
    """Why the replica's metrics cannot be used."""
    if r.scrape_age_s is None or r.num_requests_waiting is None:
        return f"replica {r.replica_id} has no metrics yet"
    if r.num_requests_running is None or r.kv_cache_usage_ratio is None:
        return f"replica {r.replica_id} has no metrics yet"
    return (
        f"replica {r.replica_id} last scraped {r.scrape_age_s:.1f} s ago "
        f"(stale after {metrics_stale_after_s:g} s)"
    )


def signal_values(
    c: Counts,
    stable: int | None,
    panic: int | None,
    buffered: int,
    forecast_replicas: float | None,
) -> dict[str, float]:
    """A decision's ``signals``: each enabled target's count, then (when given) what the stable
    and the panic windows ask for, the buffered requests and (when given) the forecast."""
    cw, cc, ck = c
    out: dict[str, float] = {}
    if cw is not None:
        out["waiting"] = float(cw)
    if cc is not None:
        out["concurrency"] = float(cc)
    if ck is not None:
        out["kv_cache"] = float(ck)
    if stable is not None:
        out["stable"] = float(stable)
    if panic is not None:
        out["panic"] = float(panic)
    out["buffered"] = float(buffered)
    if forecast_replicas is not None:
        out["forecast"] = float(forecast_replicas)
    return out
