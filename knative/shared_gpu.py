"""Warm pools on the cluster: the controller's plan for the engines the GPU-memory arbiter runs.

Owns the step from what a controller tick saw (the pods of the revisions on shared pools, or of
models whose warm pool is on, and how many engines each revision's KPA wants awake) to what it
does: per GPU, the GPU-memory arbiter's plan
(:func:`autoscaler.arbiter.arbitrate`, the one every runtime runs), turned into cluster actions
and the Deployments' new scales. No I/O, no clock; the controller (:mod:`knative.controller`)
carries the actions out.

The rules, and why:

- **A GPU is a (pool, node)** on a shared pool; on a pool of ``share: 1`` every engine has a GPU
  of its own (its replica's GPUs), asleep too, so a warm pool there saves start latency and no
  GPU-hours, and a start is a GPU of its own. A shared pool runs one GPU per node (which GPU a time
  slice lands on is the NVIDIA device plugin's choice and is not in the pod; reading it from the
  kubelet's PodResources API is future work). A pod not scheduled yet, and a pod the Deployment
  asked for that does not exist yet, count as *starting* on the GPU new pods are expected on:
  the pool's GPU with the most free memory (the scheduler places them; the next tick sees where).
- **Engine states**: a pod being deleted is ``draining`` (it holds its memory until it is gone);
  an engine that says it sleeps (``GET /is_sleeping`` with Thaw's credential) is ``sleeping`` at
  the level Thaw sent (the pod annotation :data:`SLEEP_LEVEL_ANNOTATION`; 2 when unknown: a
  level-2 wake reloads the weights, which is right after either level); a ready pod is ``ready``;
  anything else is ``starting``.
- **Wants per GPU**: the engines a revision keeps awake stay where they are; more engines are
  woken where sleepers are (fewest sleepers' GPUs last), then started on the pool's GPU with the
  most free memory; fewer are taken from the GPUs with the most awake engines of the revision.
  The arbiter's "model" is the revision (``namespace/revision``): two revisions of one model are
  two Deployments.
- **Stops go through the Deployment**: Thaw marks the pods it chose with
  ``controller.kubernetes.io/pod-deletion-cost`` = :data:`STOP_DELETION_COST` and scales down.
  The ReplicaSet controller ranks pods unready before ready *before* it reads the deletion cost
  (``ActivePodsWithRanks``), so a ready pod of a revision that also has unready pods would not be
  the one deleted: Thaw then puts it to sleep at level 2 first (its memory is freed now; it is
  stopped on a later tick, once unready). A pod carrying Thaw's low deletion cost is never woken
  again: the arbiter sees it as a model wanted at 0 with its warm pool off.
- **Scale** of each revision's Deployment = its awake + asleep engines: the Deployment's replicas,
  less the stops carried out now, plus the starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from autoscaler.arbiter import Gpu, GpuEngine, GpuPlan, Want, arbitrate
from autoscaler.policy import WarmPoolConfig
from kernel.vocab import ReplicaState, SleepLevel

#: Kubernetes' annotation the ReplicaSet controller reads to choose which pods a scale-down deletes.
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
#: The cost Thaw sets on the pods it chose to stop (the lowest int32: deleted first).
STOP_DELETION_COST = -2147483648
#: Thaw's annotation on a pod it put to sleep: the level it sent (removed when woken).
SLEEP_LEVEL_ANNOTATION = "thaw.dev/sleep-level"

RevisionKey = tuple[str, str]  # (namespace, revision)
ActionKind = Literal["sleep", "wake", "stop", "start", "retire"]


@dataclass(frozen=True)
class EnginePod:
    """One pod of a revision on a shared pool, as the controller read it this tick.

    ``asleep``: what ``/is_sleeping`` answered (None: not asked or no answer); ``sleep_level``:
    Thaw's annotation; ``stopping``: it carries Thaw's low deletion cost; ``since_s``: when it
    entered its state as far as the controller knows (monotonic seconds)."""

    name: str
    revision: RevisionKey
    node: str = ""
    address: str = ""
    ready: bool = False
    deleting: bool = False
    asleep: bool | None = None
    sleep_level: SleepLevel | None = None
    stopping: bool = False
    load: float = 0.0
    since_s: float = 0.0

    @property
    def state(self) -> ReplicaState:
        if self.deleting:
            return "draining"
        if self.asleep:
            return "sleeping"
        return "ready" if self.ready else "starting"


@dataclass(frozen=True)
class RevisionWant:
    """One revision on a shared pool: its Deployment's replicas and what is wanted of it.

    ``awake``: engines wanted awake (KPA's scale for it; None: leave it as it is);
    ``awake_bytes``: one engine's GPU memory awake (:func:`knative.render.engine_bytes`);
    ``waiting``: requests queued for it at Knative's activator."""

    revision: RevisionKey
    pool: str
    spec_replicas: int
    awake: int | None
    awake_bytes: int
    waiting: int = 0
    warm_pool: WarmPoolConfig = field(default_factory=WarmPoolConfig)


@dataclass(frozen=True)
class SharedPool:
    """A pool's GPU: its memory, and the host RAM a node lends to level-1 sleepers of all
    models together (0: the largest ``warm_pool.host_ram_budget_bytes`` of the models on the
    GPU; each model also keeps within its own). ``unshared``: a pool of ``share: 1``, where
    each engine holds a GPU (its replica's GPUs) of its own, asleep too."""

    gpu_memory_bytes: int
    host_ram_budget_bytes: int = 0
    unshared: bool = False


@dataclass(frozen=True)
class Action:
    """One thing the controller does: ``sleep``/``wake``/``stop``/``retire`` a pod (``retire``:
    mark it to stop and put it to sleep at level 2 first, see the module docstring), or
    ``start`` one engine of the revision (a scale-up)."""

    kind: ActionKind
    revision: RevisionKey
    pod: str | None = None
    level: SleepLevel | None = None
    reason: str = ""


@dataclass(frozen=True)
class GpuActions:
    """One GPU's plan: the arbiter's answer and the actions it becomes."""

    gpu: tuple[str, str]  # (pool, node)
    plan: GpuPlan
    frees: tuple[Action, ...] = ()
    gains: tuple[Action, ...] = ()


@dataclass(frozen=True)
class ClusterPlan:
    """Every shared GPU's actions, and the scale each revision's Deployment gets after them
    (only revisions whose scale changes)."""

    gpus: tuple[GpuActions, ...] = ()
    scale_after_frees: Mapping[RevisionKey, int] = field(default_factory=dict)
    scale_after_gains: Mapping[RevisionKey, int] = field(default_factory=dict)

    @property
    def frees(self) -> tuple[Action, ...]:
        return tuple(a for g in self.gpus for a in g.frees)

    @property
    def gains(self) -> tuple[Action, ...]:
        return tuple(a for g in self.gpus for a in g.gains)


def _rev_id(key: RevisionKey) -> str:
    return f"{key[0]}/{key[1]}"


_STOPPING = "#stopping"


def plan_shared(
    pods: Sequence[EnginePod],
    wants: Sequence[RevisionWant],
    pools: Mapping[str, SharedPool],
    now_s: float,
) -> ClusterPlan:
    """The actions that bring the shared pools' engines to ``wants`` (see the module docstring).

    ``pods``: every pod of the revisions in ``wants`` (others are ignored); ``pools``: the
    shared pools by name (a want on another pool is ignored)."""
    by_rev = {w.revision: w for w in wants if w.pool in pools}
    mine = [p for p in pods if p.revision in by_rev]
    # Pods per GPU; unscheduled and not-yet-created pods go on the start GPU.
    gpu_of: dict[str, tuple[str, str]] = {}
    engines: dict[tuple[str, str], list[GpuEngine]] = {}
    for w in by_rev.values():
        for p in mine:
            if p.revision == w.revision and pools[w.pool].unshared:
                gpu_of[p.name] = (w.pool, p.name)  # a GPU of its own
                engines.setdefault((w.pool, p.name), [])
            elif p.revision == w.revision and p.node:
                gpu_of[p.name] = (w.pool, p.node)
                engines.setdefault((w.pool, p.node), [])
    fresh = iter(range(1 << 30))

    def used(gpu: tuple[str, str]) -> int:
        total = 0
        for p in mine:
            if gpu_of.get(p.name) == gpu and p.state != "sleeping":
                total += by_rev[p.revision].awake_bytes
        return total

    def start_gpu(pool: str) -> tuple[str, str]:
        if pools[pool].unshared:
            return (pool, f"+new-{next(fresh)}")  # every new engine gets a GPU of its own
        known = sorted(g for g in engines if g[0] == pool)
        if not known:
            return (pool, "")  # nothing scheduled yet: one unnamed GPU
        return min(known, key=lambda g: (used(g), g))

    rows: list[tuple[tuple[str, str], GpuEngine, EnginePod | None]] = []
    for w in by_rev.values():
        rev_pods = [p for p in mine if p.revision == w.revision]
        for p in rev_pods:
            gpu = gpu_of.get(p.name) or start_gpu(w.pool)
            model = _rev_id(w.revision) + (_STOPPING if p.stopping or p.deleting else "")
            level: SleepLevel | None = (p.sleep_level or 2) if p.state == "sleeping" else None
            e = GpuEngine(p.name, model, p.state, level, p.load, p.since_s)
            rows.append((gpu, e, p))
        missing = w.spec_replicas - sum(1 for p in rev_pods if not p.deleting)
        for i in range(max(0, missing)):
            gpu = start_gpu(w.pool)
            e = GpuEngine(f"{_rev_id(w.revision)}#pending-{i}", _rev_id(w.revision), "starting")
            rows.append((gpu, e, None))
    for gpu, e, _ in rows:
        engines.setdefault(gpu, []).append(e)

    # Split each revision's awake want over the GPUs.
    per_gpu: dict[tuple[str, str], dict[str, int]] = {g: {} for g in engines}
    for w in by_rev.values():
        rid = _rev_id(w.revision)
        awake = {
            g: sum(1 for e in es if e.model == rid and e.state in ("starting", "ready"))
            for g, es in engines.items()
        }
        asleep = {
            g: sum(1 for e in es if e.model == rid and e.state == "sleeping")
            for g, es in engines.items()
        }
        target = dict(awake)
        total = sum(awake.values())
        want = total if w.awake is None else w.awake
        if want > total:
            more = want - total
            for g in sorted(engines, key=lambda g: (-asleep[g], used(g), g)):
                n = min(more, asleep[g])
                target[g] += n
                more -= n
            while more:
                g = start_gpu(w.pool)
                per_gpu.setdefault(g, {})
                engines.setdefault(g, [])
                n = 1 if pools[w.pool].unshared else more
                target[g] = target.get(g, 0) + n
                more -= n
        elif want < total:
            fewer = total - want
            for g in sorted(engines, key=lambda g: (-awake[g], g)):
                n = min(fewer, awake[g])
                target[g] -= n
                fewer -= n
        for g, n in target.items():
            if n or any(e.model == rid for e in engines[g]):
                per_gpu[g][rid] = n

    out: list[GpuActions] = []
    plans: list[tuple[tuple[str, str], GpuPlan]] = []
    stops_now: dict[RevisionKey, int] = {}
    starts: dict[RevisionKey, int] = {}
    pod_of = {p.name: p for p in mine}

    def ready_somewhere(w: RevisionWant) -> bool:
        return any(p.revision == w.revision and p.state == "ready" for p in mine)

    rev_of_id = {_rev_id(w.revision): w for w in by_rev.values()}
    for g in sorted(engines):
        es = engines[g]
        pool = pools[g[0]]
        gpu_wants: list[Want] = []
        for rid, n in sorted(per_gpu.get(g, {}).items()):
            w = rev_of_id[rid]
            gpu_wants.append(
                Want(rid, n, w.awake_bytes, 0, 0 if ready_somewhere(w) else w.waiting, w.warm_pool)
            )
        for rid in sorted({e.model for e in es if e.model.endswith(_STOPPING)}):
            w = rev_of_id[rid.removesuffix(_STOPPING)]
            gpu_wants.append(Want(rid, 0, w.awake_bytes, 0, 0, WarmPoolConfig()))
        for rid in sorted({e.model for e in es} - {x.model for x in gpu_wants}):
            gpu_wants.append(Want(rid, 0, rev_of_id[rid].awake_bytes))
        host = max(
            (rev_of_id[_base(w.model)].warm_pool.host_ram_budget_bytes for w in gpu_wants),
            default=0,
        )
        host = min(host, pool.host_ram_budget_bytes) if pool.host_ram_budget_bytes else host
        # Most waiting first is the arbiter's; among equals, the order here (sorted) stands.
        plans.append((g, arbitrate(Gpu(pool.gpu_memory_bytes, host, tuple(es)), gpu_wants, now_s)))
    # Pods this plan puts to sleep turn unready: the ReplicaSet would delete them first.
    slept = {s.engine_id for _, plan in plans for s in plan.steps if s.kind == "sleep"}
    for g, plan in plans:
        frees: list[Action] = []
        gains: list[Action] = []
        for s in plan.steps:
            key = rev_of_id[_base(s.model)].revision
            pod = pod_of.get(s.engine_id or "")
            if s.kind == "sleep":
                frees.append(Action("sleep", key, s.engine_id, s.level, s.reason))
            elif s.kind == "stop":
                rw = rev_of_id[_base(s.model)]
                retire = rw.warm_pool.enabled and pod is not None and pod.ready and not pod.asleep
                if pod is not None and retire and _has_unready(mine, pod, slept):
                    frees.append(Action("retire", key, pod.name, 2, s.reason))
                else:
                    frees.append(Action("stop", key, s.engine_id if pod else None, None, s.reason))
                    stops_now[key] = stops_now.get(key, 0) + 1
            elif s.kind == "wake":
                level = pod.sleep_level if pod is not None and pod.sleep_level else 2
                gains.append(Action("wake", key, s.engine_id, level, s.reason))
            else:
                gains.append(Action("start", key, None, None, s.reason))
                starts[key] = starts.get(key, 0) + 1
        out.append(GpuActions(g, plan, tuple(frees), tuple(gains)))
    after_frees: dict[RevisionKey, int] = {}
    after_gains: dict[RevisionKey, int] = {}
    for key, w in by_rev.items():
        mid = w.spec_replicas - stops_now.get(key, 0)
        end = mid + starts.get(key, 0)
        if mid != w.spec_replicas:
            after_frees[key] = mid
        if end != mid:
            after_gains[key] = end
    return ClusterPlan(tuple(out), after_frees, after_gains)


def _base(model: str) -> str:
    return model.removesuffix(_STOPPING)


def _has_unready(pods: Sequence[EnginePod], pod: EnginePod, slept: set[str | None]) -> bool:
    """Whether the revision of ``pod`` has another pod the ReplicaSet would delete before it
    (unready now, or put to sleep by this plan)."""
    return any(
        q.revision == pod.revision
        and q.name != pod.name
        and not q.deleting
        and (not q.ready or q.asleep or q.name in slept)
        for q in pods
    )


__all__ = [
    "DELETION_COST_ANNOTATION",
    "SLEEP_LEVEL_ANNOTATION",
    "STOP_DELETION_COST",
    "Action",
    "ClusterPlan",
    "EnginePod",
    "GpuActions",
    "RevisionWant",
    "SharedPool",
    "plan_shared",
]
