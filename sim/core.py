"""The discrete-event core of the cold-start simulator. Pure and deterministic.

Owns virtual time: a heap of events (replica ready, engine step end, autoscaler tick) merged with
the sorted arrivals of a trace. Per model it keeps a simulated activator buffer (requests that
arrive while no replica is ready wait there: they *waited on a cold start*) and replicas, each an
:class:`~sim.engine_model.EngineCore` (the same continuous-batching scheduler as
``thaw emulator``). Every ``tick_s`` — and at once when a request is buffered at zero, as the
activator pokes the autoscaler — it builds a :class:`~autoscaler.decider.ModelObservation` from
the simulated replicas and calls the real :func:`autoscaler.decider.decide`, then applies the
desired count: new replicas are ready after the fleet's derived cold-start time for the tier;
scaling down stops starting replicas first, then idle ones at once, then drains busy ones (no new
requests; stopped when empty).

Policies: ``thaw`` (the policy file's autoscaling), ``kpa`` (the same decider with Knative's
defaults: concurrency target 100 x 0.7, 60 s stable / 10 % panic window, 200 % panic threshold,
30 s scale-to-zero grace) and ``always-on`` (a fixed count sized for the trace's peak, never
scaled, ready from the start).

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
from autoscaler.policy import AutoscalingPolicy
from sim.engine_model import EngineCore, StepPlan
from sim.engine_model import Sequence as EngineSeq
from sim.fleet import TIERS, Fleet, FleetModel, Tier, cold_start_s
from sim.traces import Request

PolicyName = Literal["thaw", "kpa", "always-on"]
POLICIES: tuple[PolicyName, ...] = ("thaw", "kpa", "always-on")


def kpa_policy(max_replicas: int) -> AutoscalingPolicy:
    """Knative KPA's defaults expressed as an :class:`AutoscalingPolicy`."""
    return AutoscalingPolicy(
        min_replicas=0,
        max_replicas=max_replicas,
        initial_replicas=0,
        target_waiting_per_replica=None,
        target_kv_cache_usage_ratio=None,
        target_concurrency_per_replica=70.0,
        stable_window_s=60.0,
        panic_window_pct=10.0,
        panic_threshold_pct=200.0,
        max_scale_up_rate=1000.0,
        max_scale_down_rate=2.0,
        scale_down_delay_s=0.0,
        scale_to_zero_grace_s=30.0,
        activation_scale=1,
    )


@dataclass(frozen=True)
class SimConfig:
    """One simulation run: which policy, for which models, ticking how often."""

    policy: PolicyName
    autoscaling: Mapping[str, AutoscalingPolicy]
    """Per trace model, the policy the decider gets (unused for ``always-on``)."""
    specs: Mapping[str, FleetModel]
    """Per trace model, the fleet model it runs as."""
    tick_s: float = 1.0
    tier: Tier = "local_disk"
    always_on_replicas: Mapping[str, int] = field(default_factory=dict)
    """Per trace model, the fixed count for ``always-on``."""
    horizon_s: float = 0.0
    """Keep simulating (ticks, GPU time) at least until here."""
    sample_every_s: float = 10.0
    fast_forward: bool = True
    """Run identical decode steps as one event (same results; off: one event per step)."""


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
    """Everything one run measured."""

    policy: PolicyName
    records: tuple[RequestRecord, ...]
    rejected_requests: int
    capacity_refusals: int
    cold_starts_by_tier: Mapping[str, int]
    gpu_seconds_by_pool: Mapping[str, float]
    end_s: float
    sample_times_s: tuple[float, ...]
    sample_replicas: tuple[int, ...]
    sample_demand: tuple[int, ...]


# -- mutable simulation state (private to one run) -------------------------------------------


@dataclass
class _Replica:
    rid: str
    pool: str
    gpus: int
    started_s: float
    core: EngineCore
    ready: bool = False
    draining: bool = False
    stopped: bool = False
    plan: StepPlan | None = None
    chunk: tuple[float, float, int] | None = None
    """Steps fast-forwarded as one event: (start_s, step_s, steps); see ``_Run.plan``."""
    version: int = 0

    @property
    def load(self) -> int:
        return self.core.num_running + self.core.num_waiting


@dataclass
class _Model:
    name: str
    spec: FleetModel
    policy: AutoscalingPolicy | None
    state: DeciderState = field(default_factory=DeciderState.initial)
    replicas: list[_Replica] = field(default_factory=list)
    buffer: deque[tuple[int, Request]] = field(default_factory=deque)
    next_id: int = 0


