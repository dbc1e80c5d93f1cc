"""The discrete-event core of the cold-start simulator. Pure and deterministic.

Owns virtual time: a heap of events (replica ready, engine step end, replica asleep, autoscaler
tick) merged with the sorted arrivals of a trace. Per model it keeps a simulated activator buffer
(requests that arrive while no replica is ready wait there: they *waited on a cold start*) and
replicas, each an :class:`~engine.perf_model.EngineCore` (the same continuous-batching scheduler
as ``thaw emulator``). Every ``tick_s`` — and at once when a request is buffered at zero, as the
activator pokes the autoscaler — it builds a :class:`~autoscaler.decider.ModelObservation` from
the simulated replicas, calls the real :func:`autoscaler.decider.decide`, and turns the desired
count into actions with the real warm-pool planner :func:`autoscaler.warm_pool.plan_actions`
(wake sleepers before starting cold replicas; on scale-down sleep within the host-RAM budget,
else stop). As the local actuator does: a stopped replica that still has requests drains first
(no new requests); a replica put to sleep finishes its requests, then sleeps.

Replica life and costs:

- a new replica takes a GPU at once and is ready after the fleet's derived cold-start time for
  the run's start tier (``local_disk`` or ``remote``); its engine runs at its pool's speed
  (:meth:`~sim.fleet.Fleet.engine_perf`: prefill rate, decode step, KV capacity);
- a sleeper holds no GPU: level 1 holds its weights in the pool's host RAM (falls back to level 2
  when the RAM is taken), level 2 holds nothing; going to sleep at level 1 keeps the GPU for the
  copy-out time. Waking needs a free GPU in the sleeper's pool (else a cold start elsewhere) and
  takes the derived ``wake_level1`` / ``wake_level2`` time;
- GPU time counts from a replica taking its GPU until it gives it back, within the measured part.

Measurement: requests before ``SimConfig.first_measured`` only prime the fleet (a warm-up whose
requests, GPU time, cold starts and samples are not reported); times in :class:`SimResult` are
seconds from ``SimConfig.measure_from_s``.

Policies: ``thaw`` (the policy file's autoscaling, its forecast when enabled, and warm pool),
``kpa`` (the same decider with Knative KPA's defaults, :func:`autoscaler.policy.kpa_policy`, and
no warm pool), ``always-on`` (a fixed count sized for the trace's peak, never scaled, ready from
the start) and ``predictive`` (``thaw`` with a demand forecaster for every model, fed the
simulated arrivals, whose ``forecast_replicas`` one cold start ahead the decider takes as a floor;
see :mod:`sim.predictive`). A new replica takes the pool
:class:`~sim.predictive.PoolChooser` picks (placement when the model lists several pools).

No I/O, no clock reads; the optional ``progress`` callback is the only way out.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from autoscaler.decider import DeciderState, ModelObservation, ReplicaObservation, decide
from autoscaler.policy import AutoscalingPolicy, WarmPoolConfig
from autoscaler.warm_pool import PoolReplica, plan_actions
from engine.perf_model import EngineCore, EnginePerf, StepPlan
from engine.perf_model import Sequence as EngineSeq
from kernel.vocab import FINE_LOAD_TIERS, FineLoadTier, ReplicaState, wake_tier
from sim.fleet import Fleet, FleetModel, cold_start_s, sleep_s
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
    """Per trace model, the fixed count for ``always-on``."""
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
    skip_idle: bool = True
    """Skip the ticks of models at rest and replay the last stable window's worth of them when
    the model is next needed (same results; off: every model decides every tick)."""
    forecasts: Mapping[str, ForecastPlan] = field(default_factory=dict)
    """Per trace model, its demand forecaster (``predictive``); absent: no forecast."""


@dataclass(frozen=True)
class RequestRecord:
    """What happened to one request."""

    model: str
    arrival_s: float
    ttft_s: float
    e2e_s: float
    cold_start: bool


@dataclass(frozen=True)
class SimResult:
    """Everything one run measured; times are seconds from the start of measurement."""

    policy: PolicyName
    records: tuple[RequestRecord, ...]
    """The measured requests that finished."""
    rejected_requests: int
    """Measured requests the engine refuses (prompt + output over the model's context)."""
    unserved_requests: int
    """Measured requests still unfinished at the end: their model never got a replica (no free
    GPU) within ``SimConfig.drain_s`` of the last arrival."""
    capacity_refusals: int
    cold_starts_by_tier: Mapping[str, int]
    gpu_seconds_by_pool: Mapping[str, float]
    end_s: float
    sample_times_s: tuple[float, ...]
    sample_replicas: tuple[int, ...]
    """Replicas holding a GPU (starting, ready, draining, going to sleep) at each sample."""
    sample_sleeping: tuple[int, ...]
    """Replicas asleep (no GPU) at each sample."""
    sample_demand: tuple[int, ...]
    """Requests in the system (buffered, waiting, running) at each sample."""
    events: int = 0
    """Events processed (arrivals and heap events, superseded ones included), for benchmarks."""
    decisions: int = 0
    """Calls of the decider, for benchmarks."""


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
    """When it took its GPU; None while it holds none (asleep)."""
    sleep_level: int | None = None
    asleep_since_s: float | None = None
    going_to_sleep: bool = False
    """An ``_ASLEEP`` event is pending (the copy-out is under way)."""
    ram_bytes: int = 0
    """Host RAM it holds as a level-1 sleeper."""
    stopped: bool = False
    plan: StepPlan | None = None
    chunk: tuple[float, float, int] | None = None
    """Steps fast-forwarded as one event: (start_s, step_s, steps); see ``_Run.plan``."""
    version: int = 0
    """Bumped whenever a pending step event is superseded."""
    epoch: int = 0
    """Bumped whenever a pending ready / asleep event is superseded."""
    obs: ReplicaObservation | None = None
    """The last observation of it the decider got (reused while nothing changes)."""

    @property
    def load(self) -> int:
        return self.core.num_running + self.core.num_waiting


@dataclass(slots=True)
class _Model:
    name: str
    spec: FleetModel
    policy: AutoscalingPolicy | None
    warm_pool: WarmPoolConfig
    state: DeciderState = field(default_factory=DeciderState.initial)
    replicas: list[_Replica] = field(default_factory=list)
    buffer: deque[tuple[int, Request]] = field(default_factory=deque)
    next_id: int = 0
    rest_tick: int | None = None
    """At rest since this tick (see ``_Run.at_rest``): its ticks are skipped, then replayed."""
    rest_until_tick: int | None = None
    """The tick where a sleeper's time-to-live ends, which ends the rest; None: no such tick."""
    forecaster: SimForecaster | None = None
    """Fed each arrival; gives the decider ``forecast_replicas`` (``predictive``)."""
    obs: ModelObservation | None = None
    """The last observation the decider got (reused while nothing changes)."""

    def find(self, rid: str) -> _Replica | None:
        for r in self.replicas:
            if r.rid == rid:
                return r
        return None


_READY, _STEP, _TICK, _ASLEEP = 0, 1, 2, 3
_Payload = tuple[_Model, _Replica, int]


class _Run:
    def __init__(self, requests: Sequence[Request], fleet: Fleet, cfg: SimConfig) -> None:
        self.requests = requests
        self.fleet = fleet
        self.cfg = cfg
        self.heap: list[tuple[float, int, int, _Payload | None]] = []
        self.seq = 0
        self.free_gpus = {p.name: p.count for p in fleet.pools}
        self.free_ram = {p.name: p.host_ram_bytes * fleet.pool_nodes(p.name) for p in fleet.pools}
        self.gpu_s = {p.name: 0.0 for p in fleet.pools}
        self.cold_by_tier: dict[str, int] = dict.fromkeys(FINE_LOAD_TIERS, 0)
        self.capacity_refusals = 0
        self.rejected = 0
        self.models: dict[str, _Model] = {}
        for name in sorted({r.model for r in requests} | set(cfg.specs)):
            if name not in cfg.specs:
                raise KeyError(f"trace model {name!r} has no fleet model")
            policy = None if cfg.policy == "always-on" else cfg.autoscaling.get(name)
            warm = cfg.warm_pools.get(name, _NO_WARM_POOL)
            self.models[name] = _Model(name, cfg.specs[name], policy, warm)
            plan = cfg.forecasts.get(name)
            if plan is not None:
                self.models[name].forecaster = plan.start()
        self.chooser = PoolChooser(fleet)
        self.perfs: dict[tuple[str, str], EnginePerf] = {}
        self.first_token: list[float] = [math.nan] * len(requests)
        self.finished: list[float] = [math.nan] * len(requests)
        self.cold: list[bool] = [False] * len(requests)
        self.outstanding = 0
        self.samples_t: list[float] = []
        self.samples_r: list[int] = []
        self.samples_s: list[int] = []
        self.samples_d: list[int] = []
        self.decisions = 0
        self.tick_k = -1

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
        self.free_gpus[rep.pool] -= 1
        rep.gpu_since_s = now

    def give_gpu(self, rep: _Replica, now: float) -> None:
        if rep.gpu_since_s is None:
            return
        self.free_gpus[rep.pool] += 1
        held = now - max(rep.gpu_since_s, self.cfg.measure_from_s)
        if held > 0:
            self.gpu_s[rep.pool] += held
        rep.gpu_since_s = None

    def give_ram(self, rep: _Replica) -> None:
        self.free_ram[rep.pool] += rep.ram_bytes
        rep.ram_bytes = 0

    # replica lifecycle
    def start_replica(self, m: _Model, now: float, ready_now: bool) -> bool:
        pool_name = self.chooser.pick(m.spec, self.free_gpus)
        if pool_name is not None:
            m.next_id += 1
            core = EngineCore(self.engine_perf(m.spec, pool_name))
            rep = _Replica(f"{m.name}-{m.next_id}", pool_name, core, now)
            self.take_gpu(rep, now)
            m.replicas.append(rep)
            if ready_now:
                rep.state = "ready"
            else:
                delay = cold_start_s(m.spec, self.fleet.pool(pool_name), self.cfg.tier)
                self.count_start(self.cfg.tier, now)
                self.push(now + delay, _READY, (m, rep, rep.epoch))
            return True
        if now >= self.cfg.measure_from_s:
            self.capacity_refusals += 1
        return False

    def remove(self, m: _Model, rep: _Replica, now: float) -> None:
        rep.stopped = True
        rep.epoch += 1
        rep.version += 1
        m.replicas.remove(rep)
        self.give_gpu(rep, now)
        self.give_ram(rep)

    def wake(self, m: _Model, rep: _Replica, now: float) -> None:
        if rep.gpu_since_s is not None:  # still finishing or copying out: cancel the sleep
            rep.epoch += 1
            rep.going_to_sleep = False
            rep.state = "ready"
            rep.sleep_level = rep.asleep_since_s = None
            self.give_ram(rep)
            self.route_buffer(m, now)
            return
        if self.free_gpus[rep.pool] < 1:  # its node's GPUs are taken: start cold elsewhere
            self.start_replica(m, now, ready_now=False)
            return
        level = rep.sleep_level or 1
        self.take_gpu(rep, now)
        self.give_ram(rep)
        rep.state = "starting"
        rep.started_s = now
        rep.sleep_level = rep.asleep_since_s = None
        rep.epoch += 1
        tier = wake_tier(level)
        self.count_start(tier, now)
        delay = cold_start_s(m.spec, self.fleet.pool(rep.pool), tier)
        self.push(now + delay, _READY, (m, rep, rep.epoch))

    def sleep(self, m: _Model, rep: _Replica, level: int, now: float) -> None:
        if level == 1:
            if self.free_ram[rep.pool] >= m.spec.weights_bytes:
                self.free_ram[rep.pool] -= m.spec.weights_bytes
                rep.ram_bytes = m.spec.weights_bytes
            else:
                level = 2
        rep.state = "sleeping"
        rep.sleep_level = level
        rep.asleep_since_s = now
        if rep.load == 0:
            self.fall_asleep(m, rep, now)

    def fall_asleep(self, m: _Model, rep: _Replica, now: float) -> None:
        """The replica has no request left: copy the weights out, then give the GPU back."""
        rep.going_to_sleep = True
        rep.epoch += 1
        delay = sleep_s(m.spec, self.fleet.pool(rep.pool), rep.sleep_level or 1)
        self.push(now + delay, _ASLEEP, (m, rep, rep.epoch))

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
        elif rep.state == "sleeping" and not rep.going_to_sleep and rep.gpu_since_s is not None:
            self.fall_asleep(m, rep, now)

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
        best.core.add(EngineSeq(str(idx), req.prompt_tokens, req.output_tokens, req.arrival_s))
        if best.chunk is not None:
            self.split_chunk(m, best, now)
        elif best.plan is None:
            self.plan(m, best, now)

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
        if self.cfg.fast_forward and not core.waiting and core.running:
            k = min(s.max_tokens - s.generated_tokens for s in core.running)
            if k >= 2 and all(s.first_token_s is not None for s in core.running):
                step = core.perf.decode_step_s(len(core.running))
                rep.plan = None
                rep.chunk = (now, step, k)
                self.push(now + k * step, _STEP, (m, rep, rep.version))
                return
        plan = core.plan_step(now)
        rep.plan = plan
        if plan is not None:
            self.push(plan.end_s, _STEP, (m, rep, rep.version))
        else:
            self.idle(m, rep, now)

    def _chunk_steps_done(self, rep: _Replica, now: float) -> int:
        assert rep.chunk is not None
        start, step, k = rep.chunk
        return min(int((now - start) / step), k - 1)

    def split_chunk(self, m: _Model, rep: _Replica, now: float) -> None:
        """End a fast-forward at the step in progress at ``now``; that step becomes a plan."""
        assert rep.chunk is not None
        start, step, _ = rep.chunk
        j = self._chunk_steps_done(rep, now)
        rep.core.advance(j)
        rep.chunk = None
        rep.version += 1
        plan = StepPlan(start + j * step, step, (), tuple(rep.core.running))
        rep.plan = plan
        self.push(plan.end_s, _STEP, (m, rep, rep.version))

    def kv_ratio(self, rep: _Replica, now: float) -> float:
        """The replica's KV usage at ``now``, counting fast-forwarded steps already done."""
        core = rep.core
        extra = 0
        if rep.chunk is not None:
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

    def decide(self, m: _Model, now: float) -> bool:
        """Call the real decider and carry out its count; True when nothing changed (at 0)."""
        if m.policy is None:
            return False
        self.decisions += 1
        decision, m.state = decide(self.observe(m, now), m.policy, m.state, now)
        desired = decision.desired_replicas
        live = sleepers = 0
        for r in m.replicas:
            if r.state == "sleeping":
                sleepers += 1
            elif r.state != "draining":
                live += 1
        if desired == live and not sleepers:
            return desired == 0  # plan_actions would return no action
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
            return desired == 0
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
        return False

    # models at rest
    def at_rest(self, m: _Model) -> bool:
        """Nothing can change for ``m`` until a request comes or a sleeper's TTL ends.

        After a tick whose decision was 0 replicas with no action: no buffered request, no
        replica but sleepers fully asleep, no panic. Each further tick would feed the decider the
        same empty observation; only the last stable window (or scale-down delay) of them shapes
        its state, so :meth:`catch_up` replays just those.
        """
        if m.buffer or m.state.panic_since_s is not None or m.forecaster is not None:
            return False
        return all(
            r.state == "sleeping" and r.gpu_since_s is None and not r.going_to_sleep
            for r in m.replicas
        )

    def ttl_tick(self, m: _Model) -> int | None:
        """The first tick at which plan_actions would stop one of ``m``'s sleepers (TTL)."""
        if not m.replicas:
            return None
        if not m.warm_pool.enabled:  # no sleepers without a warm pool; decide every tick
            return self.tick_k + 1
        tick, ttl = self.cfg.tick_s, m.warm_pool.sleep_ttl_s
        first: int | None = None
        for r in m.replicas:
            since = r.asleep_since_s if r.asleep_since_s is not None else 0.0
            k = max(math.ceil((since + ttl) / tick), self.tick_k + 1)
            while k * tick - since < ttl:
                k += 1
            while k - 1 > self.tick_k and (k - 1) * tick - since >= ttl:
                k -= 1
            first = k if first is None else min(first, k)
        return first

    def catch_up(self, m: _Model, last_k: int) -> None:
        """Replay the skipped ticks of a model at rest that still shape its decider state."""
        assert m.rest_tick is not None and m.policy is not None
        p = m.policy
        span = math.ceil(max(p.stable_window_s, p.scale_down_delay_s) / self.cfg.tick_s) + 1
        first = max(last_k - span, m.rest_tick + 1)
        m.rest_tick, m.rest_until_tick = None, None
        for k in range(first, last_k + 1):
            self.decide(m, k * self.cfg.tick_s)

    def sample(self, now: float) -> None:
        awake = asleep = demand = 0
        for m in self.models.values():
            demand += len(m.buffer)
            for r in m.replicas:
                if r.gpu_since_s is None:
                    asleep += 1
                else:
                    awake += 1
                demand += r.load
        self.samples_t.append(now - self.cfg.measure_from_s)
        self.samples_r.append(awake)
        self.samples_s.append(asleep)
        self.samples_d.append(demand)

    def run(self, progress: Callable[[int], None] | None) -> SimResult:
        cfg = self.cfg
        if cfg.policy == "always-on":
            for m in self.models.values():
                for _ in range(max(1, cfg.always_on_replicas.get(m.name, 1))):
                    self.start_replica(m, 0.0, ready_now=True)
        self.push(0.0, _TICK, None)
        ticks = 0
        reqs = self.requests
        n = len(reqs)
        i = 0
        now = 0.0
        next_sample = cfg.measure_from_s
        horizon = max(cfg.horizon_s, reqs[-1].arrival_s if n else 0.0)
        heap = self.heap
        heappop = heapq.heappop
        models = self.models
        first_token, finished = self.first_token, self.finished
        popped = 0
        while True:
            if i < n and (not heap or reqs[i].arrival_s <= heap[0][0]):
                req = reqs[i]
                now = req.arrival_s
                m = models[req.model]
                if req.prompt_tokens + req.output_tokens > m.spec.perf.max_model_len_tokens:
                    if i >= cfg.first_measured:
                        self.rejected += 1  # the engine would refuse it (AdmissionError)
                    i += 1
                    continue
                self.outstanding += 1
                if m.rest_tick is not None:
                    self.catch_up(m, self.tick_k)
                if m.forecaster is not None:
                    m.forecaster.observe(now)
                at_zero = not m.buffer
                self.route(m, i, req, now)
                if at_zero and m.buffer:
                    self.decide(m, now)  # the activator's poke
                i += 1
                if progress is not None and i % 4096 == 0:
                    progress(4096)
                continue
            if not heap:
                break
            popped += 1
            now, _, kind, payload = heappop(heap)
            if kind == _TICK:
                if now >= next_sample:
                    self.sample(now)
                    next_sample = now + cfg.sample_every_s
                k_now = self.tick_k = ticks
                for m in self.models.values():
                    if m.rest_tick is not None:
                        if m.rest_until_tick is None or k_now < m.rest_until_tick:
                            continue
                        self.catch_up(m, k_now - 1)
                    if self.decide(m, now) and cfg.skip_idle and self.at_rest(m):
                        m.rest_tick = k_now
                        m.rest_until_tick = self.ttl_tick(m)
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
                self.route_buffer(m, now)
            elif kind == _ASLEEP:
                if tag != rep.epoch:
                    continue
                rep.going_to_sleep = False
                self.give_gpu(rep, now)
            else:
                if tag != rep.version:
                    continue  # superseded by a split chunk
                if rep.chunk is not None:
                    start, step, k = rep.chunk
                    rep.core.advance(k - 1)
                    rep.chunk = None
                    plan = StepPlan(start + (k - 1) * step, step, (), tuple(rep.core.running))
                else:
                    assert rep.plan is not None
                    plan = rep.plan
                res = rep.core.finish_step(plan)
                for s in res.first_tokens:
                    first_token[int(s.request_id)] = res.end_s
                if res.finished:
                    for s in res.finished:
                        finished[int(s.request_id)] = res.end_s
                    self.outstanding -= len(res.finished)
                self.plan(m, rep, now)
        if progress is not None and n % 4096:
            progress(n % 4096)
        end = max(now, horizon)
        for m in self.models.values():
            for rep in list(m.replicas):
                self.remove(m, rep, end)
        t0 = cfg.measure_from_s
        records = tuple(
            RequestRecord(
                r.model,
                r.arrival_s - t0,
                self.first_token[k] - r.arrival_s,
                self.finished[k] - r.arrival_s,
                self.cold[k],
            )
            for k, r in enumerate(reqs)
            if k >= cfg.first_measured and not math.isnan(self.finished[k])
        )
        return SimResult(
            policy=cfg.policy,
            records=records,
            rejected_requests=self.rejected,
            unserved_requests=sum(
                1
                for k in range(cfg.first_measured, n)
                if math.isnan(self.finished[k])
                and reqs[k].prompt_tokens + reqs[k].output_tokens
                <= self.models[reqs[k].model].spec.perf.max_model_len_tokens
            ),
            capacity_refusals=self.capacity_refusals,
            cold_starts_by_tier=dict(self.cold_by_tier),
            gpu_seconds_by_pool=dict(self.gpu_s),
            end_s=max(end - t0, 0.0),
            sample_times_s=tuple(self.samples_t),
            sample_replicas=tuple(self.samples_r),
            sample_sleeping=tuple(self.samples_s),
            sample_demand=tuple(self.samples_d),
            events=n + popped,
            decisions=self.decisions,
        )


def simulate(
    requests: Sequence[Request],
    fleet: Fleet,
    cfg: SimConfig,
    progress: Callable[[int], None] | None = None,
) -> SimResult:
    """Replay ``requests`` (sorted by arrival) on ``fleet`` under ``cfg``; see the module doc."""
    return _Run(requests, fleet, cfg).run(progress)


def peak_replicas(
    requests: Sequence[Request], spec: FleetModel, window_s: float = 60.0, utilization: float = 0.7
) -> int:
    """Replicas that carry the busiest ``window_s`` of ``requests`` at ``utilization``.

    Work per request is its prefill plus its output at a full batch's step time (Little's law:
    busy sequences = sum of service times / window), divided by ``max_num_seqs`` per replica.
    """
    perf = spec.perf
    step = perf.decode_step_s(perf.max_num_seqs)
    buckets: dict[int, float] = {}
    for r in requests:
        k = int(r.arrival_s // window_s)
        buckets[k] = buckets.get(k, 0.0) + perf.prefill_s(r.prompt_tokens) + r.output_tokens * step
    if not buckets:
        return 1
    busy = max(buckets.values()) / window_s
    return max(1, math.ceil(busy / (perf.max_num_seqs * utilization)))
