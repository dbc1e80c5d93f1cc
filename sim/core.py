"""The discrete-event core of the cold-start simulator. Pure and deterministic.

Owns virtual time: a heap of events (replica ready, engine step end, replica asleep, autoscaler
tick) merged with the sorted arrivals of a trace. Per model it keeps a simulated activator buffer
(requests that arrive while no replica is ready wait there: they *waited on a cold start*) and
replicas, each an :class:`~engine.perf_model.EngineCore` (the same continuous-batching scheduler
as ``thaw emulator``). At each ``tick_s`` — and at once when a request is buffered at zero, as the
activator pokes the autoscaler — a model builds a :class:`~autoscaler.decider.ModelObservation`
from its simulated replicas, calls the real :func:`autoscaler.decider.decide`, applies the
scale-to-zero grace as every runtime does (:func:`autoscaler.scale_to_zero.apply_grace`, the
simulated activator always in the path), and turns the count into actions with the real
warm-pool planner :func:`autoscaler.warm_pool.plan_actions` (wake sleepers before starting cold
replicas; on scale-down sleep within the host-RAM budget, else stop). As the local actuator
does: a stopped replica that still has requests drains first (no new requests); a replica put
to sleep finishes its requests, then sleeps.

Replica life and costs:

- a new replica on an unshared pool (``share: 1``) takes a GPU at once and is ready after the
  fleet's derived cold-start time for the run's start tier (``local_disk`` or ``remote``); its
  engine runs at its pool's speed (:meth:`~sim.fleet.Fleet.engine_perf`: prefill rate, decode
  step, KV capacity);
- a sleeper on an unshared pool keeps its GPU (a pod holds its whole ``nvidia.com/gpu`` while its
  engine sleeps): it is billed, and no other replica can take that GPU; level 1 holds its weights
  in the pool's host RAM (falls back to level 2 when the RAM is taken), level 2 holds nothing;
  going to sleep at level 1 copies the weights out. Waking takes the derived ``wake_level1`` /
  ``wake_level2`` time on the GPU it kept;
- on a shared pool (``share: N``) every GPU has N slices; an engine, awake or asleep, holds one
  slice of one GPU, and awake it holds :func:`~sim.fleet.engine_awake_bytes` of its memory. Every
  action of a model there goes through the GPU-memory arbiter
  (:func:`autoscaler.arbiter.arbitrate`) of each GPU it touches: the model's new awake count on
  that GPU and every other model's as it is, the models' warm pools, their buffered requests and
  the node's free host RAM. Its plan is carried out in order: stops and sleeps at once (a sleeper
  finishes its requests and copies out, a stopped engine drains), and the wakes and starts wait
  until no free is in flight on that GPU (the memory is given back), then take their derived time.
  A new engine goes to a held GPU with a free slice where it fits awake (the fullest), else an
  empty GPU, else the held GPU with the least awake memory, where the arbiter may sleep idle
  engines of other models (when requests wait for it) or stop sleepers to make room; a start the
  arbiter cannot make room for is refused. A GPU is billed while any engine is on it;
- GPU time counts within the measured window: from ``SimConfig.measure_from_s`` to the last
  arrival (or ``horizon_s``, if later). Every policy is billed for the same window; requests
  still finishing after it are measured (their latency) but their GPU time is not, nor is
  ``drain_s``.

Measurement: requests before ``SimConfig.first_measured`` only prime the fleet (a warm-up whose
requests, GPU time, cold starts and samples are not reported); times in :class:`SimResult` are
seconds from ``SimConfig.measure_from_s``. A start refused for want of a free GPU counts in
``capacity_refusals`` when measured, and always when it is always-on's placement at t=0 (those
replicas are missing for the whole run).

Deciding only when the answer can change (``SimConfig.decide_every_tick`` off, the default): the
decider is a function of its observation, its state (the totals it saw within its stable window,
panic) and the time; the grace after it, of the decider's count, the live count, when the
decider first wanted 0 and the time. A model's tick is skipped, and no decider is called, when
the answer provably stays what it is and no action follows:

- *at rest*: no live replica, nothing buffered, no panic, its last answer 0 with no action (so
  no grace running: the grace holds a live replica); each further tick would feed the decider
  the same empty observation, whose zeros only lower its averages. The model is not even
  visited until a request comes or a sleeper's time-to-live ends (with a forecaster, nothing in
  the system: also until the forecast's interval or target interval changes, when the new
  forecast is made there and, if it asks for as many replicas as before, the model stays
  parked without a decision);
- *one replica, within its targets*: one live replica, no panic, no forecast, no scale-down
  delay, activation scale 1, min_replicas <= 1; every total the decider has in its stable window
  (waiting, concurrency, KV usage) and the one it would see now within one replica's target, so
  that every signal asks for at most one replica; and the decider's count known to be 1, or 0
  with the grace still holding one. 1: ``min_replicas`` 1, ``initial_replicas`` 1 in the first
  stable window, or a concurrency target and a request in the stable window (a window's
  average of a request or more asks for one replica). 0: no request in the stable window (every
  total 0) and no floor; one replica stays while the grace, counted from the first tick the
  decider wanted 0, runs; the tick where it would run out is a timer due, and decided. Without
  a concurrency target a window that saw requests may ask for 0 or 1: that tick is decided. A
  model in that state with nothing in flight (an idle replica waiting out its window and its
  grace) is not visited until a request comes or the first tick where the answer can change
  (with a forecaster: its tick is decided, and while its replica is idle and its forecast asks
  for at most one, it is parked until a new forecast is due, and stays parked while each new
  forecast asks for the same count; the grace's ``wants_zero_since_s`` is kept as for any idle
  parked model);
- *no free GPU*: no live replica and no sleeper, none of its pools shared, requests buffered
  (within one replica's targets, in the window too, so no panic), and none of its pools has a
  free GPU: the decider asks for one replica, and the start is refused (counted in
  ``capacity_refusals`` as it would be). Checked at every tick (a GPU may have come free). (A
  sleeper keeps its GPU, so its wake is never refused; on a shared pool the arbiter may make
  room, so those ticks are decided.)

A skipped tick still happened for the decider and the grace: the totals it would have seen are
recorded, and before its next call its state is brought forward as the skipped calls would have
left it (each call appends its totals to the window and drops samples older than the stable
window; at rest the scale-down delay records zeros); when the decider first wanted 0 is kept
tick by tick (a count of 1, or none live, clears it; the first 0 sets it). Same results, byte for
byte, as calling it every tick (``decide_every_tick=True``; tests and bench/sim_speed.py compare).

Policies: ``thaw`` (the policy file's autoscaling, its forecast when enabled, and warm pool),
``kpa`` (the same decider with Knative KPA's defaults, :func:`autoscaler.policy.kpa_policy`, and
no warm pool), ``always-on`` (a fixed count per model, never scaled, ready from the start) and
``predictive`` (``thaw`` with a demand forecaster for every model, fed the simulated arrivals,
whose ``forecast_replicas`` one cold start ahead the decider takes as a floor; see
:mod:`sim.predictive`). A new replica takes the pool :class:`~sim.predictive.PoolChooser` picks
(placement when the model lists several pools).

Another model's arbitration may put an idle engine to sleep or stop a sleeper: that model is then
visited again at once (a parked model is unparked), as any change it observes does.

No I/O, no clock reads; the optional ``progress`` callback is the only way out.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

from autoscaler.arbiter import Gpu, GpuEngine, GpuPlan, Want, arbitrate
from autoscaler.decider import DeciderState, ModelObservation, ReplicaObservation, decide
from autoscaler.policy import AutoscalingPolicy, WarmPoolConfig
from autoscaler.scale_to_zero import apply_grace
from autoscaler.warm_pool import Actions, PoolReplica, plan_actions
from engine.perf_model import EngineCore, EnginePerf
from engine.perf_model import Sequence as EngineSeq
from kernel.vocab import (
    AWAKE_MEMORY_STATES,
    FINE_LOAD_TIERS,
    LIVE_STATES,
    FineLoadTier,
    ReplicaState,
    wake_tier,
)
from sim.fleet import Fleet, FleetModel, cold_start_s, engine_awake_bytes, sleep_s
from sim.predictive import ForecastPlan, PoolChooser, SimForecaster
from sim.traces import Request

PolicyName = Literal["thaw", "kpa", "always-on", "predictive"]
POLICIES: tuple[PolicyName, ...] = ("thaw", "kpa", "always-on", "predictive")
_NO_WARM_POOL = WarmPoolConfig()


@dataclass(frozen=True)
class SimConfig:
    """One simulation run: which policy, for which models, ticking how often."""

    policy: PolicyName
    autoscaling: Mapping[str, AutoscalingPolicy]
    """Per trace model, the policy the decider gets (unused for ``always-on``)."""
    specs: Mapping[str, FleetModel]
    """Per trace model, the fleet model it runs as."""
    warm_pools: Mapping[str, WarmPoolConfig] = field(default_factory=dict)
    """Per trace model, its warm pool (absent: none, scaled-down replicas stop)."""
    tick_s: float = 1.0
    tier: FineLoadTier = "local_disk"
    """Where a new engine loads its weights from: ``local_disk`` or ``remote``."""
    always_on_replicas: Mapping[str, int] = field(default_factory=dict)
    """Per trace model, the fixed count for ``always-on`` (absent: 1). Started at t=0 in the
    mapping's order, round by round: every model's first replica, then every second one, ..."""
    always_on_starts: tuple[str, ...] = ()
    """``always-on``'s replicas as a start order instead (one trace model name a replica; see
    :func:`sim.sizing.fill_always_on`); when given, ``always_on_replicas`` is not used."""
    horizon_s: float = 0.0
    """Keep simulating (ticks, GPU time) at least until here (simulation time)."""
    first_measured: int = 0
    """Index of the first request that is measured; those before only warm the fleet up."""
    measure_from_s: float = 0.0
    """Simulation time where measurement starts (GPU time, cold starts, samples)."""
    sample_every_s: float = 10.0
    drain_s: float = 3600.0
    """After the last arrival (and the horizon), stop ticking this long after it even if
    requests are still buffered for a model that cannot get a GPU; they end unserved."""
    fast_forward: bool = True
    """Run identical decode steps as one event (same results; off: one event per step)."""
    decide_every_tick: bool = False
    """Call the decider for every model at every tick (the reference the default, deciding only
    when the answer can change, must match byte for byte; see the module doc)."""
    forecasts: Mapping[str, ForecastPlan] = field(default_factory=dict)
    """Per trace model, its demand forecaster (``predictive``); absent: no forecast."""
    stop_after_misses: int | None = None
    """Stop early once this many measured requests are known to have missed (rejected, or no
    first token within ``slo_ttft_s``): a capacity search needs only to know that a fleet fails
    its target. None: run to the end. Results of a stopped run are marked ``stopped_early``."""
    slo_ttft_s: Callable[[Request], float] | None = None
    """The TTFT target of a request, for ``stop_after_misses``."""


class RequestRecord(NamedTuple):
    """What happened to one served request (times in seconds)."""

    model: str
    arrival_s: float
    """From the start of measurement."""
    ttft_s: float
    e2e_s: float
    cold_start: bool
    """It arrived while its model had no ready replica and waited at the activator."""
    prompt_tokens: int = 0
    output_tokens: int = 0
    wait_s: float = 0.0
    """Time at the activator before an engine took it (0 when a replica was ready)."""


@dataclass(frozen=True)
class SimResult:
    """Everything one run measured; times are seconds from the start of measurement."""

    policy: PolicyName
    records: tuple[RequestRecord, ...]
    """The measured requests that finished."""
    rejected_requests: int
    """Measured requests the engine refuses: prompt + output over the model's context length
    (``rejected_too_long`` in the report)."""
    unserved_requests: int
    """Measured requests still unfinished at the end: their model never got a replica (no free
    GPU) within ``SimConfig.drain_s`` of the last arrival."""
    capacity_refusals: int
    """Replica starts refused for want of a free GPU: always-on's placement at t=0, then every
    refusal in the measured part."""
    cold_starts_by_tier: Mapping[str, int]
    gpu_seconds_by_pool: Mapping[str, float]
    end_s: float
    """When the simulation stopped (the last request done, or the drain's end)."""
    sample_times_s: tuple[float, ...]
    sample_replicas: tuple[int, ...]
    """Replicas holding their awake memory (starting, ready, draining, going to sleep) at each
    sample; a wake or start waiting for its shared GPU's frees is in neither series."""
    sample_sleeping: tuple[int, ...]
    """Replicas asleep at each sample (on an unshared pool a sleeper still holds its GPU)."""
    sample_demand: tuple[int, ...]
    """Requests in the system (buffered, waiting, running) at each sample."""
    events: int = 0
    """Events processed (arrivals and heap events, superseded ones included), for benchmarks."""
    decisions: int = 0
    """Calls of the decider, for benchmarks."""
    window_s: float = 0.0
    """The measured window GPU time is billed for: measurement start to the last arrival (or
    the horizon)."""
    model_classes: Mapping[str, str] = field(default_factory=dict)
    """Per trace model, the fleet model it ran as (its SLO class)."""
    unserved_prompt_tokens: tuple[int, ...] = ()
    """Prompt sizes of the unserved requests."""
    stopped_early: bool = False
    """The run stopped at ``SimConfig.stop_after_misses``: its figures cover only part of the
    trace (good enough to say that the target was missed)."""
    sample_gpus_held: tuple[int, ...] = ()
    """GPUs held at each sample: an unshared pool's GPU while its replica exists (asleep too), a
    shared pool's GPU while any engine is on it."""
    gpu_memory_peak_ratio: float = 0.0
    """The most memory in use on any shared GPU, as a share of its memory (awake engines' and
    sleepers' bytes, when each wake or start took its memory): at most 1 unless the arbiter's
    plan was carried out wrong (``gpu_memory_overflows``)."""
    gpu_memory_overflows: int = 0
    """Wakes or starts that found their shared GPU's memory short (0 unless a plan was wrong)."""


# -- mutable simulation state (private to one run) -------------------------------------------


@dataclass(slots=True)
class _Replica:
    rid: str
    pool: str
    core: EngineCore
    started_s: float
    """When it last started or began to wake (the warm pool's ``started_at_s``)."""
    state: ReplicaState = "starting"
    gpu_since_s: float | None = None
    """When it took its whole GPU (an unshared pool: held until it stops, asleep too); None on
    a shared pool, whose GPUs are billed per GPU (:class:`_Gpu`)."""
    mem: bool = False
    """It holds its awake GPU memory (starting, ready, draining, or finishing and copying out
    on its way to sleep)."""
    gpu: _Gpu | None = None
    """Its GPU on a shared pool (one slice of it, awake or asleep); None on an unshared pool."""
    pending: FineLoadTier | None = None
    """On a shared GPU: a wake or start from this tier waiting for the GPU's frees in flight
    (sleeps copying out, stops draining) to give their memory back."""
    sleep_level: int | None = None
    asleep_since_s: float | None = None
    going_to_sleep: bool = False
    """An ``_ASLEEP`` event is pending (the copy-out is under way)."""
    ram_bytes: int = 0
    """Host RAM it holds as a level-1 sleeper."""
    stopped: bool = False
    chunk: tuple[float, float, int] | None = None
    """The steps under way as one event: (start_s, step_s, steps), several when fast-forwarded
    (see ``_Sim.plan``); None while the engine has nothing to run."""
    version: int = 0
    """Bumped whenever a pending step event is superseded."""
    epoch: int = 0
    """Bumped whenever a pending ready / asleep event is superseded."""
    obs: ReplicaObservation | None = None
    """The last observation of it the decider got (reused while nothing changes)."""

    @property
    def load(self) -> int:
        return self.core.num_running + self.core.num_waiting


#: The totals the decider derives from one observation: (waiting, concurrency, kv_usage_sum).
Totals = tuple[float, float, float]
#: Ticks the decider did not see: (first tick, last tick, totals of each).
_Run = tuple[int, int, float, float, float]
_ZERO: Totals = (0.0, 0.0, 0.0)
_INF = math.inf
#: Unseen runs kept before the ones the decider's window has left are dropped (in bulk).
_FORGET_AFTER = 512


@dataclass(slots=True, eq=False)
class _Gpu:
    """One GPU of a shared pool: up to ``share`` engines (time slices) on it, awake or asleep."""

    pool: str
    index: int
    node: int
    memory_bytes: int
    share: int
    engines: list[tuple[_Model, _Replica]] = field(default_factory=list)
    held_since_s: float | None = None
    """Since when an engine has been on it (it is billed while one is)."""


@dataclass(slots=True)
class _Model:
    name: str
    index: int
    """Position in name order: models decide in this order within a tick."""
    spec: FleetModel
    policy: AutoscalingPolicy | None
    warm_pool: WarmPoolConfig
    state: DeciderState = field(default_factory=DeciderState.initial)
    replicas: list[_Replica] = field(default_factory=list)
    buffer: deque[tuple[int, Request]] = field(default_factory=deque)
    next_id: int = 0
    shared: bool = False
    """One of its pools is shared (share > 1): its engines there go through the arbiter."""
    forecaster: SimForecaster | None = None
    """Fed each arrival; gives the decider ``forecast_replicas`` (``predictive``)."""
    obs: ModelObservation | None = None
    """The last observation the decider got (reused while nothing changes)."""
    wants_zero_since_s: float | None = None
    """When the decider first wanted 0 (the scale-to-zero grace counts from it), as of the last
    tick, seen or skipped."""
    # -- deciding only when needed (see the module doc) --
    one_replica_ok: bool = False
    """Its policy allows skipping ticks with one live replica within its targets."""
    targets: Totals = (_INF, _INF, _INF)
    """Its (waiting, concurrency, kv) targets for one replica; inf where disabled."""
    unseen: list[_Run] = field(default_factory=list)
    """Skipped ticks whose totals the decider has not been given yet, oldest first."""
    last_hot_s: float = -_INF
    """The last tick (or poke) whose totals exceeded one replica's target."""
    last_demand_s: float = -_INF
    """The last tick (or poke) with a request in the system."""
    parked: Literal["", "rest", "idle"] = ""
    """Not visited at ticks: ``rest`` (at zero) or ``idle`` (one idle replica); see the doc."""
    parked_from: int = 0
    """The first tick not visited while parked."""
    due_tick: int | None = None
    """While parked: the tick at which it must be visited again (None: only on a request)."""
    zero_from_tick: int | None = None
    """While parked idle: the first parked tick whose decider wants 0 (None: none does)."""
    zero_since_s: float | None = None
    """While parked idle: ``wants_zero_since_s`` from ``zero_from_tick`` on."""
    forecast_wanted: int = -1
    """A forecasting model parked until its next forecast: the replicas its forecast asked for
    then (-1: not parked that way), and ``other_due``, the tick at which it must be visited
    whatever the forecast says (None: none)."""
    other_due: int | None = None

    def find(self, rid: str) -> _Replica | None:
        for r in self.replicas:
            if r.rid == rid:
                return r
        return None


_READY, _STEP, _TICK, _ASLEEP = 0, 1, 2, 3
_Payload = tuple[_Model, _Replica, int]


class _Stop(Exception):
    """``stop_after_misses`` reached."""


class _Sim:
    def __init__(self, requests: Sequence[Request], fleet: Fleet, cfg: SimConfig) -> None:
        self.requests = requests
        self.fleet = fleet
        self.cfg = cfg
        self.heap: list[tuple[float, int, int, _Payload | None]] = []
        self.seq = 0
        #: Per pool, GPUs a new engine may go to: free GPUs (unshared), GPUs with a free slice
        #: (shared).
        self.free_gpus = {p.name: p.count for p in fleet.pools}
        self.replica_count = 0
        self.awake_count = 0  # replicas holding their awake memory
        self.pending_count = 0  # wakes and starts waiting for their shared GPU's frees
        self.held_gpus = 0  # GPUs held (billed)
        self.free_ram = {p.name: p.host_ram_bytes * fleet.pool_nodes(p.name) for p in fleet.pools}
        #: Shared pools: their GPUs, and each node's host RAM for level-1 sleepers.
        self.shared_gpus: dict[str, list[_Gpu]] = {
            p.name: [
                _Gpu(p.name, i, i // p.gpus_per_node, p.gpu_memory_bytes, p.share)
                for i in range(p.count)
            ]
            for p in fleet.pools
            if p.share > 1
        }
        self.node_ram: dict[tuple[str, int], int] = {
            (p.name, n): p.host_ram_bytes
            for p in fleet.pools
            if p.share > 1
            for n in range(fleet.pool_nodes(p.name))
        }
        self.awake_bytes: dict[tuple[str, str], int] = {}
        self.mem_peak_ratio = 0.0
        self.mem_overflows = 0
        self.gpu_s = {p.name: 0.0 for p in fleet.pools}
        self.cold_by_tier: dict[str, int] = dict.fromkeys(FINE_LOAD_TIERS, 0)
        self.capacity_refusals = 0
        self.rejected = 0
        self.models: dict[str, _Model] = {}
        last = requests[-1].arrival_s if requests else 0.0
        self.window_end_s = max(cfg.horizon_s, last)
        for index, name in enumerate(sorted({r.model for r in requests} | set(cfg.specs))):
            if name not in cfg.specs:
                raise KeyError(f"trace model {name!r} has no fleet model")
            policy = None if cfg.policy == "always-on" else cfg.autoscaling.get(name)
            warm = cfg.warm_pools.get(name, _NO_WARM_POOL)
            m = _Model(name, index, cfg.specs[name], policy, warm)
            m.shared = any(p in self.shared_gpus for p in m.spec.pools)
            plan = cfg.forecasts.get(name)
            if plan is not None:
                m.forecaster = plan.start()
            if policy is not None:
                m.one_replica_ok = _one_replica_ok(policy, cfg.tick_s)
                m.targets = (
                    _or_inf(policy.target_waiting_per_replica),
                    _or_inf(policy.target_concurrency_per_replica),
                    _or_inf(policy.target_kv_cache_usage_ratio),
                )
            self.models[name] = m
        #: Models visited at every tick, in name order (the others are parked or always-on).
        self.awake: list[tuple[int, _Model]] = sorted(
            (m.index, m) for m in self.models.values() if m.policy is not None
        )
        #: (tick, model index, model) of parked models that must be visited at that tick.
        self.due: list[tuple[int, int, _Model]] = []
        self.chooser = PoolChooser(fleet)
        self.perfs: dict[tuple[str, str], EnginePerf] = {}
        self.first_token: list[float] = [math.nan] * len(requests)
        self.finished: list[float] = [math.nan] * len(requests)
        self.routed: list[float] = [math.nan] * len(requests)
        self.cold: list[bool] = [False] * len(requests)
        self.outstanding = 0
        self.samples_t: list[float] = []
        self.samples_r: list[int] = []
        self.samples_s: list[int] = []
        self.samples_d: list[int] = []
        self.samples_g: list[int] = []
        self.decisions = 0
        self.tick_k = -1
        # the index of the model visiting in the tick under way; past the last between ticks
        self.visiting = len(self.models)
        self.misses = 0
        self.missed: list[bool] = [False] * len(requests)
        self.miss_limit = cfg.stop_after_misses
        self.slo_of = cfg.slo_ttft_s

    def engine_perf(self, spec: FleetModel, pool: str) -> EnginePerf:
        """The model's engine on ``pool`` (the pool's GPU speed), computed once per pair."""
        key = (spec.name, pool)
        perf = self.perfs.get(key)
        if perf is None:
            perf = self.perfs[key] = self.fleet.engine_perf(spec, pool)
        return perf

    # events
    def push(self, t: float, kind: int, payload: _Payload | None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, payload))

    def count_start(self, tier: FineLoadTier, now: float) -> None:
        if now >= self.cfg.measure_from_s:
            self.cold_by_tier[tier] += 1

    # GPUs and host RAM
    def take_gpu(self, rep: _Replica, now: float) -> None:
        """An unshared pool's GPU, held (and billed) until the replica stops, asleep too."""
        self.free_gpus[rep.pool] -= 1
        self.held_gpus += 1
        rep.gpu_since_s = now

    def give_gpu(self, rep: _Replica, now: float) -> None:
        if rep.gpu_since_s is None:
            return
        self.free_gpus[rep.pool] += 1
        self.held_gpus -= 1
        self.bill(rep.pool, rep.gpu_since_s, now)
        rep.gpu_since_s = None

    def bill(self, pool: str, since_s: float, now: float) -> None:
        held = min(now, self.window_end_s) - max(since_s, self.cfg.measure_from_s)
        if held > 0:
            self.gpu_s[pool] += held

    def set_mem(self, rep: _Replica, awake: bool) -> None:
        """The replica takes (True) or gives back (False) its awake GPU memory."""
        if rep.mem == awake:
            return
        rep.mem = awake
        self.awake_count += 1 if awake else -1

    def give_ram(self, rep: _Replica) -> None:
        if rep.gpu is not None:
            self.node_ram[(rep.pool, rep.gpu.node)] += rep.ram_bytes
        else:
            self.free_ram[rep.pool] += rep.ram_bytes
        rep.ram_bytes = 0

    def take_ram(self, m: _Model, rep: _Replica) -> bool:
        """Host RAM for a level-1 sleeper (its node's on a shared pool); False when full."""
        need = m.spec.weights_bytes
        if rep.gpu is not None:
            key = (rep.pool, rep.gpu.node)
            if self.node_ram[key] < need:
                return False
            self.node_ram[key] -= need
        else:
            if self.free_ram[rep.pool] < need:
                return False
            self.free_ram[rep.pool] -= need
        rep.ram_bytes = need
        return True

    # replica lifecycle
    def new_replica(self, m: _Model, pool_name: str, now: float) -> _Replica:
        m.next_id += 1
        core = EngineCore(self.engine_perf(m.spec, pool_name))
        rep = _Replica(f"{m.name}-{m.next_id}", pool_name, core, now)
        m.replicas.append(rep)
        self.replica_count += 1
        return rep

    def start_replica(self, m: _Model, now: float, ready_now: bool) -> bool:
        pool_name = self.chooser.pick(m.spec, self.free_gpus)
        if pool_name is not None and pool_name in self.shared_gpus:
            if self.start_shared(m, pool_name, now, ready_now):
                return True
        elif pool_name is not None:
            rep = self.new_replica(m, pool_name, now)
            self.take_gpu(rep, now)
            self.set_mem(rep, True)
            if ready_now:
                rep.state = "ready"
            else:
                delay = cold_start_s(m.spec, self.fleet.pool(pool_name), self.cfg.tier)
                self.count_start(self.cfg.tier, now)
                self.push(now + delay, _READY, (m, rep, rep.epoch))
            return True
        if ready_now or now >= self.cfg.measure_from_s:
            self.capacity_refusals += 1
        return False

    def remove(self, m: _Model, rep: _Replica, now: float) -> None:
        rep.stopped = True
        rep.epoch += 1
        rep.version += 1
        m.replicas.remove(rep)
        self.replica_count -= 1
        self.set_mem(rep, False)
        if rep.pending is not None:
            rep.pending = None
            self.pending_count -= 1
        self.give_gpu(rep, now)
        self.give_ram(rep)
        g = rep.gpu
        if g is not None:
            self.leave_gpu(g, m, rep, now)
            self.try_gains(g, now)

    def wake(self, m: _Model, rep: _Replica, now: float) -> None:
        """Wake a sleeper of an unshared pool: its GPU is still its own."""
        if rep.mem:  # still finishing or copying out: cancel the sleep
            self.cancel_sleep(m, rep, now)
            return
        level = rep.sleep_level or 1
        self.give_ram(rep)
        self.set_mem(rep, True)
        rep.state = "starting"
        rep.started_s = now
        rep.sleep_level = rep.asleep_since_s = None
        rep.epoch += 1
        tier = wake_tier(level)
        self.count_start(tier, now)
        delay = cold_start_s(m.spec, self.fleet.pool(rep.pool), tier)
        self.push(now + delay, _READY, (m, rep, rep.epoch))

    def cancel_sleep(self, m: _Model, rep: _Replica, now: float) -> None:
        rep.epoch += 1
        rep.going_to_sleep = False
        rep.state = "ready"
        rep.sleep_level = rep.asleep_since_s = None
        self.give_ram(rep)
        self.route_buffer(m, now)

    def sleep(self, m: _Model, rep: _Replica, level: int, now: float) -> None:
        if level == 1 and not self.take_ram(m, rep):
            level = 2
        rep.state = "sleeping"
        rep.sleep_level = level
        rep.asleep_since_s = now
        if rep.load == 0:
            self.fall_asleep(m, rep, now)

    def fall_asleep(self, m: _Model, rep: _Replica, now: float) -> None:
        """The replica has no request left: copy the weights out, then give the memory back."""
        rep.going_to_sleep = True
        rep.epoch += 1
        delay = sleep_s(m.spec, self.fleet.pool(rep.pool), rep.sleep_level or 1)
        self.push(now + delay, _ASLEEP, (m, rep, rep.epoch))

    def asleep(self, rep: _Replica, now: float) -> None:
        """The copy-out is done: the awake memory is free (the GPU or slice stays held)."""
        rep.going_to_sleep = False
        self.set_mem(rep, False)
        if rep.gpu is not None:
            self.try_gains(rep.gpu, now)

    def stop(self, m: _Model, rep: _Replica, now: float) -> None:
        if rep.state == "draining":
            return
        if rep.load == 0:
            self.remove(m, rep, now)
            return
        rep.state = "draining"  # finishes its requests, then stops
        self.give_ram(rep)

    def idle(self, m: _Model, rep: _Replica, now: float) -> None:
        """The replica's engine has nothing left to run."""
        if rep.state == "draining":
            self.remove(m, rep, now)
        elif rep.state == "sleeping" and not rep.going_to_sleep and rep.mem:
            self.fall_asleep(m, rep, now)

    # shared GPUs: placement, the arbiter, and carrying out its plans
    def engine_bytes(self, m: _Model, pool: str) -> int:
        key = (m.spec.name, pool)
        b = self.awake_bytes.get(key)
        if b is None:
            b = self.awake_bytes[key] = engine_awake_bytes(m.spec, self.fleet.pool(pool))
        return b

    def asleep_bytes(self, m: _Model, pool: str) -> int:
        return min(m.spec.asleep_gpu_bytes, self.engine_bytes(m, pool))

    def planned_bytes(self, g: _Gpu) -> int:
        """GPU memory as the arbiter counts it: awake states their awake bytes, sleepers (on
        their way or asleep) their asleep bytes."""
        used = 0
        for mm, r in g.engines:
            awake = r.state in AWAKE_MEMORY_STATES
            used += self.engine_bytes(mm, g.pool) if awake else self.asleep_bytes(mm, g.pool)
        return used

    def join_gpu(self, g: _Gpu, m: _Model, rep: _Replica, now: float) -> None:
        if not g.engines:
            g.held_since_s = now
            self.held_gpus += 1
        g.engines.append((m, rep))
        rep.gpu = g
        if len(g.engines) == g.share:
            self.free_gpus[g.pool] -= 1

    def leave_gpu(self, g: _Gpu, m: _Model, rep: _Replica, now: float) -> None:
        if len(g.engines) == g.share:
            self.free_gpus[g.pool] += 1
        for i, (_, r) in enumerate(g.engines):
            if r is rep:
                del g.engines[i]
                break
        if not g.engines and g.held_since_s is not None:
            self.bill(g.pool, g.held_since_s, now)
            g.held_since_s = None
            self.held_gpus -= 1

    def pick_gpu(self, m: _Model, pool: str, ready_now: bool) -> _Gpu | None:
        """The GPU of a shared pool for a new engine of ``m``: a held GPU with a free slice
        where it fits awake now (the fullest: pack), else an empty GPU, else (not for
        always-on's ready engines) the held GPU with a free slice and the least awake memory,
        where the arbiter may make room by sleeping or stopping others."""
        need = self.engine_bytes(m, pool)
        best: _Gpu | None = None
        best_used = -1
        empty: _Gpu | None = None
        roomy: _Gpu | None = None
        roomy_used = 0
        for g in self.shared_gpus[pool]:
            if len(g.engines) >= g.share:
                continue
            if not g.engines:
                if empty is None:
                    empty = g
                continue
            used = self.planned_bytes(g)
            if used + need <= g.memory_bytes:
                if used > best_used:
                    best, best_used = g, used
            elif roomy is None or used < roomy_used:
                roomy, roomy_used = g, used
        if best is not None:
            return best
        if empty is not None or ready_now:
            return empty
        return roomy

    def start_shared(self, m: _Model, pool: str, now: float, ready_now: bool) -> bool:
        """A new engine of ``m`` on a GPU of shared pool ``pool``; False when refused."""
        g = self.pick_gpu(m, pool, ready_now)
        if g is None:
            return False
        if ready_now:  # always-on at t=0: it fits awake (pick_gpu checked)
            rep = self.new_replica(m, pool, now)
            self.join_gpu(g, m, rep, now)
            rep.state = "ready"
            self.set_mem(rep, True)
            self.check_memory(g)
            return True
        live = sum(1 for mm, r in g.engines if mm is m and r.state in LIVE_STATES)
        before = m.next_id
        plan = self.arbitrate_gpu(g, m, live + 1, now)
        return m.next_id > before or any(s.kind == "wake" and s.model == m.name for s in plan.steps)

    def arbitrate_gpu(self, g: _Gpu, m: _Model, awake: int, now: float) -> GpuPlan:
        """Ask the arbiter for ``g`` with ``m`` wanted at ``awake`` engines there and every
        other model on it as it is, and carry out its plan."""
        engines = []
        others: dict[str, _Model] = {}
        ram_held = 0
        for mm, r in g.engines:
            sleeping = r.state == "sleeping"
            engines.append(
                GpuEngine(
                    r.rid,
                    mm.name,
                    r.state,
                    (1 if r.sleep_level == 1 else 2) if sleeping else None,
                    float(r.load),
                    (r.asleep_since_s or 0.0) if sleeping else r.started_s,
                )
            )
            ram_held += r.ram_bytes
            if mm is not m:
                others[mm.name] = mm
        wants = [self.want(g, m, awake)]
        for name in sorted(others):
            mm = others[name]
            live = sum(1 for o, r in g.engines if o is mm and r.state in LIVE_STATES)
            wants.append(self.want(g, mm, live))
        budget = self.node_ram[(g.pool, g.node)] + ram_held
        plan = arbitrate(Gpu(g.memory_bytes, budget, tuple(engines)), wants, now)
        touched: set[str] = set()
        for step in plan.steps:
            mm = self.models[step.model]
            touched.add(mm.name)
            if step.kind == "start":
                rep = self.new_replica(mm, g.pool, now)
                self.join_gpu(g, mm, rep, now)
                rep.pending = self.cfg.tier
                self.pending_count += 1
                self.count_start(self.cfg.tier, now)
                continue
            assert step.engine_id is not None
            target = mm.find(step.engine_id)
            assert target is not None
            if step.kind == "stop":
                self.stop(mm, target, now)
            elif step.kind == "sleep":
                self.sleep(mm, target, step.level or 1, now)
            elif target.mem:  # a wake of a sleeper still finishing or copying out
                self.cancel_sleep(mm, target, now)
            else:
                level = target.sleep_level or 1
                self.give_ram(target)
                target.state = "starting"
                target.started_s = now
                target.sleep_level = target.asleep_since_s = None
                target.epoch += 1
                target.pending = wake_tier(level)
                self.pending_count += 1
                self.count_start(target.pending, now)
        self.try_gains(g, now)
        for name in touched:
            if name != m.name:
                self.touch(self.models[name])
        return plan

    def want(self, g: _Gpu, m: _Model, awake: int) -> Want:
        return Want(
            m.name,
            awake,
            self.engine_bytes(m, g.pool),
            self.asleep_bytes(m, g.pool),
            len(m.buffer),
            m.warm_pool,
        )

    def try_gains(self, g: _Gpu, now: float) -> None:
        """Carry out ``g``'s waiting wakes and starts once no free is in flight on it (every
        sleep has copied out, every stop has drained: the memory they free is free)."""
        waiting = False
        for _, r in g.engines:
            if r.mem and r.state in ("sleeping", "draining"):
                return
            if r.pending is not None:
                waiting = True
        if not waiting:
            return
        for mm, r in g.engines:
            tier = r.pending
            if tier is None:
                continue
            r.pending = None
            self.pending_count -= 1
            self.set_mem(r, True)
            delay = cold_start_s(mm.spec, self.fleet.pool(g.pool), tier)
            self.push(now + delay, _READY, (mm, r, r.epoch))
        self.check_memory(g)

    def check_memory(self, g: _Gpu) -> None:
        """The ledger of ``g`` as the engines hold it now: never over its memory."""
        used = 0
        for mm, r in g.engines:
            used += self.engine_bytes(mm, g.pool) if r.mem else self.asleep_bytes(mm, g.pool)
        ratio = used / g.memory_bytes
        if ratio > self.mem_peak_ratio:
            self.mem_peak_ratio = ratio
        if used > g.memory_bytes:
            self.mem_overflows += 1

    # requests
    def route(self, m: _Model, idx: int, req: Request, now: float) -> None:
        best: _Replica | None = None
        for r in m.replicas:
            if r.state == "ready" and (best is None or r.load < best.load):
                best = r
        if best is None:
            self.cold[idx] = True
            m.buffer.append((idx, req))
            return
        self.routed[idx] = now
        best.core.add(EngineSeq(str(idx), req.prompt_tokens, req.output_tokens, req.arrival_s))
        chunk = best.chunk
        if chunk is None:
            self.plan(m, best, now)
        elif chunk[2] > 1:
            self.split_chunk(m, best, now)

    def route_buffer(self, m: _Model, now: float) -> None:
        while m.buffer:
            idx, req = m.buffer.popleft()
            self.route(m, idx, req, now)

    def plan(self, m: _Model, rep: _Replica, now: float) -> None:
        """Plan the replica's next step, or fast-forward a run of identical decode steps.

        With nothing waiting and every running sequence past its first token, the next steps
        are identical decode steps until the first sequence finishes: they become one event
        (``chunk``) instead of one per token. An arrival splits the chunk at the step in
        progress (:meth:`split_chunk`), so admission happens at the same step boundary as
        stepping one by one would give.
        """
        core = rep.core
        rep.version += 1
        if self.cfg.fast_forward:
            k = core.decode_steps_ahead()
            if k >= 2:
                step = core.step_s(len(core.running))
                rep.chunk = (now, step, k)
                self.push(now + k * step, _STEP, (m, rep, rep.version))
                return
        duration = core.next_step_s()
        if duration is not None:
            rep.chunk = (now, duration, 1)
            self.push(now + duration, _STEP, (m, rep, rep.version))
        else:
            rep.chunk = None
            self.idle(m, rep, now)

    def _chunk_steps_done(self, rep: _Replica, now: float) -> int:
        assert rep.chunk is not None
        start, step, k = rep.chunk
        return min(int((now - start) / step), k - 1)

    def split_chunk(self, m: _Model, rep: _Replica, now: float) -> None:
        """End a fast-forward at the step in progress at ``now``; that step becomes the last."""
        assert rep.chunk is not None
        start, step, _ = rep.chunk
        j = self._chunk_steps_done(rep, now)
        rep.core.advance(j)
        start += j * step
        rep.chunk = (start, step, 1)
        rep.version += 1
        self.push(start + step, _STEP, (m, rep, rep.version))

    def kv_ratio(self, rep: _Replica, now: float) -> float:
        """The replica's KV usage at ``now``, counting fast-forwarded steps already done."""
        core = rep.core
        extra = 0
        chunk = rep.chunk
        if chunk is not None and chunk[2] > 1:
            extra = self._chunk_steps_done(rep, now) * len(core.running)
        used = core.kv_tokens + extra
        return min(used / core.perf.kv_capacity_tokens, 1.0)

    # decisions
    def observe(self, m: _Model, now: float) -> ModelObservation:
        """What the decider sees of ``m`` now; unchanged parts reuse the last observation's
        objects (equal values, fewer allocations: most ticks see an idle or steady model)."""
        reps = []
        for r in m.replicas:
            state = r.state
            o = r.obs
            if state == "ready":
                core = r.core
                waiting = float(len(core.waiting))
                running = float(len(core.running))
                kv = self.kv_ratio(r, now) if core.running else 0.0
                if (
                    o is None
                    or o.state != "ready"
                    or o.num_requests_waiting != waiting
                    or o.num_requests_running != running
                    or o.kv_cache_usage_ratio != kv
                ):
                    o = r.obs = ReplicaObservation(r.rid, "ready", waiting, running, kv, 0.0)
            elif state == "draining":
                continue
            elif o is None or o.state != state:
                o = r.obs = ReplicaObservation(r.rid, state, None, None, None, None)
            reps.append(o)
        fc = m.forecaster
        if fc is None:
            last = m.obs
            buffered = len(m.buffer)
            seen = tuple(reps)
            if last is None or last.buffered_requests != buffered or last.replicas != seen:
                last = m.obs = ModelObservation(m.name, seen, buffered)
            return last
        in_system = len(m.buffer) + sum(r.load for r in m.replicas)
        return ModelObservation(m.name, tuple(reps), len(m.buffer), fc.replicas(now, in_system))

    def totals(self, m: _Model, now: float) -> tuple[Totals, int, int]:
        """The totals the decider would derive from :meth:`observe` now (step 1 of
        :func:`autoscaler.decider.decide`, summed in the same order, so bit for bit the same
        floats), with the live (ready + starting) and sleeping replica counts."""
        waiting = running = kv = 0.0
        live = sleeping = 0
        for r in m.replicas:
            state = r.state
            if state == "ready":
                live += 1
                core = r.core
                waiting += float(len(core.waiting))
                n = len(core.running)
                if n:
                    running += float(n)
                    kv += self.kv_ratio(r, now)
            elif state == "starting":
                live += 1
            elif state == "sleeping":
                sleeping += 1
        waiting += len(m.buffer)
        concurrency = waiting + running
        if not concurrency > 0:
            kv = 0.0
        return (waiting, concurrency, kv), live, sleeping

    def note(self, m: _Model, t: float, totals: Totals) -> None:
        """Track what the skip rule needs from each set of totals the decider has seen."""
        w, c, kv = totals
        tw, tc, tkv = m.targets
        if w > tw or c > tc or kv > tkv:
            m.last_hot_s = t
        if c > 0:
            m.last_demand_s = t

    def skippable(self, m: _Model, now: float, totals: Totals, live: int, sleeping: int) -> bool:
        """Whether the decider, called now with these totals, then the grace would answer one
        replica, with no panic and no action (the *one replica, within its targets* and *no free
        GPU* rules of the module doc); when so, ``m.wants_zero_since_s`` is left as the grace
        would leave it. :meth:`note` must already have seen ``totals``."""
        p = m.policy
        assert p is not None
        st = m.state
        if live > 1 or st.panic_since_s is not None or st.started_s is None:
            return False
        w, c, kv = totals
        tw, tc, tkv = m.targets
        if w > tw or c > tc or kv > tkv or m.last_hot_s > now - p.stable_window_s:
            return False
        if live == 0:  # the *no free GPU* rule
            if sleeping > 1 or not c > 0:
                return False
            if sleeping or m.shared:
                # it would wake its sleeper, which holds its GPU or slice; on a shared pool
                # the arbiter may make room: decided
                return False
            free = self.free_gpus
            # no pool of its with a free GPU: placement finds none (no need to ask it)
            if all(free[p] < 1 for p in m.spec.pools) or self.chooser.pick(m.spec, free) is None:
                m.wants_zero_since_s = None  # none live: the grace has nothing to hold
                return True
            return False
        if p.initial_replicas > 1 and now - st.started_s < p.stable_window_s:
            return False
        if sleeping and not self.sleepers_stay(m, now, sleeping):
            return False
        one = self.wants_one(m, now)
        if one is None:
            return False
        if one:
            m.wants_zero_since_s = None
            return True
        # The decider wants 0: one replica stays while the grace runs (apply_grace's test).
        since = m.wants_zero_since_s
        if since is None:
            since = now
        if not max(0.0, now - since) < p.scale_to_zero_grace_s:
            return False  # the grace is over: the 0 is carried out
        m.wants_zero_since_s = since
        return True

    def wants_one(self, m: _Model, t: float) -> bool | None:
        """What the decider asks for at ``t`` for a model with one live replica within its
        targets, no panic and no forecast (the *one replica* rule): True for 1, False for 0,
        None when it cannot be told without asking it. ``m.last_demand_s`` must account for the
        totals at ``t``.

        1 when ``min_replicas`` is 1, ``initial_replicas`` 1 within the first stable window, or a
        request is in the window under a concurrency target (its average is then above 0 and at
        most the target); 0 when the window has seen no request (every total 0) and no floor
        applies. Without a concurrency target, a window that saw requests may ask for either."""
        p = m.policy
        st = m.state
        assert p is not None and st.started_s is not None
        if p.min_replicas >= 1:
            return True
        window = p.stable_window_s
        if p.initial_replicas >= 1 and t - st.started_s < window:
            return True
        if not m.last_demand_s > t - window:
            return False
        return True if m.targets[1] < _INF else None

    def sleepers_stay(self, m: _Model, now: float, sleeping: int) -> bool:
        """plan_actions at ``now`` with the live count as wanted stops no sleeper."""
        w = m.warm_pool
        if not w.enabled or sleeping > w.max_sleeping:
            return False
        ttl = w.sleep_ttl_s
        for r in m.replicas:
            if r.state == "sleeping":
                since = r.asleep_since_s
                if since is not None and now - since >= ttl:
                    return False
        return True

    def catch_up(self, m: _Model) -> None:
        """Give the decider's state the skipped ticks, as calling it at each would have left it.

        Each call appends its totals to the stable window and drops samples at or before
        ``now - stable_window_s`` (the latest call's cut covers every earlier one); at rest the
        scale-down delay records 0 each tick. Panic, its maximum and the start time do not move:
        skipped ticks have no panic. (The grace's ``wants_zero_since_s`` is the simulator's,
        kept tick by tick by the skip rules.)
        """
        if m.parked:
            self.unpark(m)
        runs = m.unseen
        if not runs:
            return
        assert m.policy is not None
        p = m.policy
        tick = self.cfg.tick_s
        st = m.state
        last_t = runs[-1][1] * tick
        cut = last_t - p.stable_window_s
        keep = bisect_right(st.sample_times_s, cut)
        times = list(st.sample_times_s[keep:])
        ws = list(st.waiting_samples[keep:])
        cs = list(st.concurrency_samples[keep:])
        ks = list(st.kv_usage_samples[keep:])
        for k0, k1, w, c, kv in runs:
            first = _first_tick_after(cut, tick, k0)
            if first > k1:
                continue
            times.extend([k * tick for k in range(first, k1 + 1)])
            count = k1 + 1 - first
            ws.extend([w] * count)
            cs.extend([c] * count)
            ks.extend([kv] * count)
        update: dict[str, object] = {
            "sample_times_s": tuple(times),
            "waiting_samples": tuple(ws),
            "concurrency_samples": tuple(cs),
            "kv_usage_samples": tuple(ks),
        }
        d = p.scale_down_delay_s
        if d > 0:  # only at rest (the one-replica rule needs no delay): each tick wanted 0
            dcut = last_t - d
            dkeep = bisect_right(st.delay_times_s, dcut)
            dtimes = list(st.delay_times_s[dkeep:])
            dwant = list(st.delay_desired[dkeep:])
            for k0, k1, *_ in runs:
                first = _first_tick_after(dcut, tick, k0)
                dtimes.extend([k * tick for k in range(first, k1 + 1)])
                dwant.extend([0] * max(0, k1 + 1 - first))
            update["delay_times_s"] = tuple(dtimes)
            update["delay_desired"] = tuple(dwant)
        m.state = replace(st, **update)  # type: ignore[arg-type]
        runs.clear()

    def decide(self, m: _Model, now: float) -> tuple[int, bool]:
        """Call the real decider and carry out its count; returns (desired, whether it acted)."""
        assert m.policy is not None
        self.catch_up(m)
        self.decisions += 1
        decision, m.state = decide(self.observe(m, now), m.policy, m.state, now)
        # The grace, as every runtime counts it (the simulated activator is always in the path).
        decision, m.wants_zero_since_s = apply_grace(
            decision, m.wants_zero_since_s, True, now, m.policy.scale_to_zero_grace_s
        )
        desired = decision.desired_replicas
        live = sleepers = 0
        for r in m.replicas:
            if r.state == "sleeping":
                sleepers += 1
            elif r.state != "draining":
                live += 1
        if desired == live and not sleepers:
            return desired, False  # plan_actions would return no action
        view = [
            PoolReplica(
                r.rid,
                r.state,
                float(r.load) if r.state == "ready" else 0.0,
                r.sleep_level,
                r.asleep_since_s,
                r.started_s,
            )
            for r in m.replicas
        ]
        actions = plan_actions(desired, view, m.warm_pool, now)
        if actions.empty:
            return desired, False
        if m.shared:
            self.act_shared(m, actions, now)
            return desired, True
        for rid in actions.wake:
            rep = m.find(rid)
            if rep is not None:
                self.wake(m, rep, now)
        for _ in range(actions.start):
            if not self.start_replica(m, now, ready_now=False):
                break
        for rid, level in actions.sleep:
            rep = m.find(rid)
            if rep is not None:
                self.sleep(m, rep, level, now)
        for rid in actions.stop:
            rep = m.find(rid)
            if rep is not None:
                self.stop(m, rep, now)
        return desired, True

    def act_shared(self, m: _Model, actions: Actions, now: float) -> None:
        """Carry out a model's actions where some of its engines are on shared GPUs: each GPU
        it touches is arbitrated with the model's new awake count there (stops and sleeps
        first, by GPU, then wakes, then each start on the GPU :meth:`pick_gpu` finds); engines
        on unshared pools act as before."""
        target: dict[int, tuple[_Gpu, int]] = {}

        def bump(g: _Gpu, by: int) -> None:
            if id(g) not in target:
                live = sum(1 for mm, r in g.engines if mm is m and r.state in LIVE_STATES)
                target[id(g)] = (g, live)
            gg, n = target[id(g)]
            target[id(g)] = (gg, n + by)

        for rid in actions.stop:
            rep = m.find(rid)
            if rep is None:
                continue
            if rep.gpu is None:
                self.stop(m, rep, now)
            else:
                bump(rep.gpu, -1 if rep.state in LIVE_STATES else 0)
        for rid, level in actions.sleep:
            rep = m.find(rid)
            if rep is None:
                continue
            if rep.gpu is None:
                self.sleep(m, rep, level, now)
            else:
                bump(rep.gpu, -1)
        for rid in actions.wake:
            rep = m.find(rid)
            if rep is None:
                continue
            if rep.gpu is None:
                self.wake(m, rep, now)
            else:
                bump(rep.gpu, 1)
        starts = actions.start
        for g, n in sorted(target.values(), key=lambda t: (t[0].pool, t[0].index)):
            plan = self.arbitrate_gpu(g, m, max(n, 0), now)
            # a wake its GPU cannot make room for, with requests waiting: a start elsewhere
            if m.buffer:
                starts += sum(u.engines for u in plan.unmet if u.model == m.name)
        for _ in range(starts):
            if not self.start_replica(m, now, ready_now=False):
                break

    def poke(self, m: _Model, now: float) -> None:
        """The activator's poke: a request buffered at zero gets a decision at once."""
        if m.one_replica_ok and not self.cfg.decide_every_tick:
            totals, _, _ = self.totals(m, now)
            self.note(m, now, totals)
        self.decide(m, now)

    def visit(self, m: _Model, k: int, now: float) -> None:
        """Model ``m``'s tick ``k``: decide, or skip when the answer cannot change."""
        every = self.cfg.decide_every_tick
        if m.forecaster is not None:
            self.visit_forecasting(m, k, now)
            return
        if m.one_replica_ok and not every:
            reps = m.replicas
            if len(reps) == 1 and not m.buffer and reps[0].state == "ready":
                # The common case, :meth:`totals`, :meth:`note` and :meth:`skippable` written
                # out (same floats: 0.0 + x is x).
                r = reps[0]
                core = r.core
                n = len(core.running)
                w = float(len(core.waiting))
                c = w + float(n)
                if c > 0:  # busy: only the targets and the window's hot samples can stop it
                    kv = self.kv_ratio(r, now) if n else 0.0
                    tw, tc, tkv = m.targets
                    m.last_demand_s = now
                    if w > tw or c > tc or kv > tkv:
                        m.last_hot_s = now
                    elif tc < _INF:  # a request now: the concurrency target asks for one
                        p = m.policy
                        st = m.state
                        assert p is not None
                        window = p.stable_window_s
                        if (
                            m.last_hot_s <= now - window
                            and st.panic_since_s is None
                            and st.started_s is not None
                            and not (p.initial_replicas > 1 and now - st.started_s < window)
                        ):
                            m.wants_zero_since_s = None
                            self.unseen_tick(m, k, now, (w, c, kv))
                            return
                    self.decide(m, now)
                    return
                totals: Totals = (w, c, 0.0)
                live, sleeping = 1, 0
            else:
                totals, live, sleeping = self.totals(m, now)
            self.note(m, now, totals)
            if self.skippable(m, now, totals, live, sleeping):
                if not live and now >= self.cfg.measure_from_s:
                    self.capacity_refusals += 1  # the start it would ask for, refused
                self.unseen_tick(m, k, now, totals)
                if totals == _ZERO and self.idle_replica(m):
                    self.park(m, k, "idle", *self.idle_due(m, k))
                return
        desired, acted = self.decide(m, now)
        if (
            not every
            and desired == 0
            and not acted
            and not m.buffer
            and m.state.panic_since_s is None
            and m.wants_zero_since_s is None  # no grace running (it holds a live replica)
            and all(r.state == "sleeping" for r in m.replicas)
        ):
            self.park(m, k, "rest", self.ttl_tick(m, k))

    def visit_forecasting(self, m: _Model, k: int, now: float) -> None:
        """A forecasting model's tick: decide, then park it while the answer cannot change.

        Its forecast, asked again with the same interval and target and nothing in the system
        (the service time it learns stands still), gives the same answer, and asking has no
        other effect; the next interval or target is a new forecast, which must be made (and
        later scored) as every tick would make it. So: at rest, parked until then; one idle
        replica that the forecast keeps at one (or none, then the one-replica rule's grace and
        window), parked until then too."""
        every = self.cfg.decide_every_tick
        fc = m.forecaster
        assert fc is not None
        track = m.one_replica_ok and not every
        if track:
            totals, _, _ = self.totals(m, now)
            self.note(m, now, totals)
        desired, acted = self.decide(m, now)
        if every or acted or m.buffer or m.state.panic_since_s is not None:
            return
        if any(r.load for r in m.replicas):
            return
        change = fc.next_change_tick(now, self.cfg.tick_s, k)
        if (
            desired == 0
            and m.wants_zero_since_s is None
            and all(r.state == "sleeping" for r in m.replicas)
        ):
            self.park_forecasting(m, k, "rest", 0, self.ttl_tick(m, k), change)
            return
        if not track or desired != 1 or not self.idle_replica(m):
            return
        p = m.policy
        st = m.state
        assert p is not None and st.started_s is not None
        nxt = (k + 1) * self.cfg.tick_s
        window = p.stable_window_s
        if m.last_hot_s > nxt - window:
            return
        if p.initial_replicas > 1 and nxt - st.started_s < window:
            return
        sleeping = sum(1 for r in m.replicas if r.state == "sleeping")
        if sleeping and not self.sleepers_stay(m, nxt, sleeping):
            return
        wanted = fc.wanted()
        if wanted > 1:
            return
        if wanted == 1:  # the forecast keeps one replica whatever the window says
            self.park_forecasting(m, k, "idle", 1, self.ttl_tick(m, k), change)
            return
        due, zero, since = self.idle_due(m, k)
        self.park_forecasting(m, k, "idle", 0, due, change, zero, since)

    def park_forecasting(
        self,
        m: _Model,
        k: int,
        why: Literal["rest", "idle"],
        wanted: int,
        other: int | None,
        change: int,
        zero_from: int | None = None,
        zero_since_s: float | None = None,
    ) -> None:
        """Park a forecasting model whose answer stays what it is until ``other`` (a tick due
        whatever the forecast says) as long as its forecast asks for ``wanted`` replicas; the
        next forecast is due at tick ``change``. ``zero_from`` and ``zero_since_s`` are the
        grace's, as :meth:`park` takes them (they do not depend on a forecast of 0)."""
        m.forecast_wanted = wanted
        m.other_due = other
        due = change if other is None else min(other, change)
        self.park(m, k, why, due, zero_from, zero_since_s)

    def forecast_holds(self, m: _Model, k: int, now: float) -> bool:
        """At a parked forecasting model's due tick ``k``: make the new forecast (as the
        decision would, with nothing in the system) and, when it asks for as many replicas as
        the one the model was parked with and nothing else is due, keep it parked until the
        next forecast: the decider would answer as it did then, with no action (the forecast
        is a floor; the decider's state does not depend on it; see :meth:`visit_forecasting`).
        """
        other = m.other_due
        fc = m.forecaster
        if m.forecast_wanted < 0 or fc is None or (other is not None and other <= k):
            return False
        fc.replicas(now, 0)
        if fc.wanted() != m.forecast_wanted:
            return False
        change = fc.next_change_tick(now, self.cfg.tick_s, k)
        m.due_tick = due = change if other is None else min(other, change)
        heapq.heappush(self.due, (due, m.index, m))
        return True

    def unseen_tick(self, m: _Model, k: int, now: float, totals: Totals) -> None:
        """Tick ``k`` skipped: its totals join the runs the decider has not seen."""
        unseen = m.unseen
        if unseen:
            last = unseen[-1]
            if last[1] == k - 1 and last[2:] == totals:
                unseen[-1] = (last[0], k, *totals)
                return
        unseen.append((k, k, *totals))
        if len(unseen) > _FORGET_AFTER:
            self.forget_old(m, now)

    def forget_old(self, m: _Model, now: float) -> None:
        """Drop unseen runs the decider's window has left behind at ``now`` (bounded memory).
        The last run stays: its tick is where :meth:`catch_up` cuts the window."""
        assert m.policy is not None
        runs = m.unseen
        if len(runs) > _FORGET_AFTER:
            cut = now - m.policy.stable_window_s
            tick = self.cfg.tick_s
            drop = 0
            while drop < len(runs) - 1 and runs[drop][1] * tick <= cut:
                drop += 1
            del runs[:drop]

    def idle_replica(self, m: _Model) -> bool:
        """One ready replica with nothing in flight, nothing starting, nothing buffered: its
        observation changes only when a request comes."""
        if m.buffer:
            return False
        ready = 0
        for r in m.replicas:
            if r.state == "ready":
                if r.core.waiting or r.core.running:
                    return False
                ready += 1
            elif r.state == "starting":
                return False
        return ready == 1

    def idle_due(self, m: _Model, k: int) -> tuple[int | None, int | None, float | None]:
        """For an idle one-replica model parked after tick ``k`` (every total 0 until a request
        comes; no forecast floor): the first tick where it might stop being skippable — the
        grace runs out, the decider's count can no longer be told (:meth:`wants_one` None), or
        a sleeper's time-to-live ends — with the first tick whose decider wants 0 and
        ``wants_zero_since_s`` from there on (see :meth:`park`)."""
        p = m.policy
        st = m.state
        assert p is not None and st.started_s is not None
        tick = self.cfg.tick_s
        start = k + 1
        ttl = self.ttl_tick(m, k)
        if p.min_replicas >= 1:
            return ttl, None, None  # the decider asks for one at every tick
        window = p.stable_window_s
        # wants_one's conditions, each true until a tick and false from it on
        floor_end = start
        if p.initial_replicas >= 1:
            s0 = st.started_s
            floor_end = _first_tick(tick, start, lambda t: not t - s0 < window, s0 + window)
        last = m.last_demand_s
        seen_end = _first_tick(tick, start, lambda t: not last > t - window, last + window)
        if m.targets[1] == _INF and seen_end > floor_end:
            # requests in the window, no concurrency target: decide from the floor's end on
            return floor_end if ttl is None else min(floor_end, ttl), None, None
        zero = max(floor_end, seen_end)  # the decider wants 0 from this tick on
        since = m.wants_zero_since_s
        if zero > start or since is None:
            since = zero * tick  # a tick wanting 1 between clears it; the first 0 sets it
        grace = p.scale_to_zero_grace_s
        due = _first_tick(tick, zero, lambda t: not max(0.0, t - since) < grace, since + grace)
        return due if ttl is None else min(due, ttl), zero, since

    def park(
        self,
        m: _Model,
        k: int,
        why: Literal["rest", "idle"],
        due: int | None,
        zero_from: int | None = None,
        zero_since_s: float | None = None,
    ) -> None:
        """Stop visiting ``m`` at ticks after ``k`` until ``due`` (None: until a request). Its
        parked ticks' decider asks for 1 before ``zero_from`` (None: at every one of them) and
        0 from it on, with the grace counting from ``zero_since_s``; at rest it has none live,
        so the grace holds nothing."""
        m.parked = why
        m.parked_from = k + 1
        m.due_tick = due
        m.zero_from_tick = zero_from
        m.zero_since_s = zero_since_s
        self.awake.remove((m.index, m))
        if due is not None:
            heapq.heappush(self.due, (due, m.index, m))

    def unpark(self, m: _Model, upto: int | None = None) -> None:
        """Wake a parked model: its ticks until ``upto`` (default: the last tick processed)
        become unseen runs of the totals it was parked with, and ``wants_zero_since_s`` is what
        the grace left at the last of them."""
        last = self.tick_k if upto is None else upto
        if last >= m.parked_from:
            m.unseen.append((m.parked_from, last, *_ZERO))
            self.forget_old(m, last * self.cfg.tick_s)
            zero = m.zero_from_tick
            m.wants_zero_since_s = None if zero is None or last < zero else m.zero_since_s
        m.parked = ""
        m.due_tick = None
        m.forecast_wanted = -1
        insort(self.awake, (m.index, m))

    def touch(self, m: _Model) -> None:
        """Something ``m``'s decider observes changed (a request came, a replica became ready,
        another model's arbitration put its engine to sleep or stopped it). During a tick's
        visits, a model after the one visiting has not had this tick yet: it is unparked up to
        the tick before, and visited in this one."""
        if m.parked:
            if m.index > self.visiting:
                self.unpark(m, self.tick_k - 1)
            else:
                self.unpark(m)

    def ttl_tick(self, m: _Model, k: int) -> int | None:
        """The first tick after ``k`` at which plan_actions would stop one of ``m``'s sleepers
        (time-to-live); None without sleepers."""
        sleepers = [r for r in m.replicas if r.state == "sleeping"]
        if not sleepers:
            return None
        if not m.warm_pool.enabled:  # no sleepers without a warm pool; decide every tick
            return k + 1
        tick, ttl = self.cfg.tick_s, m.warm_pool.sleep_ttl_s
        if not math.isfinite(ttl):
            return None
        first: int | None = None
        for r in sleepers:
            since = r.asleep_since_s if r.asleep_since_s is not None else 0.0
            due = _first_tick(tick, k + 1, _expired(since, ttl), since + ttl)
            first = due if first is None else min(first, due)
        return first

    def sample(self, now: float) -> None:
        """Replicas holding a GPU (= GPUs taken), replicas asleep, requests in the system."""
        awake = self.awake_count
        self.samples_t.append(now - self.cfg.measure_from_s)
        self.samples_r.append(awake)
        self.samples_s.append(self.replica_count - awake - self.pending_count)
        self.samples_d.append(self.outstanding)
        self.samples_g.append(self.held_gpus)

    def miss(self, idx: int) -> None:
        """Measured request ``idx`` is known to have missed its SLO (counted once)."""
        if self.missed[idx]:
            return
        self.missed[idx] = True
        self.misses += 1
        if self.miss_limit is not None and self.misses > self.miss_limit:
            raise _Stop

    def expire_buffered(self, now: float) -> None:
        """Count the buffered requests that have already waited past their TTFT target (for
        ``stop_after_misses``: a model that never gets a GPU must not keep a search waiting)."""
        slo_of = self.slo_of
        assert slo_of is not None
        first = self.cfg.first_measured
        for m in self.models.values():
            buf = m.buffer
            if not buf:
                continue
            for idx, req in buf:
                if now - req.arrival_s <= slo_of(req):
                    break
                if idx >= first:
                    self.miss(idx)

    def start_always_on(self) -> None:
        """Every model's always-on replicas, ready at t=0: in ``always_on_starts``' order, else
        round by round."""
        if self.cfg.always_on_starts:
            for name in self.cfg.always_on_starts:
                self.start_replica(self.models[name], 0.0, ready_now=True)
            return
        counts = {n: max(1, self.cfg.always_on_replicas.get(n, 1)) for n in self.models}
        order = list(self.cfg.always_on_replicas) + sorted(
            n for n in self.models if n not in self.cfg.always_on_replicas
        )
        for round_ in range(max(counts.values(), default=0)):
            for name in order:
                if counts[name] > round_:
                    self.start_replica(self.models[name], 0.0, ready_now=True)

    def run(self, progress: Callable[[int], None] | None) -> SimResult:
        stopped = False
        try:
            now = self.loop(progress)
        except _Stop:
            stopped = True
            now = self.stop_now
        return self.result(now, stopped)

    def loop(self, progress: Callable[[int], None] | None) -> float:
        cfg = self.cfg
        if cfg.policy == "always-on":
            self.start_always_on()
        self.push(0.0, _TICK, None)
        ticks = 0
        reqs = self.requests
        n = len(reqs)
        i = 0
        now = 0.0
        self.stop_now = 0.0
        next_sample = cfg.measure_from_s
        horizon = max(cfg.horizon_s, reqs[-1].arrival_s if n else 0.0)
        heap = self.heap
        heappop = heapq.heappop
        models = self.models
        first_token, finished = self.first_token, self.finished
        first_measured = cfg.first_measured
        slo_of = self.slo_of
        watch = self.miss_limit is not None and slo_of is not None
        due = self.due
        popped = 0
        self.popped = 0
        while True:
            if i < n and (not heap or reqs[i].arrival_s <= heap[0][0]):
                req = reqs[i]
                now = self.stop_now = req.arrival_s
                m = models[req.model]
                if req.prompt_tokens + req.output_tokens > m.spec.perf.max_model_len_tokens:
                    if i >= first_measured:
                        self.rejected += 1  # the engine would refuse it (AdmissionError)
                        if watch:
                            self.miss(i)
                    i += 1
                    continue
                self.outstanding += 1
                if m.parked:
                    self.unpark(m)
                if m.forecaster is not None:
                    m.forecaster.observe(now)
                at_zero = not m.buffer
                self.route(m, i, req, now)
                if at_zero and m.buffer and m.policy is not None:
                    self.poke(m, now)  # the activator's poke
                i += 1
                if progress is not None and i % 4096 == 0:
                    progress(4096)
                continue
            if not heap:
                break
            popped += 1
            self.popped = popped
            now, _, kind, payload = heappop(heap)
            self.stop_now = now
            if kind == _TICK:
                if now >= next_sample:
                    self.sample(now)
                    next_sample = now + cfg.sample_every_s
                k_now = self.tick_k = ticks
                while due and due[0][0] <= k_now:
                    _, _, m = heapq.heappop(due)
                    if m.parked and m.due_tick == k_now and not self.forecast_holds(m, k_now, now):
                        self.unpark(m, k_now - 1)
                # In index order; a model another's arbitration unparks later in this tick is
                # visited in it too (the models after the one visiting have not had tick k yet).
                awake = self.awake
                last = -1
                while True:
                    j = bisect_left(awake, (last + 0.5,))
                    if j == len(awake):
                        break
                    m = awake[j][1]
                    last = self.visiting = m.index
                    if not m.parked:
                        self.visit(m, k_now, now)
                self.visiting = len(models)
                if watch:
                    self.expire_buffered(now)
                if i < n or now < horizon or (self.outstanding > 0 and now < horizon + cfg.drain_s):
                    ticks += 1
                    self.push(ticks * cfg.tick_s, _TICK, None)
                continue
            assert payload is not None
            m, rep, tag = payload
            if kind == _READY:
                if tag != rep.epoch:
                    continue
                rep.state = "ready"
                self.touch(m)
                self.route_buffer(m, now)
            elif kind == _ASLEEP:
                if tag != rep.epoch:
                    continue
                self.asleep(rep, now)
            else:
                if tag != rep.version:
                    continue  # superseded by a split chunk
                assert rep.chunk is not None
                start, step, k = rep.chunk
                end = (start + (k - 1) * step) + step  # as stepping one by one ends the last
                first, done = rep.core.finish_steps(k, end)
                for s in first:
                    idx = int(s.request_id)
                    first_token[idx] = end
                    if watch and idx >= first_measured:
                        assert slo_of is not None
                        r = reqs[idx]
                        if end - r.arrival_s > slo_of(r):
                            self.miss(idx)
                if done:
                    for s in done:
                        finished[int(s.request_id)] = end
                    self.outstanding -= len(done)
                self.plan(m, rep, now)
        if progress is not None and n % 4096:
            progress(n % 4096)
        return now

    def result(self, now: float, stopped: bool) -> SimResult:
        cfg = self.cfg
        reqs = self.requests
        n = len(reqs)
        horizon = max(cfg.horizon_s, reqs[-1].arrival_s if n else 0.0)
        end = max(now, horizon)
        for m in self.models.values():
            for rep in list(m.replicas):
                self.remove(m, rep, end)
        t0 = cfg.measure_from_s
        first_token, finished, routed, cold = (
            self.first_token,
            self.finished,
            self.routed,
            self.cold,
        )
        records = []
        unserved: list[int] = []
        isnan = math.isnan
        limit = {name: m.spec.perf.max_model_len_tokens for name, m in self.models.items()}
        for k in range(cfg.first_measured, n):
            r = reqs[k]
            done = finished[k]
            if isnan(done):
                if r.prompt_tokens + r.output_tokens <= limit[r.model]:
                    unserved.append(r.prompt_tokens)
                continue
            a = r.arrival_s
            records.append(
                RequestRecord(
                    r.model,
                    a - t0,
                    first_token[k] - a,
                    done - a,
                    cold[k],
                    r.prompt_tokens,
                    r.output_tokens,
                    routed[k] - a,
                )
            )
        return SimResult(
            policy=cfg.policy,
            records=tuple(records),
            rejected_requests=self.rejected,
            unserved_requests=len(unserved),
            capacity_refusals=self.capacity_refusals,
            cold_starts_by_tier=dict(self.cold_by_tier),
            gpu_seconds_by_pool=dict(self.gpu_s),
            end_s=max(end - t0, 0.0),
            sample_times_s=tuple(self.samples_t),
            sample_replicas=tuple(self.samples_r),
            sample_sleeping=tuple(self.samples_s),
            sample_demand=tuple(self.samples_d),
            events=n + self.popped,
            decisions=self.decisions,
            window_s=max(self.window_end_s - t0, 0.0),
            model_classes={name: m.spec.name for name, m in self.models.items()},
            unserved_prompt_tokens=tuple(unserved),
            stopped_early=stopped,
            sample_gpus_held=tuple(self.samples_g),
            gpu_memory_peak_ratio=self.mem_peak_ratio,
            gpu_memory_overflows=self.mem_overflows,
        )


def _or_inf(x: float | None) -> float:
    return _INF if x is None else x


def _one_replica_ok(p: AutoscalingPolicy, tick_s: float) -> bool:
    """The policy settings under which the one-replica skip rule holds (see the module doc):
    no scale-down delay, activation scale 1, min_replicas <= 1, and a concurrency target small
    enough that one request in a full window's average still asks for a replica."""
    if p.scale_down_delay_s > 0 or p.activation_scale != 1 or p.min_replicas > 1:
        return False
    target = p.target_concurrency_per_replica
    samples = p.stable_window_s / tick_s + 2
    return target is None or target * samples < 1e6


def _first_tick(tick_s: float, start: int, done: Callable[[float], bool], near_s: float) -> int:
    """The first tick index ``k >= start`` with ``done(k * tick_s)``, for a predicate that stays
    true once true, searched from the tick nearest ``near_s`` (exact: the same float expressions
    the decider evaluates decide, the estimate only saves steps)."""
    k = max(start, math.ceil(near_s / tick_s)) if math.isfinite(near_s) else start
    while k > start and done((k - 1) * tick_s):
        k -= 1
    while not done(k * tick_s):
        k += 1
    return k


def _expired(since_s: float, ttl_s: float) -> Callable[[float], bool]:
    """plan_actions' time-to-live test of a sleeper asleep since ``since_s``."""
    return lambda t: t - since_s >= ttl_s


def _first_tick_after(cut: float, tick_s: float, start: int) -> int:
    """The first tick index ``k >= start`` with ``k * tick_s > cut``."""
    k = max(start, math.floor(cut / tick_s))
    while k > start and (k - 1) * tick_s > cut:
        k -= 1
    while not k * tick_s > cut:
        k += 1
    return k


def simulate(
    requests: Sequence[Request],
    fleet: Fleet,
    cfg: SimConfig,
    progress: Callable[[int], None] | None = None,
) -> SimResult:
    """Replay ``requests`` (sorted by arrival) on ``fleet`` under ``cfg``; see the module doc."""
    return _Sim(requests, fleet, cfg).run(progress)
