"""The decision: :func:`decide` runs the stages of :mod:`autoscaler.decider.stages` in order,
joins their notes into the reason and returns the decision with the next state. Two paths, chosen
by the signals stage: fresh metrics (windows, desired, rate limits, panic, floors, bounds)
and stale or missing metrics (hold; visible demand and the panic maximum, then the same floors
and bounds). :func:`cold_start_decision` is the scale-from-zero path on its own.
"""

from __future__ import annotations

from dataclasses import replace

from autoscaler.decider import stages
from autoscaler.decider.types import DeciderState, Decision, ModelObservation
from autoscaler.policy import AutoscalingPolicy
from kernel.vocab import LIVE_STATES


def cold_start_decision(obs: ModelObservation, policy: AutoscalingPolicy) -> Decision | None:
    """The scale-from-zero path: no ready or starting replica and requests buffered.

    Returns a decision for ``max(1, activation_scale, min_replicas)`` replicas (within
    ``max_replicas``) at once — no window, no delay — or None when the model is not at zero or
    nothing is buffered.
    """
    if obs.buffered_requests <= 0:
        return None
    if any(r.state in LIVE_STATES for r in obs.replicas):
        return None
    return Decision(
        model=obs.model,
        desired_replicas=stages.cold_start_count(policy),
        current_replicas=0,
        reason=stages.cold_start_note(obs.buffered_requests),
        panic=False,
        stale_metrics=False,
        cold_start=True,
        signals={"buffered": float(obs.buffered_requests)},
    )


def decide(
    obs: ModelObservation, policy: AutoscalingPolicy, state: DeciderState, now_s: float
) -> tuple[Decision, DeciderState]:
    """Decide the replica count of one model at ``now_s``; see :mod:`autoscaler.decider`."""
    ready, starting, totals, buffered, stale = stages.signals(obs, policy.metrics_stale_after_s)
    current = ready + starting
    started_s = state.started_s if state.started_s is not None else now_s
    if stale is not None:
        why = stages.why_stale(stale, policy.metrics_stale_after_s)
        return _decide_stale(obs, policy, state, now_s, started_s, why, ready, current, totals)

    window, stable_avg, panic_avg = stages.windows(
        (
            state.sample_times_s,
            state.waiting_samples,
            state.concurrency_samples,
            state.kv_usage_samples,
        ),
        now_s,
        totals,
        policy,
    )
    stable_counts, want_stable, want_panic = stages.desired(policy, stable_avg, panic_avg)

    # The guard rails: each may move the count, and says why in a note (None: it did not).
    stable, panic_count, rate_note = stages.rate_limits(want_stable, want_panic, ready, policy)
    desired, panic_since_s, max_panic, panic_note = stages.panic(
        stable,
        panic_count,
        want_panic,
        current,
        ready,
        state.panic_since_s,
        state.max_panic_replicas,
        now_s,
        policy,
    )
    desired, activation_note = stages.activation_floor(desired, policy.activation_scale)
    desired, delay_times, delay_counts, delay_note = stages.scale_down_delay(
        desired, state.delay_times_s, state.delay_desired, now_s, policy.scale_down_delay_s
    )
    desired, cold_note, forecast_note, initial_note = stages.floors(
        desired, obs.forecast_replicas, current, buffered, now_s, started_s, policy
    )
    desired, bound_note = stages.bounds(desired, policy)

    head = stages.describe(want_stable, stable_counts, stable_avg, policy)
    if cold_note is not None:
        head = f"{cold_note}; {head}"
    notes = (
        rate_note, panic_note, activation_note, delay_note, forecast_note, initial_note,
        bound_note,
    )  # fmt: skip
    decision = Decision(
        obs.model,
        desired,
        current,
        stages.reason(current, desired, head, notes),
        panic_since_s is not None,  # panic
        False,  # stale_metrics
        current == 0 and desired > 0,  # cold_start
        stages.signal_values(
            stable_counts, want_stable, want_panic, buffered, obs.forecast_replicas
        ),
    )
    times, ws, cs, ks = window
    new_state = DeciderState(  # positional, in field order: a third cheaper than keywords
        times, ws, cs, ks,  # the stable window
        panic_since_s, max_panic,
        delay_times, delay_counts, started_s,
    )  # fmt: skip
    return decision, new_state


def _decide_stale(
    obs: ModelObservation,
    policy: AutoscalingPolicy,
    state: DeciderState,
    now_s: float,
    started_s: float,
    why: str,
    ready: int,
    current: int,
    totals: stages.Totals,
) -> tuple[Decision, DeciderState]:
    """Metrics are stale or missing (``why``): hold, never down, never to zero; scale up for
    the demand that is seen.

    The windows are not fed (half a picture would drag the averages down); panic state is kept
    as it was.
    """
    seen, largest, _ = stages.desired(policy, totals, None)  # over what is seen now
    desired, visible_note = stages.visible_demand(current, largest, ready, policy)
    desired, panic_note = stages.panic_hold(desired, state.panicking, state.max_panic_replicas)
    # No cold start here: a ready replica is stale, so current > 0 (buffered requests are in the
    # totals, and so in ``seen``).
    desired, _, forecast_note, initial_note = stages.floors(
        desired, obs.forecast_replicas, current, 0, now_s, started_s, policy
    )
    desired, bound_note = stages.bounds(desired, policy)

    head = f"metrics stale: {why}; never scaling down on missing metrics"
    notes = (visible_note, panic_note, forecast_note, initial_note, bound_note)
    decision = Decision(
        model=obs.model,
        desired_replicas=desired,
        current_replicas=current,
        reason=stages.reason(current, desired, head, notes),
        panic=state.panicking,
        stale_metrics=True,
        cold_start=False,
        signals=stages.signal_values(
            seen, None, None, max(0, obs.buffered_requests), obs.forecast_replicas
        ),
    )
    return decision, replace(state, started_s=started_s)
