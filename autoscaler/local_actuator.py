"""The local actuator: engine replicas as child processes on this machine.

It owns the replica lifecycle of the local stack — start on a free port, wait for ``/health``,
scrape ``/metrics``, drain, stop — and reports it two ways: :meth:`LocalActuator.ready_replicas`
for the activator's routing (an ``EndpointSource``) and :meth:`LocalActuator.observe` for the
decider (a ``ModelObservation``). It decides nothing: the stack calls :meth:`LocalActuator.scale`
with the decider's count.

Replica states follow the decider's vocabulary: ``starting`` (process up, ``/health`` not yet
200), ``ready``, ``sleeping`` (the warm pool; not routed to), ``draining`` (no new requests; stopped
once its engine reports nothing running or waiting, or after ``drain_timeout_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from activator.types import Replica
from autoscaler.decider import ModelObservation, ReplicaObservation
from autoscaler.engine_metrics import EngineMetrics, MetricsParseError, parse_engine_metrics
from autoscaler.engine_process import EngineProcess, EngineSpec, EngineStartError
from thaw.clock import Clock

log = logging.getLogger(__name__)

ReplicaState = Literal["starting", "ready", "sleeping", "draining"]

#: Builds the launch spec of one replica: (model name, port, replica id) -> spec.
SpecFactory = Callable[[str, int, str], EngineSpec]
#: Called when a model's set of ready replicas changes (the activator releases its buffer).
ChangeListener = Callable[[str], None]
#: Called when a replica becomes ready: (model, replica id, seconds from start to ready).
ReadyListener = Callable[[str, str, float], None]


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
    process: EngineProcess
    state: ReplicaState
    started_at_s: float
    ready_at_s: float | None = None
    metrics: EngineMetrics | None = None
    scraped_at_s: float | None = None
    draining_since_s: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return self.process.base_url


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
            *(r.process.stop(self._stop_grace_s) for r in replicas), return_exceptions=True
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

    def observe(self, model: str, buffered_requests: int, now_s: float) -> ModelObservation:
        """What the decider sees of ``model`` now: its replicas (draining excluded) and buffer."""
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
                )
            )
        return ModelObservation(
            model=model, replicas=tuple(observed), buffered_requests=buffered_requests
        )

    # -- actuation ---------------------------------------------------------------------------

    def scale(self, model: str, desired: int) -> tuple[list[str], list[str]]:
        """Move ``model`` towards ``desired`` live (starting + ready) replicas.

        Returns (started ids, drained ids). Scale-down drains starting replicas first (newest
        first: the least sunk cost), then ready ones with the least work in their engine.
        """
        live = [r for r in self.replicas(model) if r.state in ("starting", "ready")]
        started: list[str] = []
        drained: list[str] = []
        if desired > len(live):
            for _ in range(desired - len(live)):
                started.append(self._start_replica(model).replica_id)
        elif desired < len(live):

            def load(r: LocalReplica) -> float:
                m = r.metrics
                return (m.num_requests_running + m.num_requests_waiting) if m else 0.0

            starting = sorted(
                (r for r in live if r.state == "starting"), key=lambda r: -r.started_at_s
            )
            ready = sorted((r for r in live if r.state == "ready"), key=load)
            for r in [*starting, *ready][: len(live) - desired]:
                self._drain(r)
                drained.append(r.replica_id)
        return started, drained

    def _start_replica(self, model: str) -> LocalReplica:
        replica_id = f"{model}-{next(self._ids)}"
        spec = self._spec_factory(model, free_port(), replica_id)
        replica = LocalReplica(
            replica_id=replica_id,
            model=model,
            process=EngineProcess(spec),
            state="starting",
            started_at_s=self._clock.monotonic(),
        )
        self._replicas[replica_id] = replica
        replica.task = self._spawn(self._run_start(replica))
        log.info("replica %s: starting on %s", replica_id, spec.base_url)
        return replica

    async def _run_start(self, replica: LocalReplica) -> None:
        try:
            await replica.process.start()
        except (EngineStartError, OSError) as e:
            log.error("replica %s failed to start: %s", replica.replica_id, e)
            self._replicas.pop(replica.replica_id, None)
            await replica.process.stop(self._stop_grace_s)
            return
        if replica.state != "starting":  # drained while starting: the drain task stops it
            return
        now_s = self._clock.monotonic()
        replica.ready_at_s = now_s
        await self.scrape_one(replica)
        replica.state = "ready"
        log.info("replica %s: ready in %.1f s", replica.replica_id, now_s - replica.started_at_s)
        if self._on_ready is not None:
            self._on_ready(replica.model, replica.replica_id, now_s - replica.started_at_s)
        self._changed(replica.model)

    def _drain(self, replica: LocalReplica) -> None:
        was_ready = replica.state == "ready"
        replica.state = "draining"
        replica.draining_since_s = self._clock.monotonic()
        log.info("replica %s: draining", replica.replica_id)
        if was_ready:
            self._changed(replica.model)
        self._spawn(self._run_drain(replica, wait=was_ready))

    async def _run_drain(self, replica: LocalReplica, *, wait: bool) -> None:
        if replica.task is not None and not replica.task.done():
            replica.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await replica.task
        deadline = self._clock.monotonic() + self._drain_timeout_s
        while wait and self._clock.monotonic() < deadline:
            await self.scrape_one(replica)
            m = replica.metrics
            if m is not None and m.num_requests_running + m.num_requests_waiting == 0:
                break
            await asyncio.sleep(0.5)
        code = await replica.process.stop(self._stop_grace_s)
        self._replicas.pop(replica.replica_id, None)
        log.info("replica %s: stopped (exit %s)", replica.replica_id, code)

    # -- scraping ----------------------------------------------------------------------------

    async def scrape(self, model: str | None = None) -> None:
        """Scrape every ready replica's ``/metrics`` concurrently; notice dead processes."""
        replicas = [r for r in self.replicas(model) if r.state == "ready"]
        await asyncio.gather(*(self.scrape_one(r) for r in replicas))
        for r in replicas:
            if not r.process.running and r.state == "ready":
                log.error(
                    "replica %s exited unexpectedly (exit %s)", r.replica_id, r.process.returncode
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
        except (aiohttp.ClientError, TimeoutError, MetricsParseError) as e:
            # Keep the old sample: its age tells the decider it is stale.
            log.debug("scrape of %s failed: %s", replica.replica_id, e)

    # -- helpers -----------------------------------------------------------------------------

    def _changed(self, model: str) -> None:
        if self._on_change is not None:
            self._on_change(model)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def models(self) -> Iterable[str]:
        return sorted({r.model for r in self._replicas.values()})
