"""A decision's ``reason`` and ``signals`` are built on first read; to every reader they are the
plain str and dict a decision built field by field has."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from dataclasses import asdict, fields, replace

import pytest

from autoscaler.decider import DeciderState, Decision, ModelObservation, ReplicaObservation, decide
from autoscaler.policy import AutoscalingPolicy


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


def test_reason_and_signals_read_as_plain_values() -> None:
    d = panicking_decision()
    assert d.panic and d.desired_replicas == 2
    assert d.reason.startswith("scale up 1 -> 2: stable 60 s wants 3 (waiting 5/2 -> 3")
    assert "; panic (panic window 6 s wants " in d.reason
    assert "; max_replicas 2 (wanted 3)" in d.reason
    assert type(d.reason) is str and type(d.signals) is dict
    assert d.signals["forecast"] == 1.5 and d.signals["buffered"] == 2.0
    assert d.reason is d.reason  # built once, then kept


@pytest.mark.parametrize("first", ["eq", "repr", "replace", "asdict", "pickle", "copy"])
def test_every_reader_sees_the_same_decision(first: str) -> None:
    d = panicking_decision()
    readers: dict[str, Callable[[], bool]] = {
        "eq": lambda: d == plain_copy(panicking_decision()),
        "repr": lambda: repr(d) == repr(plain_copy(panicking_decision())),
        "replace": lambda: replace(d, desired_replicas=3).reason == panicking_decision().reason,
        "asdict": lambda: asdict(d) == asdict(plain_copy(panicking_decision())),
        "pickle": lambda: pickle.loads(pickle.dumps(d)) == plain_copy(panicking_decision()),
        "copy": lambda: copy.deepcopy(d) == plain_copy(panicking_decision()),
    }
    assert readers[first]()  # whichever reads the lazy fields first
    assert d == plain_copy(d) and repr(d) == repr(plain_copy(d))


def test_missing_attributes_still_raise() -> None:
    d = panicking_decision()
    with pytest.raises(AttributeError, match="nonexistent"):
        d.nonexistent  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(AttributeError):
        d.reason = "x"  # type: ignore[misc]


def test_the_fast_constructors_fill_every_field() -> None:
    # Decision._deferred and DeciderState._of fill __dict__ directly instead of calling the
    # dataclass __init__; a field added to the dataclass and not to them would be missing.
    state_fields = {f.name for f in fields(DeciderState)}
    assert set(DeciderState._of.__code__.co_varnames[1 : 1 + len(state_fields)]) == state_fields
    d = panicking_decision()
    _, state = decide(
        ModelObservation("m", (ReplicaObservation("a", "ready", 0.0, 1.0, 0.1, 0.1),), 0),
        AutoscalingPolicy(max_replicas=2),
        DeciderState.initial(),
        0.0,
    )
    for f in fields(Decision):
        getattr(d, f.name)  # every field reads (AttributeError if one is missing)
    assert state_fields <= set(vars(state))
