"""Scale to zero, counted once: the scale-to-zero grace as Knative's actuation keeps it.

Knative's decider never reads the grace: it asks for 0 once its stable window has seen no
traffic, and the actuation (``pkg/reconciler/autoscaling/kpa/scaler.go``, ``handleScaleToZero``)
then marks the revision inactive, puts the activator in the path (SKS Proxy) and scales to 0 only
once the revision has been inactive for ``scale-to-zero-grace-period`` *and* the activator is
known to be in the path (its probe). Until then the replicas stay.

Thaw's three runtimes share that one rule through :func:`grace_step`, which takes the facts as
data: when the decider first wanted 0 (``wants_zero_since_s``, Knative's ``InactiveFor``) and
whether the front door that holds requests at zero is in the path:

- ``thaw up`` and ``thaw sim``: Thaw's activator is always in front of every model (True);
- ``thaw knative controller``: the SKS is in Proxy and Knative's networking controller reports
  ``ActivatorEndpointsPopulated`` for the latest spec (``knative.reconcile.activator_in_path``),
  and ``wants_zero_since_s`` is the PodAutoscaler's ``Active=False`` transition time.

So a model reaches zero ``scale_to_zero_grace_s`` after the decider first wants 0 on every
runtime, and the simulator prices the sequence the cluster runs. (Knative also scales to zero at
once when the SKS has already been in Proxy for the grace, its ``ProxyFor`` shortcut; Thaw does
not take it: the grace is the idle time a policy promises, whatever the path.)

Pure: no clock, no I/O; time comes in as ``now_s`` on any clock the caller keeps consistent.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from autoscaler.decider.stages import verb
from autoscaler.decider.types import Decision


@dataclass(frozen=True)
class ZeroStep:
    """The count to carry out, when the decider started wanting 0 (None while it wants more or
    the model is at 0 already), and a note for the reason (None when the grace had no say)."""

    replicas: int
    wants_zero_since_s: float | None
    note: str | None


def grace_step(
    desired: int,
    current: int,
    wants_zero_since_s: float | None,
    activator_in_path: bool,
    now_s: float,
    grace_s: float,
) -> ZeroStep:
    """From ``current`` (> 0) replicas to ``desired`` 0 only once the decider has wanted 0 for
    ``grace_s`` and the activator is in the path; until then one replica stays."""
    if desired > 0:
        return ZeroStep(desired, None, None)
    if current <= 0:
        return ZeroStep(0, None, None)
    since = now_s if wants_zero_since_s is None else wants_zero_since_s
    waited_s = max(0.0, now_s - since)
    if waited_s < grace_s:
        return ZeroStep(
            1, since, f"scale-to-zero grace: wants 0 for {waited_s:.1f} s of {grace_s:g} s"
        )
    if not activator_in_path:
        return ZeroStep(1, since, "scale-to-zero grace over: waiting for the activator in the path")
    return ZeroStep(0, since, f"wants 0 for {waited_s:.1f} s >= grace {grace_s:g} s")


def apply_grace(
    decision: Decision,
    wants_zero_since_s: float | None,
    activator_in_path: bool,
    now_s: float,
    grace_s: float,
) -> tuple[Decision, float | None]:
    """:func:`grace_step` on a decider's decision: the decision to carry out (its count and its
    reason's words adjusted when the grace had a say) and the new ``wants_zero_since_s``."""
    step = grace_step(
        decision.desired_replicas,
        decision.current_replicas,
        wants_zero_since_s,
        activator_in_path,
        now_s,
        grace_s,
    )
    if step.note is None:
        return decision, step.wants_zero_since_s
    current = decision.current_replicas
    body = decision.reason.removeprefix(verb(current, decision.desired_replicas))
    return (
        replace(
            decision,
            desired_replicas=step.replicas,
            reason=f"{verb(current, step.replicas)}{body}; {step.note}",
        ),
        step.wants_zero_since_s,
    )
