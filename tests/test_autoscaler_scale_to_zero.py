"""The scale-to-zero grace, counted once after the decider (:mod:`autoscaler.scale_to_zero`):
a table on explicit timestamps, and its effect on a decision's count and words."""

from __future__ import annotations

import pytest

from autoscaler.decider import Decision
from autoscaler.scale_to_zero import ZeroStep, apply_grace, grace_step

ROWS = [
    # (name, desired, current, wants_zero_since_s, activator_in_path, now_s, want)
    ("wanting replicas clears the stretch", 2, 2, 5.0, True, 10.0, ZeroStep(2, None, None)),
    ("already at zero: nothing to hold", 0, 0, 3.0, True, 10.0, ZeroStep(0, None, None)),
    ("the first tick wanting 0 starts the stretch; one stays", 0, 1, None, True, 10.0,
     ZeroStep(1, 10.0, "scale-to-zero grace: wants 0 for 0.0 s of 30 s")),
    ("within the grace one stays, even from more", 0, 3, 0.0, True, 29.0,
     ZeroStep(1, 0.0, "scale-to-zero grace: wants 0 for 29.0 s of 30 s")),
    ("the grace has passed, the activator in the path: to zero", 0, 1, 0.0, True, 30.0,
     ZeroStep(0, 0.0, "wants 0 for 30.0 s >= grace 30 s")),
    ("the grace has passed without the activator in the path: one stays", 0, 1, 0.0, False,
     45.0, ZeroStep(1, 0.0, "scale-to-zero grace over: waiting for the activator in the path")),
    ("no grace: to zero on the first tick wanting 0", 0, 1, None, True, 7.0,
     ZeroStep(0, 7.0, "wants 0 for 0.0 s >= grace 0 s")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("desired", "current", "since", "in_path", "now_s", "want"),
    [r[1:] for r in ROWS],
    ids=[r[0] for r in ROWS],
)
def test_grace_step(
    desired: int, current: int, since: float | None, in_path: bool, now_s: float, want: ZeroStep
) -> None:
    grace_s = 0.0 if want.note and "grace 0 s" in want.note else 30.0
    assert grace_step(desired, current, since, in_path, now_s, grace_s) == want


def decision(desired: int, current: int) -> Decision:
    verb = "scale down" if desired < current else "hold at"
    words = f"{current} -> {desired}" if desired < current else f"{current}"
    return Decision(
        "m", desired, current, f"{verb} {words}: stable 6 s wants 0", False, False, False
    )


def test_apply_grace_rewords_a_held_decision() -> None:
    d, since = apply_grace(decision(0, 1), None, True, 5.0, 30.0)
    assert (d.desired_replicas, since) == (1, 5.0)
    assert d.reason == (
        "hold at 1: stable 6 s wants 0; scale-to-zero grace: wants 0 for 0.0 s of 30 s"
    )
    d, since = apply_grace(decision(0, 1), since, True, 35.0, 30.0)
    assert (d.desired_replicas, since) == (0, 5.0)
    assert d.reason == "scale down 1 -> 0: stable 6 s wants 0; wants 0 for 30.0 s >= grace 30 s"


def test_apply_grace_leaves_other_decisions_alone() -> None:
    up = Decision("m", 3, 1, "scale up 1 -> 3: x", False, False, False)
    assert apply_grace(up, 4.0, True, 9.0, 30.0) == (up, None)
