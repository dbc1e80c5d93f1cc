"""Which Knative revision the gateway sends each model's requests to: one, chosen per tick.

Pure: the controller's view of the revisions of Thaw's class (:class:`RevisionCandidate`, one per
PodAutoscaler) and the policy's pools come in; one :class:`ModelRoute` per model comes out. No
I/O, no clock.

The choice, per model, among its revisions that Knative may route to (``spec.reachability`` not
``Unreachable``: Knative's Route no longer sends traffic to an Unreachable revision, and neither
does the gateway):

1. **Warm first.** If any candidate has a ready pod, only those with ready pods are considered:
   moving a model's traffic to a cold pool would cold-start it while capacity sits ready.
2. **Placement** (:func:`autoscaler.placement.choose`) picks among the candidates' pools: the
   model must fit a replica's GPU memory, a cold choice needs room for one more replica on the
   pool (replicas of every model on it count), then the cheapest per unit served. The node cache
   is not visible from here: every pool ranks as the same load tier. A pool missing from the
   policy ranks after every known one.
3. **Within the pool**, the candidate with the newest configuration generation (then name) wins:
   with several Reachable revisions of one Service (a traffic split), the gateway sends to one.

The result is stable: a model's route changes only when its revision's last pod goes away, a
newer revision appears, or the revision becomes Unreachable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from autoscaler.placement import PlacementModel, PlacementPool, choose

#: ``spec.reachability`` of a PA that Knative's Route no longer sends traffic to.
UNREACHABLE = "Unreachable"


@dataclass(frozen=True)
class QueueEndpoint:
    """One ready pod of a revision as its private EndpointSlice lists it: its queue-proxy."""

    address: str
    port: int
    pod: str = ""


@dataclass(frozen=True)
class RevisionCandidate:
    """What the gateway needs of one revision of Thaw's class (one PodAutoscaler).

    ``public_service``: the revision's public Service (the SKS's ``serviceName``; Knative names
    it after the revision); in Proxy mode its endpoints are Knative's activators. ``replicas``:
    the pods the revision holds on its pool (ready or starting), which count against the pool's
    capacity. ``generation``: the revision's configuration generation (newer wins in a pool).
    """

    namespace: str
    revision: str
    model: str
    pool: str | None
    reachability: str
    ready: tuple[QueueEndpoint, ...]
    public_service: str
    replicas: int = 0
    generation: int = 0

    @property
    def reachable(self) -> bool:
        return self.reachability != UNREACHABLE


@dataclass(frozen=True)
class PoolInfo:
    """A pool as placement ranks it (from the policy's ``cluster.pools``)."""

    name: str
    gpu_memory_bytes: int
    gpus_per_replica: int
    cost_per_hour_usd: float
    max_replicas: int


@dataclass(frozen=True)
class ModelRoute:
    """The one revision a model's requests go to, and why."""

    model: str
    revision: RevisionCandidate
    reason: str


def _newest(cands: Iterable[RevisionCandidate]) -> RevisionCandidate:
    return max(cands, key=lambda c: (c.generation, c.revision))


def choose_route(
    model: str,
    candidates: Sequence[RevisionCandidate],
    pools: Sequence[PoolInfo],
    used: Mapping[str, int],
    weights_bytes: int | None = None,
) -> ModelRoute | None:
    """The route of ``model`` among ``candidates`` (its revisions), or None when none is
    reachable. ``used``: replicas on each pool, all models together."""
    reachable = [c for c in candidates if c.model == model and c.reachable]
    if not reachable:
        return None
    warm = [c for c in reachable if c.ready]
    pick = warm or reachable
    state = "ready pods" if warm else "no ready pod anywhere"
    by_pool: dict[str | None, list[RevisionCandidate]] = {}
    for c in pick:
        by_pool.setdefault(c.pool, []).append(c)
    known = {p.name: p for p in pools}
    placement_pools = [
        PlacementPool(
            name=p.name,
            gpu_memory_bytes=p.gpu_memory_bytes,
            cost_per_hour_usd=p.cost_per_hour_usd,
            capacity_replicas=p.max_replicas,
            gpus_per_replica=p.gpus_per_replica,
        )
        for name in sorted(n for n in by_pool if n is not None and n in known)
        for p in (known[name],)
    ]
    pm = PlacementModel(name=model, weights_bytes=weights_bytes or 1)
    reason = ""
    pool: str | None = None
    if placement_pools:
        # A warm revision needs no new replica: capacity does not rule it out.
        choice = choose(pm, placement_pools, {} if warm else used)
        if choice.placement is None and not warm:
            choice = choose(pm, placement_pools, {})  # every pool full: wait where it is cheapest
        if choice.placement is not None:
            pool = choice.placement.pool
            reason = choice.reason
    if pool is None:
        unknown = sorted((n for n in by_pool if n not in known), key=lambda n: n or "")
        pool = unknown[0] if unknown else sorted(n for n in by_pool if n is not None)[0]
        reason = f"pool {pool or '(none)'}: not ranked by placement (not in cluster.pools)"
    chosen = _newest(by_pool[pool])
    return ModelRoute(model, chosen, f"{chosen.namespace}/{chosen.revision} ({state}); {reason}")


def choose_routes(
    candidates: Sequence[RevisionCandidate],
    pools: Sequence[PoolInfo],
    weights_bytes: Mapping[str, int | None] | None = None,
) -> dict[str, ModelRoute]:
    """One route per model that has a reachable revision, by model name."""
    used: dict[str, int] = {}
    for c in candidates:
        if c.pool is not None:
            used[c.pool] = used.get(c.pool, 0) + c.replicas
    weights = weights_bytes or {}
    by_model: dict[str, list[RevisionCandidate]] = {}
    for c in candidates:
        by_model.setdefault(c.model, []).append(c)
    out: dict[str, ModelRoute] = {}
    for model in sorted(by_model):
        route = choose_route(model, by_model[model], pools, used, weights.get(model))
        if route is not None:
            out[model] = route
    return out
