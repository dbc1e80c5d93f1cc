"""The GPU-memory arbiter: which engines on one GPU are awake, in an order that never overflows it.

Several engines (vLLM processes, one model each) share one GPU when its pool is shared (the
NVIDIA device plugin's time-slicing on a cluster; one machine's GPU under ``thaw up``). Each
engine needs :attr:`Want.awake_bytes` of GPU memory awake (its weights plus its KV cache: vLLM
takes ``gpu_memory_utilization`` x the GPU's memory), keeps :attr:`Want.asleep_bytes` asleep
(CUDA context and the like) and, asleep at level 1, holds its weights in the node's host RAM.
The arbiter is the one place that decides across models on one GPU; the per-model warm-pool plan
(:func:`autoscaler.warm_pool.plan_actions`) feeds it:

1. **Per model, its intent.** For each model, :func:`~autoscaler.warm_pool.plan_actions` turns
   the decider's want (how many engines awake on this GPU) into wakes (level-1 sleepers first),
   cold starts, sleeps (the least loaded, at the model's preferred level within its own host-RAM
   budget and ``max_sleeping``) and stops (starting surplus, sleepers past their time-to-live).
2. **Frees first.** Every stop and sleep of the intents, in that order; a level-1 sleep that
   would take the node's host RAM (:attr:`Gpu.host_ram_budget_bytes`) over its budget sleeps at
   level 2 instead.
3. **Then gains, in priority order** (models with requests waiting first, most waiting first,
   then the order of ``wants``): each wake and start that fits the GPU now is taken. One that
   does not fit makes room first, if room can be made: it stops sleepers (level 2 first, then the
   oldest) that still hold GPU memory, and, for a model with requests waiting, puts to sleep idle
   awake engines (no request running or waiting) of models with none waiting. Room is made only
   when it is enough; otherwise the want stays unmet (:attr:`GpuPlan.unmet`) and nothing is
   disturbed for it.

Every step is checked against a running account of GPU memory and host RAM, so in the returned
order (:attr:`GpuPlan.steps`) awake memory never exceeds the GPU and level-1 host RAM never
exceeds the budget (if the input already did, only frees run until it does not). An executor
that runs every free step before any gain also stays within the GPU: memory only falls during
the frees and ends where the plan ends. No engine is both woken and put to sleep in one plan.

Pure: frozen dataclasses in and out, time as an argument; no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from autoscaler.policy import WarmPoolConfig
from autoscaler.warm_pool import Actions, PoolReplica, plan_actions
from kernel.vocab import AWAKE_MEMORY_STATES, ReplicaState, SleepLevel

StepKind = Literal["stop", "sleep", "wake", "start"]
#: Steps that give memory back, and steps that take it.
FREE_STEPS: tuple[StepKind, ...] = ("stop", "sleep")
GAIN_STEPS: tuple[StepKind, ...] = ("wake", "start")


@dataclass(frozen=True)
class GpuEngine:
    """One engine placed on the GPU, in the shared vocabulary's states.

    ``starting``, ``ready`` and ``draining`` engines hold their model's awake memory; a
    ``sleeping`` one holds ``asleep_bytes`` of the GPU and, at level 1, its weights in host RAM.
    """

    engine_id: str
    model: str
    state: ReplicaState
    sleep_level: SleepLevel | None = None
    load: float = 0.0  # requests running + waiting at the engine
    since_s: float = 0.0  # when it entered its state (asleep since, started at)

    def __post_init__(self) -> None:
        if self.state == "sleeping" and self.sleep_level not in (1, 2):
            raise ValueError(
                f"engine {self.engine_id}: sleep_level = {self.sleep_level!r} while sleeping; "
                "accepted: 1 or 2"
            )


@dataclass(frozen=True)
class Want:
    """One model on this GPU: what the decider wants of it, and what one engine of it costs."""

    model: str
    awake: int  # engines of this model wanted awake on this GPU
    awake_bytes: int  # GPU memory one engine takes awake: weights + KV cache
    asleep_bytes: int = 0  # GPU memory one engine keeps asleep
    waiting_requests: int = 0  # requests waiting for this model with no awake engine to take them
    pool: WarmPoolConfig = field(default_factory=WarmPoolConfig)

    def __post_init__(self) -> None:
        if self.awake < 0:
            raise ValueError(f"{self.model}: awake = {self.awake}, must be >= 0")
        if self.awake_bytes <= 0:
            raise ValueError(f"{self.model}: awake_bytes = {self.awake_bytes}, must be > 0")
        if not 0 <= self.asleep_bytes <= self.awake_bytes:
            raise ValueError(
                f"{self.model}: asleep_bytes = {self.asleep_bytes}, must be in "
                f"[0, awake_bytes ({self.awake_bytes})]"
            )

    @property
    def host_ram_bytes(self) -> int:
        """Host RAM one level-1 sleeper of this model holds (its weights)."""
        return self.pool.weights_bytes


@dataclass(frozen=True)
class Gpu:
    """One GPU and the engines placed on it."""

    memory_bytes: int
    host_ram_budget_bytes: int  # the node's host RAM for this GPU's level-1 sleepers
    engines: tuple[GpuEngine, ...] = ()

    def __post_init__(self) -> None:
        if self.memory_bytes <= 0:
            raise ValueError(f"memory_bytes = {self.memory_bytes}, must be > 0")
        if self.host_ram_budget_bytes < 0:
            raise ValueError(f"host_ram_budget_bytes = {self.host_ram_budget_bytes}, must be >= 0")
        ids = [e.engine_id for e in self.engines]
        dups = sorted({i for i in ids if ids.count(i) > 1})
        if dups:
            raise ValueError(f"engine ids must be unique: {', '.join(dups)} repeat")


@dataclass(frozen=True)
class Step:
    """One action on one engine (``engine_id`` is None for a start: the executor names it)."""

    kind: StepKind
    model: str
    engine_id: str | None = None
    level: SleepLevel | None = None  # sleep steps only
    reason: str = ""

    def describe(self) -> str:
        what = self.engine_id or f"a new {self.model} engine"
        level = f" at level {self.level}" if self.level is not None else ""
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.kind} {what}{level}{why}"


@dataclass(frozen=True)
class Unmet:
    """Engines of a model wanted awake that this plan cannot give, and why."""

    model: str
    engines: int
    reason: str


@dataclass(frozen=True)
class GpuPlan:
    """The arbiter's answer: steps in a safe order, and what stays unmet."""

    steps: tuple[Step, ...] = ()
    unmet: tuple[Unmet, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.steps

    @property
    def frees(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.kind in FREE_STEPS)

    @property
    def gains(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.kind in GAIN_STEPS)

    @property
    def unmet_models(self) -> frozenset[str]:
        return frozenset(u.model for u in self.unmet)

    def actions(self, model: str) -> Actions:
        """The steps of one model as the per-model warm pool's :class:`Actions`."""
        mine = [s for s in self.steps if s.model == model]
        return Actions(
            wake=tuple(s.engine_id for s in mine if s.kind == "wake" and s.engine_id),
            start=sum(1 for s in mine if s.kind == "start"),
            sleep=tuple(
                (s.engine_id, s.level or 1) for s in mine if s.kind == "sleep" and s.engine_id
            ),
            stop=tuple(s.engine_id for s in mine if s.kind == "stop" and s.engine_id),
        )

    def describe(self) -> str:
        parts = [s.describe() for s in self.steps]
        parts += [f"{u.model}: {u.engines} unmet ({u.reason})" for u in self.unmet]
        return "; ".join(parts) or "nothing"


# -- the running account --------------------------------------------------------------------


@dataclass
class _Account:
    """GPU memory and host RAM as the plan's steps so far leave them (mutable, local)."""

    gpu: Gpu
    wants: dict[str, Want]
    state: dict[str, tuple[ReplicaState, SleepLevel | None]]
    gpu_used: int = 0
    host_used: int = 0

    @classmethod
    def of(cls, gpu: Gpu, wants: dict[str, Want]) -> _Account:
        acc = cls(gpu, wants, {e.engine_id: (e.state, e.sleep_level) for e in gpu.engines})
        for e in gpu.engines:
            acc.gpu_used += acc._gpu_bytes(e.model, e.state)
            acc.host_used += acc._host_bytes(e.model, e.state, e.sleep_level)
        return acc

    def _gpu_bytes(self, model: str, state: ReplicaState) -> int:
        w = self.wants[model]
        return w.awake_bytes if state in AWAKE_MEMORY_STATES else w.asleep_bytes

    def _host_bytes(self, model: str, state: ReplicaState, level: SleepLevel | None) -> int:
        return self.wants[model].host_ram_bytes if state == "sleeping" and level == 1 else 0

    def fits_gpu(self, extra_bytes: int) -> bool:
        return self.gpu_used + extra_bytes <= self.gpu.memory_bytes

    def fits_host(self, extra_bytes: int) -> bool:
        return self.host_used + extra_bytes <= self.gpu.host_ram_budget_bytes

    def move(
        self, engine_id: str | None, model: str, to: ReplicaState | None, level: SleepLevel | None
    ) -> None:
        """Account one engine's move to state ``to`` (None: gone); a start has no id yet."""
        before: tuple[ReplicaState | None, SleepLevel | None] = (
            self.state[engine_id] if engine_id is not None else (None, None)
        )
        b_state, b_level = before
        if b_state is not None:
            self.gpu_used -= self._gpu_bytes(model, b_state)
            self.host_used -= self._host_bytes(model, b_state, b_level)
        if to is not None:
            self.gpu_used += self._gpu_bytes(model, to)
            self.host_used += self._host_bytes(model, to, level)
        if engine_id is not None:
            if to is None:
                del self.state[engine_id]
            else:
                self.state[engine_id] = (to, level)


# -- the plan ---------------------------------------------------------------------------------


def _pool_view(engines: Iterable[GpuEngine]) -> list[PoolReplica]:
    return [
        PoolReplica(
            replica_id=e.engine_id,
            state=e.state,
            load=e.load,
            sleep_level=e.sleep_level,
            asleep_since_s=e.since_s if e.state == "sleeping" else None,
            started_at_s=e.since_s,
        )
        for e in engines
    ]


def _check(gpu: Gpu, wants: Sequence[Want]) -> dict[str, Want]:
    by_model: dict[str, Want] = {}
    for w in wants:
        if w.model in by_model:
            raise ValueError(f"wants: model {w.model!r} is wanted twice")
        by_model[w.model] = w
    missing = sorted({e.model for e in gpu.engines} - set(by_model))
    if missing:
        raise ValueError(
            f"engines of {', '.join(missing)} are on the GPU without a want; every model with "
            "an engine needs one (awake = 0 to stop or sleep them all)"
        )
    return by_model


def arbitrate(gpu: Gpu, wants: Sequence[Want], now_s: float) -> GpuPlan:
    """The steps that bring ``gpu``'s engines towards ``wants`` without overflowing it.

    ``wants`` lists every model with an engine on the GPU or wanted there, in priority order
    (the order breaks ties between models with as many requests waiting). See the module
    docstring for the rules.
    """
    return _Planner(gpu, _check(gpu, wants), now_s).plan(wants)


class _Planner:
    """One arbitration: the intents, the running account and the steps taken so far."""

    def __init__(self, gpu: Gpu, wants: dict[str, Want], now_s: float) -> None:
        self.gpu = gpu
        self.wants = wants
        self.acc = _Account.of(gpu, wants)
        self.engines = {e.engine_id: e for e in gpu.engines}
        self.intents: dict[str, Actions] = {
            model: plan_actions(
                w.awake, _pool_view(e for e in gpu.engines if e.model == model), w.pool, now_s
            )
            for model, w in wants.items()
        }
        #: Sleepers some model's intent wakes: never stopped to make room.
        self.to_wake = {rid for intent in self.intents.values() for rid in intent.wake}
        self.steps: list[Step] = []
        self.touched: set[str] = set()

    def plan(self, wants: Sequence[Want]) -> GpuPlan:
        # 1. Frees: stops of awake engines, sleeps, then stops of sleepers.
        for w in wants:
            intent = self.intents[w.model]
            for rid in intent.stop:
                if self.acc.state[rid][0] in AWAKE_MEMORY_STATES:
                    self.stop(rid, "surplus")
            for rid, level in intent.sleep:
                self.sleep(rid, 1 if level == 1 else 2, "surplus")
        for w in wants:
            for rid in self.intents[w.model].stop:
                if rid not in self.touched:
                    self.stop(rid, "sleeper past its time-to-live or beyond max_sleeping")
        # 2. Gains, in priority order, making room where it can be made.
        unmet: list[Unmet] = []
        order = sorted(range(len(wants)), key=lambda i: (-wants[i].waiting_requests, i))
        for i in order:
            left = self.gain(wants[i])
            if left:
                free = self.gpu.memory_bytes - self.acc.gpu_used
                unmet.append(
                    Unmet(
                        wants[i].model,
                        left,
                        f"one engine needs {wants[i].awake_bytes} bytes of GPU memory awake; "
                        f"{free} free after every sleep and stop allowed",
                    )
                )
        return GpuPlan(steps=tuple(self.steps), unmet=tuple(unmet))

    def gain(self, w: Want) -> int:
        """Take the model's wakes, then its starts, while they fit; return how many did not."""
        intent = self.intents[w.model]
        todo: list[str | None] = [*intent.wake, *([None] * intent.start)]
        for n, rid in enumerate(todo):
            need = w.awake_bytes - (w.asleep_bytes if rid is not None else 0)
            if not self.acc.fits_gpu(need):
                self.make_room(w, need)
            if not self.acc.fits_gpu(need):
                return len(todo) - n
            if rid is not None:
                level = self.acc.state[rid][1]
                self.steps.append(
                    Step("wake", w.model, rid, reason=f"wanted; asleep at level {level}")
                )
                self.acc.move(rid, w.model, "starting", None)
                self.touched.add(rid)
            else:
                self.steps.append(Step("start", w.model, reason="wanted; no sleeper to wake"))
                self.acc.move(None, w.model, "starting", None)
        return 0

    def stop(self, engine_id: str, reason: str) -> None:
        model = self.engines[engine_id].model
        self.steps.append(Step("stop", model, engine_id, reason=reason))
        self.acc.move(engine_id, model, None, None)
        self.touched.add(engine_id)

    def sleep(self, engine_id: str, level: SleepLevel, reason: str) -> None:
        model = self.engines[engine_id].model
        if level == 1 and not self.acc.fits_host(self.wants[model].host_ram_bytes):
            level, reason = 2, f"{reason}; the node's host RAM for level-1 sleepers is full"
        self.steps.append(Step("sleep", model, engine_id, level, reason))
        self.acc.move(engine_id, model, "sleeping", level)
        self.touched.add(engine_id)

    def make_room(self, want: Want, need: int) -> None:
        """Stop sleepers, then (for a model with requests waiting) sleep idle engines of models
        with none waiting, until ``need`` fits; nothing unless all of them together make it fit."""
        state = self.acc.state
        sleepers = sorted(
            (
                e
                for e in self.engines.values()
                if e.engine_id not in self.touched
                and e.engine_id not in self.to_wake
                and state.get(e.engine_id, (None, None))[0] == "sleeping"
                and self.wants[e.model].asleep_bytes > 0
            ),
            key=lambda e: (-(state[e.engine_id][1] or 1), e.since_s, e.engine_id),
        )
        idle: list[GpuEngine] = []
        if want.waiting_requests > 0:
            idle = sorted(
                (
                    e
                    for e in self.engines.values()
                    if e.engine_id not in self.touched
                    and e.model != want.model
                    and state.get(e.engine_id, (None, None))[0] == "ready"
                    and e.load == 0
                    and self.wants[e.model].waiting_requests == 0
                ),
                key=lambda e: (e.since_s, e.engine_id),
            )
        freeable = sum(self.wants[e.model].asleep_bytes for e in sleepers)
        for e in idle:
            w = self.wants[e.model]
            freeable += w.awake_bytes - (w.asleep_bytes if w.pool.enabled else 0)
        if not self.acc.fits_gpu(need - freeable):
            return
        for e in sleepers:
            if self.acc.fits_gpu(need):
                return
            self.stop(e.engine_id, f"makes room for {want.model}")
        for e in idle:
            if self.acc.fits_gpu(need):
                return
            pool = self.wants[e.model].pool
            reason = f"idle; makes room for {want.model} ({want.waiting_requests} waiting)"
            if pool.enabled:
                self.sleep(e.engine_id, pool.sleep_level, reason)
            else:
                self.stop(e.engine_id, reason + "; its warm pool is off")


__all__ = [
    "FREE_STEPS",
    "GAIN_STEPS",
    "Gpu",
    "GpuEngine",
    "GpuPlan",
    "Step",
    "StepKind",
    "Unmet",
    "Want",
    "arbitrate",
]