_READY, _STEP, _TICK = 0, 1, 2
_Payload = tuple[_Model, _Replica, int]


class _Run:
    def __init__(self, requests: Sequence[Request], fleet: Fleet, cfg: SimConfig) -> None:
        self.requests = requests
        self.fleet = fleet
        self.cfg = cfg
        self.heap: list[tuple[float, int, int, _Payload | None]] = []
        self.seq = 0
        self.free_gpus = {p.name: p.count for p in fleet.pools}
        self.gpu_s = {p.name: 0.0 for p in fleet.pools}
        self.cold_by_tier: dict[str, int] = dict.fromkeys(TIERS, 0)
        self.capacity_refusals = 0
        self.rejected = 0
        self.models: dict[str, _Model] = {}
        for name in sorted({r.model for r in requests} | set(cfg.specs)):
            if name not in cfg.specs:
                raise KeyError(f"trace model {name!r} has no fleet model")
            policy = None if cfg.policy == "always-on" else cfg.autoscaling.get(name)
            self.models[name] = _Model(name, cfg.specs[name], policy)
        self.first_token: list[float] = [math.nan] * len(requests)
        self.finished: list[float] = [math.nan] * len(requests)
        self.cold: list[bool] = [False] * len(requests)
        self.outstanding = 0
        self.samples_t: list[float] = []
        self.samples_r: list[int] = []
        self.samples_d: list[int] = []

    # events
    def push(self, t: float, kind: int, payload: _Payload | None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, payload))

    # replicas
    def start_replica(self, m: _Model, now: float, ready_now: bool) -> bool:
        for pool_name in m.spec.pools:
            if self.free_gpus[pool_name] >= 1:
                self.free_gpus[pool_name] -= 1
                m.next_id += 1
                rep = _Replica(f"{m.name}-{m.next_id}", pool_name, 1, now, EngineCore(m.spec.perf))
                m.replicas.append(rep)
                if ready_now:
                    rep.ready = True
                else:
                    delay = cold_start_s(m.spec, self.fleet.pool(pool_name), self.cfg.tier)
                    self.cold_by_tier[self.cfg.tier] += 1
                    self.push(now + delay, _READY, (m, rep, 0))
                return True
        self.capacity_refusals += 1
        return False

    def stop_replica(self, m: _Model, rep: _Replica, now: float) -> None:
        rep.stopped = True
        m.replicas.remove(rep)
        self.free_gpus[rep.pool] += rep.gpus
        self.gpu_s[rep.pool] += (now - rep.started_s) * rep.gpus

    def route(self, m: _Model, idx: int, req: Request, now: float) -> None:
        ready = [r for r in m.replicas if r.ready and not r.draining]
        if not ready:
            self.cold[idx] = True
            m.buffer.append((idx, req))
            return
        rep = min(ready, key=lambda r: r.load)
        rep.core.add(EngineSeq(str(idx), req.prompt_tokens, req.output_tokens, req.arrival_s))
        if rep.chunk is not None:
            self.split_chunk(m, rep, now)
        elif rep.plan is None:
            self.plan(m, rep, now)

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
        elif rep.draining:
            self.stop_replica(m, rep, now)

    @staticmethod
    def _advance(rep: _Replica, steps: int) -> None:
        for s in rep.core.running:
            s.generated_tokens += steps

    def _chunk_steps_done(self, rep: _Replica, now: float) -> int:
        assert rep.chunk is not None
        start, step, k = rep.chunk
        return min(int((now - start) / step), k - 1)

    def split_chunk(self, m: _Model, rep: _Replica, now: float) -> None:
        """End a fast-forward at the step in progress at ``now``; that step becomes a plan."""
        assert rep.chunk is not None
        start, step, _ = rep.chunk
        j = self._chunk_steps_done(rep, now)
        self._advance(rep, j)
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
        used = sum(s.kv_tokens for s in core.running) + extra
        return min(used / core.perf.kv_capacity_tokens, 1.0)

    # decisions
    def observe(self, m: _Model, now: float) -> ModelObservation:
        reps = []
        for r in m.replicas:
            if r.draining:
                continue
            if r.ready:
                reps.append(
                    ReplicaObservation(
                        r.rid,
                        "ready",
                        float(r.core.num_waiting),
                        float(r.core.num_running),
                        self.kv_ratio(r, now),
                        0.0,
                    )
                )
            else:
                reps.append(ReplicaObservation(r.rid, "starting", None, None, None, None))
        return ModelObservation(m.name, tuple(reps), len(m.buffer))

    def decide(self, m: _Model, now: float) -> None:
        if m.policy is None:
            return
        decision, m.state = decide(self.observe(m, now), m.policy, m.state, now)
        live = [r for r in m.replicas if not r.draining]
        diff = decision.desired_replicas - len(live)
        for _ in range(diff):
            if not self.start_replica(m, now, ready_now=False):
                break
        if diff < 0:
            # starting first, then idle, then the least loaded (drained).
            order = sorted(live, key=lambda r: (r.ready, r.load > 0, r.load, r.rid))
            for rep in order[:-diff]:
                if not rep.ready or rep.load == 0:
                    self.stop_replica(m, rep, now)
                else:
                    rep.draining = True

    def sample(self, now: float) -> None:
        n = demand = 0
        for m in self.models.values():
            n += sum(1 for r in m.replicas if not r.draining)
            demand += len(m.buffer) + sum(r.load for r in m.replicas)
        self.samples_t.append(now)
        self.samples_r.append(n)
        self.samples_d.append(demand)

    def run(self, progress: Callable[[int], None] | None) -> SimResult:
        cfg = self.cfg
        if cfg.policy == "always-on":
            for m in self.models.values():
                for _ in range(max(1, cfg.always_on_replicas.get(m.name, 1))):
                    self.start_replica(m, 0.0, ready_now=True)
        self.push(0.0, _TICK, None)
        reqs = self.requests
        n = len(reqs)
        i = 0
        now = 0.0
        next_sample = 0.0
        horizon = max(cfg.horizon_s, reqs[-1].arrival_s if n else 0.0)
        heap = self.heap
        while True:
            if i < n and (not heap or reqs[i].arrival_s <= heap[0][0]):
                req = reqs[i]
                now = req.arrival_s
                m = self.models[req.model]
                if req.prompt_tokens + req.output_tokens > m.spec.perf.max_model_len_tokens:
                    self.rejected += 1  # the engine would refuse it (AdmissionError)
                    i += 1
                    continue
                self.outstanding += 1
                at_zero = not any(r.ready and not r.draining for r in m.replicas)
                self.route(m, i, req, now)
                if at_zero and len(m.buffer) == 1:
                    self.decide(m, now)  # the activator's poke
                i += 1
                if progress is not None and i % 4096 == 0:
                    progress(4096)
                continue
            if not heap:
                break
            now, _, kind, payload = heapq.heappop(heap)
            if kind == _TICK:
                if now >= next_sample:
                    self.sample(now)
                    next_sample = now + cfg.sample_every_s
                for m in self.models.values():
                    self.decide(m, now)
                if i < n or self.outstanding > 0 or now < horizon:
                    self.push(now + cfg.tick_s, _TICK, None)
            elif kind == _READY:
                assert payload is not None
                m, rep, _ = payload
                if rep.stopped:
                    continue
                rep.ready = True
                while m.buffer:
                    idx, req = m.buffer.popleft()
                    self.route(m, idx, req, now)
            else:
                assert payload is not None
                m, rep, version = payload
                if version != rep.version:
                    continue  # superseded by a split chunk
                if rep.chunk is not None:
                    start, step, k = rep.chunk
                    self._advance(rep, k - 1)
                    rep.chunk = None
                    plan = StepPlan(start + (k - 1) * step, step, (), tuple(rep.core.running))
                else:
                    assert rep.plan is not None
                    plan = rep.plan
                res = rep.core.finish_step(plan)
                for s in res.first_tokens:
                    self.first_token[int(s.request_id)] = res.end_s
                for s in res.finished:
                    self.finished[int(s.request_id)] = res.end_s
                    self.outstanding -= 1
                self.plan(m, rep, now)
        if progress is not None and n % 4096:
            progress(n % 4096)
        end = max(now, horizon)
        for m in self.models.values():
            for rep in list(m.replicas):
                self.stop_replica(m, rep, end)
        records = tuple(
            RequestRecord(
                r.model,
                r.arrival_s,
                self.first_token[k] - r.arrival_s,
                self.finished[k] - r.arrival_s,
                self.cold[k],
            )
            for k, r in enumerate(reqs)
            if not math.isnan(self.finished[k])
        )
        return SimResult(
            policy=cfg.policy,
            records=records,
            rejected_requests=self.rejected,
            capacity_refusals=self.capacity_refusals,
            cold_starts_by_tier=dict(self.cold_by_tier),
            gpu_seconds_by_pool=dict(self.gpu_s),
            end_s=end,
            sample_times_s=tuple(self.samples_t),
            sample_replicas=tuple(self.samples_r),
            sample_demand=tuple(self.samples_d),
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
