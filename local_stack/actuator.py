"""The local actuator: engine replicas as child processes on this machine.

It owns the replica lifecycle of the local stack — start on a free port, wait for ``/health``,
scrape ``/metrics``, drain, stop — and reports it two ways: :meth:`LocalActuator.ready_replicas`
for the activator's routing (an ``EndpointSource``) and :meth:`LocalActuator.observe` for the
decider (a ``ModelObservation``). It decides nothing: the stack calls :meth:`LocalActuator.scale`
with the decider's count.

Replica states are the shared vocabulary's (:mod:`kernel.vocab`): ``starting`` (process up,
``/health`` not yet 200), ``ready``, ``sleeping`` (the warm pool; not routed to), ``draining`` (no
new requests; stopped once its engine reports nothing running or waiting, or after
``drain_timeout_s``).

Two ways to act: :meth:`LocalActuator.apply` carries out one model's warm-pool actions at once
(engines with a GPU each), :meth:`LocalActuator.run_plan` carries out the GPU-memory arbiter's
plan for the one GPU the engines share: every sleep and stop first, and no wake or start until
every sleep and stop in flight (this plan's and earlier ones') has given its memory back — the
sleep answered, the process gone — so the GPU is never asked for more than it has.

Sleep, wake and the other control requests carry ``control_headers`` (Thaw's credential for the
engine guard, :mod:`engine.vllm_site.thaw_engine_guard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from activator.types import Replica
from autoscaler.arbiter import GpuEngine, GpuPlan
from autoscaler.decider import ModelObservation, ReplicaObservation
from autoscaler.policy import WarmPoolConfig
from autoscaler.warm_pool import Actions, PoolReplica, plan_actions
from engine.metrics import EngineMetrics, MetricsParseError, parse_engine_metrics
from engine.process import EngineProcess, EngineSpec, EngineStartError
from kernel.clock import Clock
from kernel.errors import ThawError
from kernel.vocab import LoadTier, ReplicaState

log = logging.getLogger(__name__)

#: After a failed start, the next start of that model waits this long, doubling per failure.
START_BACKOFF_S = 1.0
START_BACKOFF_MAX_S = 60.0

#: Prepares one replica's launch (may pull the model): (model, port, replica id) -> (spec, tier),
#: the tier being where the weights load from: ``local_disk`` or ``remote``.
SpecFactory = Callable[[str, int, str], Awaitable[tuple[EngineSpec, LoadTier]]]
#: Called when a model's set of ready replicas changes (the activator releases its buffer).
ChangeListener = Callable[[str], None]
#: Called when a replica becomes ready: (model, replica id, seconds to ready, load tier).
ReadyListener = Callable[[str, str, float, LoadTier], None]


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class LocalReplica:
    """One engine child process and what the actuator last learned about it."""

    replica_id: str
    model: str
    process: EngineProcess | None  # None while the model is being prepared (pulled)
    state: ReplicaState
    started_at_s: float
    ready_at_s: float | None = None
    metrics: EngineMetrics | None = None
    scraped_at_s: float | None = None
    draining_since_s: float | None = None
    sleep_level: int | None = None
    asleep_since_s: float | None = None
    wake_started_s: float | None = None
    scrape_error: str | None = None  # why the last scrape failed; None after a good one
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return self.process.base_url if self.process is not None else ""


class LocalActuator:
    """Starts, scrapes, drains and stops engine replicas as local child processes."""

    def __init__(
        self,
        spec_factory: SpecFactory,
        clock: Clock,
        *,
        on_change: ChangeListener | None = None,
        on_ready: ReadyListener | None = None,
        scrape_timeout_s: float = 2.0,
        drain_timeout_s: float = 30.0,
        stop_grace_s: float = 10.0,
        cpu_note: str = "",
        control_headers: dict[str, str] | None = None,
    ) -> None:
        self._spec_factory = spec_factory
        self._clock = clock
        self._on_change = on_change
        self._on_ready = on_ready
        self._scrape_timeout_s = scrape_timeout_s
        self._drain_timeout_s = drain_timeout_s
        self._stop_grace_s = stop_grace_s
        self._replicas: dict[str, LocalReplica] = {}
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._cpu_note = cpu_note
        self._failures: dict[str, int] = {}
        self._retry_at_s: dict[str, float] = {}
        self._control_headers = dict(control_headers or {})
        #: Sleeps and stops whose memory is not back yet; wakes and starts of a plan wait.
        self._frees: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._scrape_timeout_s)
        )

    async def close(self) -> None:
        """Stop every replica (SIGTERM, then SIGKILL after the grace) and close the session."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        replicas = list(self._replicas.values())
        self._replicas.clear()
        await asyncio.gather(
            *(r.process.stop(self._stop_grace_s) for r in replicas if r.process is not None),
            return_exceptions=True,
        )
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- views -----------------------------------------------------------------------------

    def replicas(self, model: str | None = None) -> list[LocalReplica]:
        return [r for r in self._replicas.values() if model is None or r.model == model]

    def count(self, model: str, state: ReplicaState) -> int:
        return sum(1 for r in self.replicas(model) if r.state == state)

    def ready_replicas(self, model: str) -> Sequence[Replica]:
        """The activator's ``EndpointSource``: ready replicas only, with their last metrics."""
        return [
            Replica(
                replica_id=r.replica_id,
                base_url=r.base_url,
                kv_cache_usage_ratio=r.metrics.kv_cache_usage_ratio if r.metrics else None,
                num_requests_waiting=r.metrics.num_requests_waiting if r.metrics else None,
            )
            for r in self.replicas(model)
            if r.state == "ready"
        ]

    def observe(
        self,
        model: str,
        buffered_requests: int,
        now_s: float,
        outstanding: Callable[[str], int] | None = None,
    ) -> ModelObservation:
        """What the decider sees of ``model`` now: its replicas (draining excluded) and buffer.

        ``outstanding(replica_id)``: the activator's in-flight count at a replica, a floor under
        the scraped load (see :attr:`ReplicaObservation.in_flight_requests`).
        """
        observed: list[ReplicaObservation] = []
        for r in self.replicas(model):
            if r.state == "draining":
                continue
            m = r.metrics if r.state == "ready" else None
            observed.append(
                ReplicaObservation(
                    replica_id=r.replica_id,
                    state=r.state,
                    num_requests_waiting=m.num_requests_waiting if m else None,
                    num_requests_running=m.num_requests_running if m else None,
                    kv_cache_usage_ratio=m.kv_cache_usage_ratio if m else None,
                    scrape_age_s=(now_s - r.scraped_at_s) if r.scraped_at_s is not None else None,
                    in_flight_requests=(
                        float(outstanding(r.replica_id))
                        if outstanding is not None and r.state == "ready"
                        else None
                    ),
                )
            )
        return ModelObservation(
            model=model, replicas=tuple(observed), buffered_requests=buffered_requests
        )

    # -- actuation ---------------------------------------------------------------------------

    def pool_view(self, model: str) -> list[PoolReplica]:
        """The model's replicas as the pure warm-pool planner sees them."""
        out = []
        for r in self.replicas(model):
            m = r.metrics
            out.append(
                PoolReplica(
                    replica_id=r.replica_id,
                    state=r.state,
                    load=(m.num_requests_running + m.num_requests_waiting) if m else 0.0,
                    sleep_level=r.sleep_level,
                    asleep_since_s=r.asleep_since_s,
                    started_at_s=r.started_at_s,
                )
            )
        return out

    def gpu_view(self) -> list[GpuEngine]:
        """Every replica as the GPU-memory arbiter sees it (one GPU: this machine's)."""
        out = []
        for r in self._replicas.values():
            m = r.metrics
            since = r.asleep_since_s if r.state == "sleeping" else (r.ready_at_s or r.started_at_s)
            out.append(
                GpuEngine(
                    engine_id=r.replica_id,
                    model=r.model,
                    state=r.state,
                    sleep_level=(1 if r.sleep_level == 1 else 2) if r.state == "sleeping" else None,
                    load=(m.num_requests_running + m.num_requests_waiting) if m else 0.0,
                    since_s=since or 0.0,
                )
            )
        return out

    def run_plan(self, plan: GpuPlan) -> None:
        """Carry out the arbiter's plan: its sleeps and stops now, its wakes and starts once every
        sleep and stop in flight has given its GPU memory back."""
        for step in plan.frees:
            r = self._replicas.get(step.engine_id or "")
            if r is None or r.state == "draining":
                continue
            task = self._sleep(r, step.level or 1) if step.kind == "sleep" else self._drain(r)
            self._frees.add(task)
            task.add_done_callback(self._frees.discard)
        for step in plan.gains:
            if step.kind == "wake":
                r = self._replicas.get(step.engine_id or "")
                if r is not None and r.state == "sleeping":
                    self._wake(r)
            elif self._clock.monotonic() < self._retry_at_s.get(step.model, 0.0):
                log.debug("model %s: start held back after failures", step.model)
            else:
                self._start_replica(step.model)

    async def _memory_back(self) -> None:
        """Until every sleep and stop in flight has given its GPU memory back."""
        pending = [t for t in self._frees if not t.done()]
        if pending:  # asyncio.wait: cancelling this waiter never cancels those tasks
            await asyncio.wait(pending)

    def scale(self, model: str, desired: int) -> Actions:
        """Move ``model`` to ``desired`` live replicas with no warm pool (start / stop only)."""
        actions = plan_actions(
            desired, self.pool_view(model), WarmPoolConfig(), self._clock.monotonic()
        )
        self.apply(model, actions)
        return actions

    def apply(self, model: str, actions: Actions) -> None:
        """Carry out the warm pool's actions for ``model`` (each in its own task)."""
        for rid in actions.wake:
            self._wake(self._replicas[rid])
        if actions.start and self._clock.monotonic() < self._retry_at_s.get(model, 0.0):
            log.debug("model %s: start held back after failures", model)
        else:
            for _ in range(actions.start):
                self._start_replica(model)
        for rid, level in actions.sleep:
            self._sleep(self._replicas[rid], level)
        for rid in actions.stop:
            r = self._replicas.get(rid)
            if r is not None and r.state != "draining":
                self._drain(r)

    def _start_replica(self, model: str) -> LocalReplica:
        replica_id = f"{model}-{next(self._ids)}"
        replica = LocalReplica(
            replica_id=replica_id,
            model=model,
            process=None,
            state="starting",
            started_at_s=self._clock.monotonic(),
        )
        self._replicas[replica_id] = replica
        replica.task = self._spawn(self._run_start(replica))
        return replica

    async def _run_start(self, replica: LocalReplica) -> None:
        await self._memory_back()
        try:
            spec, tier = await self._spec_factory(replica.model, free_port(), replica.replica_id)
            replica.process = EngineProcess(spec)
            log.info("replica %s: starting on %s (%s)", replica.replica_id, spec.base_url, tier)
            await replica.process.start()
        except (EngineStartError, OSError, ThawError) as e:
            await self._start_failed(replica, str(e), traceback=False)
            return
        except Exception as e:  # a bug or a library's error: said now, with its traceback
            await self._start_failed(replica, f"{type(e).__name__}: {e}", traceback=True)
            return
        if replica.state != "starting":  # drained while starting: the drain task stops it
            return
        self._failures.pop(replica.model, None)
        self._retry_at_s.pop(replica.model, None)
        now_s = self._clock.monotonic()
        replica.ready_at_s = now_s
        await self.scrape_one(replica)
        replica.state = "ready"
        log.info("replica %s: ready in %.1f s", replica.replica_id, now_s - replica.started_at_s)
        if self._on_ready is not None:
            self._on_ready(replica.model, replica.replica_id, now_s - replica.started_at_s, tier)
        self._changed(replica.model)

    async def _start_failed(self, replica: LocalReplica, why: str, *, traceback: bool) -> None:
        """Count a failed start (backoff), log it now, and forget the replica."""
        n = self._failures.get(replica.model, 0) + 1
        self._failures[replica.model] = n
        backoff_s = min(START_BACKOFF_MAX_S, START_BACKOFF_S * 2 ** (n - 1))
        self._retry_at_s[replica.model] = self._clock.monotonic() + backoff_s
        log.error(
            "replica %s failed to start (%d in a row; next try in %.0f s): %s",
            replica.replica_id,
            n,
            backoff_s,
            why,
            exc_info=traceback,
        )
        self._replicas.pop(replica.replica_id, None)
        if replica.process is not None:
            await replica.process.stop(self._stop_grace_s)

    def _drain(self, replica: LocalReplica) -> asyncio.Task[None]:
        """Drain and stop ``replica``; the task ends once its process is gone."""
        was_ready = replica.state == "ready"
        replica.state = "draining"
        replica.draining_since_s = self._clock.monotonic()
        log.info("replica %s: draining", replica.replica_id)
        if was_ready:
            self._changed(replica.model)
        return self._spawn(self._run_drain(replica, wait=was_ready))

    async def _run_drain(self, replica: LocalReplica, *, wait: bool) -> None:
        if replica.task is not None and not replica.task.done():
            replica.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await replica.task
        if wait:
            await self._wait_idle(replica)
        code = await replica.process.stop(self._stop_grace_s) if replica.process else None
        self._replicas.pop(replica.replica_id, None)
        log.info("replica %s: stopped (exit %s)", replica.replica_id, code)

    async def _wait_idle(self, replica: LocalReplica) -> None:
        """Until the replica's engine reports nothing running or waiting, or the drain timeout."""
        deadline = self._clock.monotonic() + self._drain_timeout_s
        while self._clock.monotonic() < deadline:
            await self.scrape_one(replica)
            m = replica.metrics
            if m is not None and m.num_requests_running + m.num_requests_waiting == 0:
                return
            await asyncio.sleep(0.5)
        log.warning(
            "replica %s: still busy after the %.0f s drain timeout; going on",
            replica.replica_id,
            self._drain_timeout_s,
        )

    def _sleep(self, replica: LocalReplica, level: int) -> asyncio.Task[None]:
        """Put ``replica`` to sleep; the task ends once the engine has answered (asleep, or
        stopped instead when the sleep failed)."""
        was_ready = replica.state == "ready"
        replica.state = "sleeping"
        replica.sleep_level = level
        replica.asleep_since_s = self._clock.monotonic()
        if was_ready:
            self._changed(replica.model)
        return self._spawn(self._run_sleep(replica, level))

    async def _run_sleep(self, replica: LocalReplica, level: int) -> None:
        assert self._session is not None
        await self._wait_idle(replica)  # let in-flight requests finish first
        try:
            url = f"{replica.base_url}/sleep?level={level}"
            async with self._session.post(url, headers=self._control_headers) as resp:
                if resp.status != 200:
                    raise aiohttp.ClientResponseError(
                        resp.request_info, (), status=resp.status, message=await resp.text()
                    )
        except (aiohttp.ClientError, TimeoutError) as e:
            log.warning("replica %s: sleep failed (%s); stopping it instead", replica.replica_id, e)
            await self._drain(replica)
            return
        log.info(
            "replica %s: asleep at level %d%s",
            replica.replica_id,
            level,
            self._cpu_note,
        )

    def _wake(self, replica: LocalReplica) -> None:
        replica.state = "starting"  # capacity on its way; not routed to until awake
        replica.wake_started_s = self._clock.monotonic()
        self._spawn(self._run_wake(replica))

    async def _run_wake(self, replica: LocalReplica) -> None:
        assert self._session is not None
        started = replica.wake_started_s or self._clock.monotonic()
        await self._memory_back()
        headers = self._control_headers
        try:
            async with self._session.post(f"{replica.base_url}/wake_up", headers=headers) as resp:
                if resp.status != 200:
                    raise aiohttp.ClientResponseError(
                        resp.request_info, (), status=resp.status, message=await resp.text()
                    )
            for _ in range(600):
                url = f"{replica.base_url}/is_sleeping"
                async with self._session.get(url, headers=headers) as resp:
                    if not (await resp.json()).get("is_sleeping", False):
                        break
                await asyncio.sleep(0.05)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.warning("replica %s: wake failed (%s); stopping it", replica.replica_id, e)
            self._drain(replica)
            return
        if replica.state != "starting":
            return
        await self.scrape_one(replica)
        replica.state = "ready"
        replica.sleep_level = None
        replica.asleep_since_s = None
        waited = self._clock.monotonic() - started
        log.info("replica %s: awake in %.2f s", replica.replica_id, waited)
        if self._on_ready is not None:
            self._on_ready(replica.model, replica.replica_id, waited, "wake")
        self._changed(replica.model)

    # -- scraping ----------------------------------------------------------------------------

    async def scrape(self, model: str | None = None) -> None:
        """Scrape every ready replica's ``/metrics`` concurrently; notice dead processes."""
        replicas = [r for r in self.replicas(model) if r.state == "ready"]
        await asyncio.gather(*(self.scrape_one(r) for r in replicas))
        for r in replicas:
            if r.process is not None and not r.process.running and r.state == "ready":
                log.error(
                    "replica %s exited unexpectedly (exit %s)",
                    r.replica_id,
                    r.process.returncode,
                )
                self._replicas.pop(r.replica_id, None)
                self._changed(r.model)

    async def scrape_one(self, replica: LocalReplica) -> None:
        if self._session is None:
            raise RuntimeError("LocalActuator.start() was not awaited")
        try:
            async with self._session.get(f"{replica.base_url}/metrics") as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise MetricsParseError(f"GET /metrics answered {resp.status}")
            replica.metrics = parse_engine_metrics(text)
            replica.scraped_at_s = self._clock.monotonic()
            replica.scrape_error = None
        except (aiohttp.ClientError, TimeoutError, MetricsParseError) as e:
            # Keep the old sample: its age tells the decider it is stale (the stack says so).
            replica.scrape_error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            log.debug("scrape of %s failed: %s", replica.replica_id, replica.scrape_error)

    # -- helpers -----------------------------------------------------------------------------

    def _changed(self, model: str) -> None:
        if self._on_change is not None:
            self._on_change(model)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """Forget a finished task; an exception nothing handled is logged as it happens (not
        as "never retrieved" at exit, or never)."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("actuator task %s failed", task.get_name(), exc_info=task.exception())

    def models(self) -> Iterable[str]:
        return sorted({r.model for r in self._replicas.values()})
