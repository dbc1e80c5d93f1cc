"""Placement: on which GPU pool and node a new replica of a model starts.

Pure: the model, the pools (with their nodes and what each node holds) and the replicas already
placed come in; one :class:`Placement` (or the reason there is none) comes out. No I/O, no clock.

The choice, in order:

1. **Fit.** The model's weights plus its minimum KV cache must fit in the GPU memory of one
   replica on the pool: ``weights_bytes + min_kv_bytes <= gpu_memory_bytes x gpus_per_replica x
   usable_memory_ratio``. A pool the model does not fit is never chosen, whatever else it offers.
2. **Capacity.** The pool must have room for one more replica (``used < capacity_replicas``); a
   node with its own ``capacity_replicas`` must have room too.
3. **Locality.** Prefer the node the model would load from fastest: ``wake`` (a sleeping engine
   of this model is on the node) before ``local_disk`` (the node's model cache holds the weights)
   before ``remote`` (pull from the object store).
4. **Cost.** Then the lowest cost per unit of demand served: the replica's price per hour
   (``cost_per_hour_usd x gpus_per_replica``) divided by the demand it would serve, which is its
   serving rate on that pool (``serve_rate``; 1 when not given) capped at the demand that wants
   serving (``demand``; uncapped when not given). A fast, dear GPU wins only when the demand
   fills it.
5. Ties: pool order as given, then node order (deterministic).

:func:`choose` returns the placement with its reason, or none with the reason why;
:func:`place` is the short form that returns the placement or ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kernel.vocab import LOAD_TIERS, LoadTier

#: Load tiers (:mod:`kernel.vocab`) rank from fastest to slowest.
_TIER_RANK: dict[str, int] = {t: i for i, t in enumerate(LOAD_TIERS)}


@dataclass(frozen=True)
class PlacementModel:
    """What placement needs to know of a model."""

    name: str
    weights_bytes: int
    min_kv_bytes: int = 0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name = '': must be a non-empty model name")
        if self.weights_bytes <= 0:
            raise ValueError(f"{self.name}: weights_bytes = {self.weights_bytes}, must be > 0")
        if self.min_kv_bytes < 0:
            raise ValueError(f"{self.name}: min_kv_bytes = {self.min_kv_bytes}, must be >= 0")

    @property
    def needs_bytes(self) -> int:
        """GPU memory one replica needs at least: weights + minimum KV cache."""
        return self.weights_bytes + self.min_kv_bytes


@dataclass(frozen=True)
class PlacementNode:
    """One node of a pool and what it holds.

    ``sleeping``: models with a sleeping engine on the node (load tier ``wake``);
    ``cached``: models whose weights are in the node's local model cache (``local_disk``);
    any other model loads from ``remote``. ``capacity_replicas`` None: only the pool's limit.
    """

    name: str
    cached: frozenset[str] = frozenset()
    sleeping: frozenset[str] = frozenset()
    capacity_replicas: int | None = None

    def __post_init__(self) -> None:
        if self.capacity_replicas is not None and self.capacity_replicas < 0:
            raise ValueError(
                f"node {self.name}: capacity_replicas = {self.capacity_replicas}, must be >= 0"
            )

    def tier(self, model: str) -> LoadTier:
        """The tier a new replica of ``model`` on this node would load from."""
        if model in self.sleeping:
            return "wake"
        if model in self.cached:
            return "local_disk"
        return "remote"


@dataclass(frozen=True)
class PlacementPool:
    """One pool of identical GPUs.

    ``gpu_memory_bytes`` is one GPU's memory; a replica uses ``gpus_per_replica`` GPUs and at
    most ``usable_memory_ratio`` of their memory (vLLM's ``--gpu-memory-utilization``; 1.0 means
    all of it). ``cost_per_hour_usd`` is one GPU's price. ``nodes`` empty: one anonymous node that
    holds nothing (every start loads from ``remote``).
    """

    name: str
    gpu_memory_bytes: int
    cost_per_hour_usd: float
    capacity_replicas: int
    gpus_per_replica: int = 1
    nodes: tuple[PlacementNode, ...] = ()
    usable_memory_ratio: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if self.gpu_memory_bytes <= 0:
            problems.append(f"gpu_memory_bytes = {self.gpu_memory_bytes}, must be > 0")
        if self.gpus_per_replica < 1:
            problems.append(f"gpus_per_replica = {self.gpus_per_replica}, must be >= 1")
        if not (self.cost_per_hour_usd >= 0 and math.isfinite(self.cost_per_hour_usd)):
            problems.append(f"cost_per_hour_usd = {self.cost_per_hour_usd}, must be >= 0")
        if self.capacity_replicas < 0:
            problems.append(f"capacity_replicas = {self.capacity_replicas}, must be >= 0")
        if not 0 < self.usable_memory_ratio <= 1:
            problems.append(f"usable_memory_ratio = {self.usable_memory_ratio}, must be in (0, 1]")
        if problems:
            raise ValueError(f"pool {self.name}: " + "; ".join(problems))

    @property
    def replica_memory_bytes(self) -> int:
        """GPU memory one replica may use."""
        return int(self.gpu_memory_bytes * self.gpus_per_replica * self.usable_memory_ratio)

    @property
    def replica_cost_per_hour_usd(self) -> float:
        """Price of one replica for one hour."""
        return self.cost_per_hour_usd * self.gpus_per_replica


@dataclass(frozen=True)
class Placement:
    """Where one new replica goes, and why."""

    pool: str
    node: str | None
    tier: LoadTier
    cost_per_hour_usd: float
    cost_per_unit_usd: float
    reason: str


@dataclass(frozen=True)
class PlacementChoice:
    """The outcome of :func:`choose`: a placement, or None and why not."""

    placement: Placement | None
    reason: str
    rejected: tuple[tuple[str, str], ...] = field(default=())  # (pool, why)


def fits(model: PlacementModel, pool: PlacementPool) -> bool:
    """Weights plus minimum KV cache within the GPU memory one replica has on ``pool``."""
    return model.needs_bytes <= pool.replica_memory_bytes


def cost_per_unit(pool: PlacementPool, serve_rate: float, demand: float | None) -> float:
    """Replica price per hour / demand it would serve (its rate, capped at ``demand``)."""
    served = serve_rate if demand is None else min(serve_rate, demand)
    if served <= 0:
        return math.inf
    return pool.replica_cost_per_hour_usd / served


def choose(
    model: PlacementModel,
    pools: Sequence[PlacementPool],
    used: Mapping[str, int] | None = None,
    *,
    demand: float | None = None,
    serve_rate: Mapping[str, float] | None = None,
    used_nodes: Mapping[tuple[str, str], int] | None = None,
) -> PlacementChoice:
    """Choose the pool and node for one new replica of ``model``.

    ``used``: replicas already on each pool (all models); ``used_nodes``: replicas on each
    (pool, node); ``serve_rate``: demand units one replica of the model serves on each pool
    (missing pools: 1.0); ``demand``: the demand that wants serving (None: a replica's full rate
    counts). See the module docstring for the order of preference.
    """
    if demand is not None and not demand >= 0:
        raise ValueError(f"demand = {demand}, must be >= 0 or None")
    used = used or {}
    used_nodes = used_nodes or {}
    rates = serve_rate or {}
    rejected: list[tuple[str, str]] = []
    best: tuple[tuple[int, float, int, int], Placement] | None = None
    for pi, pool in enumerate(pools):
        if not fits(model, pool):
            rejected.append(
                (
                    pool.name,
                    f"does not fit: needs {model.needs_bytes} bytes (weights "
                    f"{model.weights_bytes} + min KV {model.min_kv_bytes}), a replica has "
                    f"{pool.replica_memory_bytes}",
                )
            )
            continue
        taken = used.get(pool.name, 0)
        if taken >= pool.capacity_replicas:
            rejected.append((pool.name, f"full: {taken} of {pool.capacity_replicas} replicas"))
            continue
        rate = rates.get(pool.name, 1.0)
        unit = cost_per_unit(pool, rate, demand)
        nodes: tuple[PlacementNode | None, ...] = pool.nodes or (None,)
        any_node = False
        for ni, node in enumerate(nodes):
            if node is not None and node.capacity_replicas is not None:
                if used_nodes.get((pool.name, node.name), 0) >= node.capacity_replicas:
                    continue
            any_node = True
            tier: LoadTier = node.tier(model.name) if node is not None else "remote"
            key = (_TIER_RANK[tier], unit, pi, ni)
            if best is None or key < best[0]:
                where = pool.name + (f"/{node.name}" if node is not None else "")
                placement = Placement(
                    pool=pool.name,
                    node=node.name if node is not None else None,
                    tier=tier,
                    cost_per_hour_usd=pool.replica_cost_per_hour_usd,
                    cost_per_unit_usd=unit,
                    reason=f"{where}: fits ({model.needs_bytes} <= {pool.replica_memory_bytes} "
                    f"bytes), loads from {tier}, ${unit:.4g}/h per unit served "
                    f"({taken + 1} of {pool.capacity_replicas} replicas)",
                )
                best = (key, placement)
        if not any_node:
            rejected.append((pool.name, "every node is full"))
    if best is None:
        if not pools:
            why = "no pools"
        else:
            why = "; ".join(f"{p}: {w}" for p, w in rejected)
        return PlacementChoice(None, f"{model.name}: no pool can take it ({why})", tuple(rejected))
    return PlacementChoice(best[1], best[1].reason, tuple(rejected))


def place(
    model: PlacementModel,
    pools: Sequence[PlacementPool],
    used: Mapping[str, int] | None = None,
    *,
    demand: float | None = None,
    serve_rate: Mapping[str, float] | None = None,
    used_nodes: Mapping[tuple[str, str], int] | None = None,
) -> Placement | None:
    """The placement :func:`choose` picks, or None when no pool can take the model."""
    return choose(
        model, pools, used, demand=demand, serve_rate=serve_rate, used_nodes=used_nodes
    ).placement


__all__ = [
    "Placement",
    "PlacementChoice",
    "PlacementModel",
    "PlacementNode",
    "PlacementPool",
    "choose",
    "cost_per_unit",
    "fits",
    "place",
]
