"""EngineCore's plan-free stepping (the simulator's) against plan_step/finish_step (the
emulator's): the same admissions, tokens, first-token and finish times, KV accounting."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine.perf_model import EngineCore, EnginePerf, Sequence

PERF = EnginePerf(
    prefill_tokens_per_s=5000.0,
    decode_base_s=0.02,
    decode_per_seq_s=0.001,
    kv_capacity_tokens=2048,
    max_num_seqs=4,
    max_model_len_tokens=1024,
)

arrival = st.tuples(
    st.floats(0.0, 2.0, allow_nan=False), st.integers(1, 600), st.integers(1, 300)
).filter(lambda a: a[1] + a[2] <= PERF.max_model_len_tokens)


def by_plans(
    arrivals: list[tuple[float, int, int]], step_ends: list[float] | None = None
) -> list[Sequence]:
    """One step at a time, as the emulator runs the core (each step's end in ``step_ends``)."""
    core = EngineCore(PERF)
    seqs = [Sequence(str(i), p, m, t) for i, (t, p, m) in enumerate(arrivals)]
    pending = sorted(seqs, key=lambda s: s.arrival_s)
    now = 0.0
    while pending or core.waiting or core.running:
        while pending and pending[0].arrival_s <= now:
            core.add(pending.pop(0))
        plan = core.plan_step(now)
        if plan is None:
            now = pending[0].arrival_s
            continue
        core.finish_step(plan)
        now = plan.end_s
        if step_ends is not None:
            step_ends.append(now)
    return seqs


def by_runs(arrivals: list[tuple[float, int, int]]) -> list[Sequence]:
    """Identical decode steps run as one (``finish_steps``), cut where an arrival comes, as the
    simulator runs the core."""
    core = EngineCore(PERF)
    seqs = [Sequence(str(i), p, m, t) for i, (t, p, m) in enumerate(arrivals)]
    pending = sorted(seqs, key=lambda s: s.arrival_s)
    now = 0.0
    while pending or core.waiting or core.running:
        while pending and pending[0].arrival_s <= now:
            core.add(pending.pop(0))
        ahead = core.decode_steps_ahead()
        if ahead >= 2:
            step = core.step_s(len(core.running))
            # steps that end before the next arrival (at least one), then one step at a time
            steps = ahead
            if pending:
                steps = 1
                while steps < ahead and now + (steps + 1) * step < pending[0].arrival_s:
                    steps += 1
            if steps > 1:
                core.advance(steps - 1)
                now += (steps - 1) * step
            core.finish_steps(1, now + step)
            now += step
            continue
        duration = core.next_step_s()
        if duration is None:
            now = pending[0].arrival_s
            continue
        core.finish_steps(1, now + duration)
        now += duration
    return seqs


@settings(max_examples=150, deadline=None)
@given(st.lists(arrival, min_size=1, max_size=25))
def test_stepping_without_plans_matches_the_plans(arrivals: list[tuple[float, int, int]]) -> None:
    ends: list[float] = []
    a = by_plans(arrivals, ends)
    # An arrival at a step's very end (within float noise) is admitted at that step or the
    # next depending on how the end was summed (k additions, or one multiplication): a tie, not
    # a difference of the two ways of stepping.
    assume(all(abs(t - end) > 1e-9 for t, _, _ in arrivals for end in ends))
    b = by_runs(arrivals)
    for x, y in zip(a, b, strict=True):
        assert x.generated_tokens == y.generated_tokens == x.max_tokens
        assert x.first_token_s is not None and y.first_token_s is not None
        assert abs(x.first_token_s - y.first_token_s) < 1e-9
        assert x.finished_s is not None and y.finished_s is not None
        assert abs(x.finished_s - y.finished_s) < 1e-9


def test_finish_steps_is_advance_then_finish_step() -> None:
    """``finish_steps(k, end)`` leaves the core exactly as ``advance(k - 1)`` and a plan's
    ``finish_step`` at ``end`` do (first tokens, finishes, KV tokens, reservations)."""
    cores = [EngineCore(PERF), EngineCore(PERF)]
    for core in cores:
        for i, (p, m) in enumerate([(100, 5), (300, 9), (50, 7)]):
            core.add(Sequence(str(i), p, m, 0.0))
    plan = cores[0].plan_step(0.0)
    assert plan is not None
    assert cores[1].next_step_s() == plan.duration_s
    first = cores[0].finish_step(plan).first_tokens
    got_first, done = cores[1].finish_steps(1, plan.end_s)
    assert [s.request_id for s in got_first] == [s.request_id for s in first] == ["0", "1", "2"]
    assert done == []
    # 4 identical decode steps: the first sequence (5 tokens) finishes at the last
    cores[0].advance(3)
    step = cores[0].plan_step(1.0)
    assert step is not None and step.duration_s == cores[1].step_s(3)
    res = cores[0].finish_step(step)
    got_first, done = cores[1].finish_steps(4, step.end_s)
    assert got_first == [] and [s.request_id for s in done] == ["0"] == [
        s.request_id for s in res.finished
    ]
    for x, y in zip(cores[0].running, cores[1].running, strict=True):
        assert (x.request_id, x.generated_tokens) == (y.request_id, y.generated_tokens)
    assert cores[0].kv_tokens == cores[1].kv_tokens
    assert cores[0]._reserved_tokens == cores[1]._reserved_tokens


def test_decode_steps_ahead() -> None:
    core = EngineCore(PERF)
    assert core.decode_steps_ahead() == 0  # nothing runs
    core.add(Sequence("a", 10, 6, 0.0))
    assert core.decode_steps_ahead() == 0  # waiting
    assert core.next_step_s() is not None
    assert core.decode_steps_ahead() == 0  # admitted, first token still to come
    core.finish_steps(1, 1.0)
    assert core.decode_steps_ahead() == 5
