"""The local stack: activator + autoscaler loop + local actuator, in one asyncio process.

This is the wiring behind ``thaw up``. Each tick (``tick_s``, or at once when the activator
buffers the first request of a model at zero) it scrapes every ready replica, builds one
observation per model, asks the pure decider for a count, and hands the count to the local
actuator. Every decision that changes a replica count is logged with the decider's reason.

Metrics (on the activator's ``/metrics``): ``thaw_model_replicas{model,state}``,
``thaw_autoscaler_desired_replicas{model}``, ``thaw_autoscaler_panic{model}``,
``thaw_autoscaler_forecast_replicas{model}``,
``thaw_cold_starts_total{model,tier}``, ``thaw_scale_from_zero_seconds{model}`` (first buffered
request to first ready replica), ``thaw_replica_metrics_stale{model,replica}`` (1 while a ready
replica's scrapes have failed for longer than ``metrics_stale_after_s``; a warning says so once
per episode, with the error).

Policy reloads are read and parsed off the event loop; ``listen``, ``cache`` and
``gpu.memory_bytes`` changes need a restart and are named as such (:data:`RESTART_KEYS`).

With ``autoscaling.forecast.enabled``, each tick also feeds the model's
:class:`~autoscaler.forecast.ReplicaForecaster` the arrivals since the last tick (requests the
activator answered + the change in requests inside it) and the requests inside it, and passes its
``forecast_replicas`` (None while it is not trusted) to the decider; the horizon is the policy's
``forecast.horizon_s``, else the model's last measured start (30 s before the first).

With a ``gpu:`` section every model's engines share that one GPU: each tick the decider's counts
become the GPU-memory arbiter's wants (:func:`autoscaler.arbiter.arbitrate`; each engine takes
``engine.gpu_memory_utilization`` x ``gpu.memory_bytes`` awake, a model with requests buffered
comes first) and the actuator carries out its plan, sleeps before wakes
(:meth:`~local_stack.actuator.LocalActuator.run_plan`). Emulator engines then keep the ledger of
an emulated GPU of that size, so a plan that overflows it fails as it would on a real GPU. Without
it, each model's warm-pool plan acts alone (:func:`autoscaler.warm_pool.plan_actions`, which also
feeds the arbiter).

Every engine runs behind Thaw's engine guard: the stack writes a fresh credential into
``work_dir/engine-credential`` (mode 0600) and only the actuator's sleep and wake requests carry it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from activator.core import Activator
from autoscaler.arbiter import Gpu, GpuPlan, Want, arbitrate
from autoscaler.decider import DeciderState, Decision, ModelObservation, decide
from autoscaler.forecast import ReplicaForecaster
from autoscaler.scale_to_zero import apply_grace
from autoscaler.warm_pool import Actions, plan_actions
from engine.process import EngineSpec, emulator_spec, vllm_spec
from engine.vllm_site.thaw_engine_guard import CREDENTIAL_HEADER
from events.sink import EventSink, emitter_from_env
from kernel.clock import Clock
from kernel.vocab import LOAD_TIERS, REPLICA_STATES, LoadTier
from local_stack.actuator import LocalActuator
from model_cache.types import COLD_START_TIER
from policy_file.schema import ModelConfig, ThawConfig, model_limits
from policy_file.summary import warm_pool_lines
from policy_file.support import Runtime
from policy_file.watch import PolicyWatcher

if TYPE_CHECKING:
    from model_cache.cache import ModelCache

log = logging.getLogger(__name__)

#: The emulated GPU's id in the emulators' ledger (one GPU per stack).
EMULATED_GPU_ID = "local"

#: Settings the running stack cannot change: the listening socket, the opened model cache, and
#: the GPU's memory (its engines declared it to their ledger and run with their share of it; a
#: ``gpu:`` section added or removed reads as None here).
RESTART_KEYS = ("listen.host", "listen.port", "cache.dir", "cache.budget_bytes",
                "cache.s3_endpoint_url", "cache.s3_region", "gpu.memory_bytes")  # fmt: skip


def restart_needed(old: ThawConfig, new: ThawConfig) -> list[tuple[str, object, object]]:
    """``(key, old value, new value)`` for each of :data:`RESTART_KEYS` that differs."""
    out: list[tuple[str, object, object]] = []
    for key in RESTART_KEYS:
        block, name = key.split(".")
        before = getattr(getattr(old, block), name, None)
        after = getattr(getattr(new, block), name, None)
        if before != after:
            out.append((key, before, after))
    return out


def keep_old_values(
    old: ThawConfig, new: ThawConfig, kept: list[tuple[str, object, object]]
) -> ThawConfig:
    """``new`` with the old value of each key in ``kept`` (from :func:`restart_needed`); a
    section that one of the two files lacks is kept whole, as it was."""
    for key, _, _ in kept:
        block, name = key.split(".")
        before, after = getattr(old, block), getattr(new, block)
        if before is None or after is None:
            new = new.model_copy(update={block: before})
        else:
            kept_block = after.model_copy(update={name: getattr(before, name)})
            new = new.model_copy(update={block: kept_block})
    return new


#: A tick longer than this (or 4x tick_s, whichever is more) is warned about, with its parts.
SLOW_TICK_S = 2.0

SCALE_FROM_ZERO_BUCKETS_S = (0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)


def _has_gpu() -> bool:
    import shutil

    return shutil.which("nvidia-smi") is not None


def _cpu_sleep_note(config: ThawConfig) -> str:
    """vLLM's sleep on CPU pauses the engine and frees nothing; say so rather than pretend."""
    if any(m.engine.kind == "vllm" for m in config.models) and not _has_gpu():
        return (
            " (vLLM on CPU: sleep only pauses the engine, no memory is freed; the wake still "
            "skips the process start and model load)"
        )
    return ""


class StackMetrics:
    """The autoscaler's Prometheus series, registered in the registry the activator serves."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.replicas = Gauge(
            "thaw_model_replicas",
            "Engine replicas of a model by state.",
            ["model", "state"],
            registry=registry,
        )
        self.desired = Gauge(
            "thaw_autoscaler_desired_replicas",
            "Replicas the decider wants for a model.",
            ["model"],
            registry=registry,
        )
        self.forecast = Gauge(
            "thaw_autoscaler_forecast_replicas",
            "Replicas the demand forecast one cold start ahead asks for (autoscaling.forecast); "
            "NaN while the forecaster is off, has too little history or too low a confidence.",
            ["model"],
            registry=registry,
        )
        self.panic = Gauge(
            "thaw_autoscaler_panic",
            "1 while the decider is in panic mode for a model.",
            ["model"],
            registry=registry,
        )
        self.cold_starts = Counter(
            "thaw_cold_starts_total",
            f"Replica starts, by the tier the engine loaded from ({'|'.join(LOAD_TIERS)}).",
            ["model", "tier"],
            registry=registry,
        )
        self.metrics_stale = Gauge(
            "thaw_replica_metrics_stale",
            "1 while a ready replica's /metrics has not been scraped for longer than its model's "
            "autoscaling.metrics_stale_after_s (the decider does not scale down on missing data), "
            "else 0.",
            ["model", "replica"],
            registry=registry,
        )
        self.scale_from_zero = Histogram(
            "thaw_scale_from_zero_seconds",
            "From the first request buffered at zero to the first ready replica.",
            ["model"],
            buckets=SCALE_FROM_ZERO_BUCKETS_S,
            registry=registry,
        )


@dataclass
class _ModelRun:
    """Per-model loop state (mutable, owned by the stack's one task)."""

    config: ModelConfig
    state: DeciderState
    last_decision: Decision | None = None
    zero_since_s: float | None = None  # first request buffered while at zero
    wants_zero_since_s: float | None = None  # the decider first wanted 0 (the grace counts on)
    forecaster: ReplicaForecaster | None = None
    answered: float = 0.0  # requests the activator had answered at the last tick
    in_flight: int = 0  # requests inside the activator at the last tick
    last_start_s: float | None = None  # the last measured replica start (forecast horizon)


class LocalStack:
    """Owns the activator, the actuator and the decide loop for one :class:`ThawConfig`."""

    def __init__(
        self,
        config: ThawConfig,
        clock: Clock,
        *,
        work_dir: Path,
        config_path: Path | None = None,
        registry: CollectorRegistry | None = None,
        api_keys: frozenset[str] | None = None,
        events: EventSink | None = None,
    ) -> None:
        self.config = config
        # CloudEvents for decisions and cold starts: to K_SINK when set, else nothing is sent.
        self.events = events if events is not None else emitter_from_env(os.environ, clock)
        self.clock = clock
        self.work_dir = work_dir
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = StackMetrics(self.registry)
        self._watcher = PolicyWatcher(config_path, config, Runtime.LOCAL) if config_path else None
        self._runs: dict[str, _ModelRun] = {
            m.name: _ModelRun(config=m, state=DeciderState.initial()) for m in config.models
        }
        self._wake = asyncio.Event()
        self._unmet: dict[str, int] = {}  # engines per model the GPU could not give, last tick
        self._credential = secrets.token_urlsafe(32)
        self._credential_path: Path | None = None
        self._stale: dict[str, set[str]] = {}  # model -> replica ids exported; stale ones below
        self._stale_now: set[str] = set()
        self.actuator = LocalActuator(
            self._spec_for,
            clock,
            on_change=self._endpoints_changed,
            on_ready=self._replica_ready,
            cpu_note=_cpu_sleep_note(config),
            control_headers={CREDENTIAL_HEADER: self._credential},
        )
        self.activator = Activator(
            models=model_limits(config),
            endpoints=self.actuator,
            demand=self,
            clock=clock,
            registry=self.registry,
            api_keys=api_keys,
            server=config.activator,
        )
        self._cache: ModelCache | None = None

    # -- wiring ------------------------------------------------------------------------------

    async def _spec_for(
        self, model: str, port: int, replica_id: str
    ) -> tuple[EngineSpec, LoadTier]:
        """The launch of one replica, and the tier its weights load from."""
        cfg = self._runs[model].config
        engine = cfg.engine
        log_dir = self.work_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{replica_id}.log"
        path, tier = await self._model_path(cfg)
        gpu = self.config.gpu
        utilization = ["--gpu-memory-utilization", str(engine.utilization())] if gpu else []
        if engine.kind == "emulator":
            extra: list[str] = []
            if engine.emulator is not None:
                for name, value in engine.emulator.model_dump().items():
                    extra += [f"--{name.replace('_', '-')}", str(value)]
            if gpu is not None:
                extra += ["--gpu-id", EMULATED_GPU_ID, "--gpu-memory-bytes", str(gpu.memory_bytes)]
                extra += [*utilization, "--gpu-ledger-dir", str(self.work_dir / "gpu-ledger")]
            spec = emulator_spec(
                port=port,
                served_model_name=cfg.name,
                extra_args=[*extra, *engine.args],
                env=dict(engine.env),
                startup_timeout_s=engine.startup_timeout_s,
                log_path=log_path,
                credential_file=str(self._credential_file()),
            )
            return spec, tier
        sleep_mode = (
            ["--enable-sleep-mode"]
            if cfg.warm_pool.enabled and _has_gpu() and "--enable-sleep-mode" not in engine.args
            else []
        )
        spec = vllm_spec(
            path,
            port=port,
            served_model_name=cfg.name,
            extra_args=[*utilization, *sleep_mode, *engine.args],
            env=dict(engine.env),
            startup_timeout_s=engine.startup_timeout_s,
            log_path=log_path,
            credential_file=str(self._credential_file()),
        )
        return spec, tier

    def _credential_file(self) -> Path:
        """The engine guard's credential, written once (mode 0600) under the work directory."""
        if self._credential_path is None:
            path = self.work_dir / "engine-credential"
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self._credential + "\n")
            self._credential_path = path
        return self._credential_path

    async def _model_path(self, cfg: ModelConfig) -> tuple[str, LoadTier]:
        """Where the engine loads the model from, and the tier: ``remote`` if it had to be
        pulled from S3 now, else ``local_disk``. No model configured: the tiny Llama (built
        once, for vLLM only; the emulator loads nothing)."""
        model = cfg.engine.model
        if model and model.startswith("s3://"):
            result = await asyncio.to_thread(self._model_cache().ensure, cfg.name, model)
            tier: LoadTier = COLD_START_TIER[result.tier]
            log.info(
                "model %s: %s from the cache (%s, %d bytes fetched in %.2f s)",
                cfg.name,
                "pulled" if tier == "remote" else "found",
                result.path,
                result.fetched_bytes,
                result.pull_s,
            )
            return str(result.path), tier
        if model:
            return model, "local_disk"
        if cfg.engine.kind == "emulator":  # it loads no weights: nothing to build
            return "", "local_disk"
        target = self.work_dir / "models" / "tiny-llama"
        if not (target / "config.json").exists():
            from model_cache.tiny_model import ensure_tiny_llama

            log.info("building the tiny Llama into %s (no model configured)", target)
            # One build at a time: replicas starting together wait for the first one's.
            built = await asyncio.to_thread(ensure_tiny_llama, target)
            log.info("the tiny Llama is in %s (%s)", target, "built" if built else "found")
        return str(target), "local_disk"

    def _model_cache(self) -> ModelCache:
        if self._cache is None:
            from model_cache.agent import AgentSettings, open_cache
            from model_cache.s3 import S3Settings

            c = self.config.cache
            settings = AgentSettings(
                dir=Path(c.dir),
                budget_bytes=c.budget_bytes,
                s3=S3Settings(endpoint_url=c.s3_endpoint_url, region=c.s3_region),
            )
            self._cache = open_cache(settings, self.clock)
            self._cache.start()
        return self._cache

    # -- the activator's DemandSink -----------------------------------------------------------

    async def poke(self, model: str) -> None:
        """A request was buffered at zero: decide now rather than at the next tick."""
        run = self._runs.get(model)
        if run is not None and run.zero_since_s is None:
            run.zero_since_s = self.clock.monotonic()
        self._wake.set()

    def _endpoints_changed(self, model: str) -> None:
        self.activator.endpoints_changed(model)

    def _replica_ready(self, model: str, replica_id: str, startup_s: float, tier: LoadTier) -> None:
        self.metrics.cold_starts.labels(model, tier).inc()
        self.events.cold_start(model, tier, startup_s)
        run = self._runs.get(model)
        if run is not None:
            run.last_start_s = startup_s
        if run is not None and run.zero_since_s is not None:
            waited_s = self.clock.monotonic() - run.zero_since_s
            self.metrics.scale_from_zero.labels(model).observe(waited_s)
            log.info(
                "model %s: scaled from zero in %.1f s (first buffered request to %s ready; "
                "%s start %.1f s)",
                model,
                waited_s,
                replica_id,
                tier,
                startup_s,
            )
            run.zero_since_s = None

    # -- the loop --------------------------------------------------------------------------

    async def tick(self) -> list[Decision]:
        """One pass over every model: scrape, observe, decide, actuate, export."""
        began_s = self.clock.monotonic()
        await self._maybe_reload()
        reloaded_s = self.clock.monotonic()
        await self.actuator.scrape()
        now_s = self.clock.monotonic()
        decisions: list[Decision] = []
        for name, run in self._runs.items():
            buffered = self.activator.buffered(name)
            if buffered and run.zero_since_s is None and not self.actuator.ready_replicas(name):
                run.zero_since_s = now_s
            self._check_staleness(name, run, now_s)
            obs = self.actuator.observe(name, buffered, now_s, self.activator.outstanding)
            obs = self._with_forecast(name, run, obs, now_s)
            decision, run.state = decide(obs, run.config.autoscaling, run.state, now_s)
            # The grace, as every runtime counts it; Thaw's activator is always in the path.
            decision, run.wants_zero_since_s = apply_grace(
                decision,
                run.wants_zero_since_s,
                True,
                now_s,
                run.config.autoscaling.scale_to_zero_grace_s,
            )
            run.last_decision = decision
            decisions.append(decision)
        plan = self._arbitrate(decisions, now_s)
        for decision in decisions:
            name = decision.model
            run = self._runs[name]
            if plan is not None:
                actions = plan.actions(name)
            else:
                actions = plan_actions(
                    decision.desired_replicas,
                    self.actuator.pool_view(name),
                    run.config.warm_pool,
                    now_s,
                )
            waiting_for_memory = plan is not None and actions.empty and name in plan.unmet_models
            if not waiting_for_memory:  # else said once below, not at every tick
                self._log_decision(name, decision, actions)
            if plan is None and not actions.empty:
                self.actuator.apply(name, actions)
        if plan is not None:
            unmet = {u.model: u for u in plan.unmet}
            for model, u in unmet.items():
                if self._unmet.get(model) != u.engines:
                    log.info(
                        "model %s: %d engine(s) wait for GPU memory: %s",
                        model,
                        u.engines,
                        u.reason,
                    )
            self._unmet = {model: u.engines for model, u in unmet.items()}
            if not plan.empty:
                log.info("GPU: %s", plan.describe())
                self.actuator.run_plan(plan)
        for decision in decisions:
            self._export(decision.model, decision)
        self._check_tick_time(began_s, reloaded_s, now_s)
        return decisions

    def _arbitrate(self, decisions: list[Decision], now_s: float) -> GpuPlan | None:
        """The GPU-memory arbiter's plan for the one GPU, or None without a ``gpu:`` section."""
        gpu = self.config.gpu
        if gpu is None:
            return None
        wants = []
        for decision in decisions:
            cfg = self._runs[decision.model].config
            ready = self.actuator.count(decision.model, "ready")
            wants.append(
                Want(
                    decision.model,
                    awake=decision.desired_replicas,
                    awake_bytes=max(1, int(gpu.memory_bytes * cfg.engine.utilization())),
                    waiting_requests=0 if ready else self.activator.buffered(decision.model),
                    pool=cfg.warm_pool,
                )
            )
        wanted = {w.model for w in wants}
        for model in {e.model for e in self.actuator.gpu_view()} - wanted:  # removed models
            wants.append(Want(model, 0, awake_bytes=gpu.memory_bytes))
        engines = tuple(self.actuator.gpu_view())
        return arbitrate(Gpu(gpu.memory_bytes, gpu.host_ram_budget_bytes, engines), wants, now_s)

    def _log_decision(self, name: str, decision: Decision, actions: Actions) -> None:
        if decision.desired_replicas != decision.current_replicas:
            log.info(
                "model %s: %d -> %d replicas (%s): %s",
                name,
                decision.current_replicas,
                decision.desired_replicas,
                actions.describe(),
                decision.reason,
            )
            self.events.decision(
                name,
                decision.current_replicas,
                decision.desired_replicas,
                decision.reason,
                decision.panic,
            )
        elif not actions.empty:
            log.info("model %s: warm pool: %s", name, actions.describe())

    def _check_tick_time(self, began_s: float, reloaded_s: float, scraped_s: float) -> None:
        """Warn when one pass took far longer than ``tick_s``: every decision waits for it, so a
        slow tick is a slow reaction to load; the warning says which part took the time."""
        ended_s = self.clock.monotonic()
        took_s = ended_s - began_s
        if took_s > max(SLOW_TICK_S, 4 * self.config.tick_s):
            log.warning(
                "a tick took %.1f s (tick_s %g): policy reload %.1f s, scraping replicas %.1f s, "
                "deciding and acting %.1f s",
                took_s,
                self.config.tick_s,
                reloaded_s - began_s,
                scraped_s - reloaded_s,
                ended_s - scraped_s,
            )

    def _check_staleness(self, name: str, run: _ModelRun, now_s: float) -> None:
        """Export each ready replica's staleness, and say once per episode when its metrics
        go stale (with the last scrape's error) and when they are fresh again."""
        after_s = run.config.autoscaling.metrics_stale_after_s
        exported = self._stale.setdefault(name, set())
        live: set[str] = set()
        for r in self.actuator.replicas(name):
            if r.state != "ready":
                continue
            rid = r.replica_id
            live.add(rid)
            since_s = r.scraped_at_s if r.scraped_at_s is not None else r.ready_at_s
            age_s = now_s - since_s if since_s is not None else 0.0
            # Failing, for longer than the policy allows (a slow tick alone is not staleness).
            stale = r.scrape_error is not None and age_s > after_s
            if stale and rid not in self._stale_now:
                self._stale_now.add(rid)
                log.warning(
                    "replica %s: metrics stale (no scrape for %.1f s, over metrics_stale_after_s "
                    "= %g; last error: %s); model %s will not scale down on missing data",
                    rid,
                    age_s,
                    after_s,
                    r.scrape_error,
                    name,
                )
            elif not stale and rid in self._stale_now:
                self._stale_now.discard(rid)
                log.info("replica %s: metrics fresh again", rid)
            self.metrics.metrics_stale.labels(name, rid).set(1 if stale else 0)
        for gone in exported - live:
            self._stale_now.discard(gone)
            with contextlib.suppress(KeyError):
                self.metrics.metrics_stale.remove(name, gone)
        self._stale[name] = live

    def _with_forecast(
        self, name: str, run: _ModelRun, obs: ModelObservation, now_s: float
    ) -> ModelObservation:
        """Feed the model's forecaster this tick's arrivals; the observation with its floor."""
        fc_cfg = run.config.autoscaling.forecast
        if not fc_cfg.enabled:
            if run.forecaster is not None:
                run.forecaster = None
                self.metrics.forecast.labels(name).set(float("nan"))
            return obs
        answered = 0.0
        for metric in self.activator.metrics.requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels.get("model") == name:
                    answered += sample.value
        in_flight = self.activator.in_flight(name)
        if run.forecaster is None or run.forecaster.config != fc_cfg:
            run.forecaster = ReplicaForecaster(fc_cfg)
            run.forecaster.observe(now_s, 0.0)  # the series starts now, quiet or not
        else:
            arrivals = answered - run.answered + in_flight - run.in_flight
            if arrivals > 0:
                run.forecaster.observe(now_s, arrivals)
        run.answered, run.in_flight = answered, in_flight
        run.forecaster.observe_concurrency(now_s, float(in_flight))
        horizon_s = fc_cfg.horizon_s
        if horizon_s is None:
            horizon_s = run.last_start_s if run.last_start_s is not None else 30.0
        target = run.config.autoscaling.target_concurrency_per_replica
        out = run.forecaster.replicas(now_s, horizon_s, target)
        self.metrics.forecast.labels(name).set(
            out.replicas if out.replicas is not None else float("nan")
        )
        return dataclasses.replace(obs, forecast_replicas=out.replicas)

    def _export(self, model: str, decision: Decision) -> None:
        for state in REPLICA_STATES:
            self.metrics.replicas.labels(model, state).set(self.actuator.count(model, state))
        self.metrics.desired.labels(model).set(decision.desired_replicas)
        self.metrics.panic.labels(model).set(1 if decision.panic else 0)

    async def _maybe_reload(self) -> None:
        """Apply a changed policy file. Reading and parsing run off the event loop (a large
        file must not stall the front door); settings the running stack cannot change are
        named in a warning and keep their old values."""
        if self._watcher is None or not self._watcher.may_have_changed():
            return
        new = await asyncio.to_thread(self._watcher.poll)
        if new is None:
            return
        kept = restart_needed(self.config, new)
        if kept:
            log.warning(
                "policy reload: %s changed but needs a restart of thaw up; still using the "
                "old value%s",
                ", ".join(f"{k} ({old!r} -> {v!r})" for k, old, v in kept),
                "s" if len(kept) > 1 else "",
            )
            new = keep_old_values(self.config, new, kept)
        old_names = set(self._runs)
        for m in new.models:
            if m.name in self._runs:
                self._runs[m.name].config = m
            else:
                self._runs[m.name] = _ModelRun(config=m, state=DeciderState.initial())
        for gone in old_names - {m.name for m in new.models}:
            self.actuator.scale(gone, 0)
            del self._runs[gone]
        self.config = new
        self.activator.set_models(model_limits(new))
        self.activator.set_server_limits(new.activator)
        log.info(
            "policy reloaded: %d models; applied: models, activator limits, tick_s%s",
            len(new.models),
            f"; kept until a restart: {', '.join(k for k, _, _ in kept)}" if kept else "",
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then stop every replica."""
        from activator.server import serve

        for line in warm_pool_lines(self.config, cluster=False):
            log.info("%s", line)
        await self.actuator.start()
        await self.activator.start()
        await self.events.start()
        server = asyncio.ensure_future(
            serve(self.activator, self.config.listen.host, self.config.listen.port)
        )
        try:
            last_end_s: float | None = None
            while not stop.is_set():
                began_s = self.clock.monotonic()
                gap_s = 0.0 if last_end_s is None else began_s - last_end_s
                if gap_s > self.config.tick_s + SLOW_TICK_S:
                    log.warning(
                        "%.1f s between two ticks (tick_s %g): the event loop was blocked",
                        gap_s,
                        self.config.tick_s,
                    )
                await self.tick()
                last_end_s = self.clock.monotonic()
                self._wake.clear()
                waiters = [
                    asyncio.ensure_future(self._wake.wait()),
                    asyncio.ensure_future(stop.wait()),
                    server,
                ]
                await asyncio.wait(
                    waiters, timeout=self.config.tick_s, return_when=asyncio.FIRST_COMPLETED
                )
                for w in waiters[:2]:
                    w.cancel()
                if server.done():
                    server.result()  # raise the server's error
                    break
        finally:
            log.info("shutting down: stopping %d engine replica(s)", len(self.actuator.replicas()))
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await server
            await self.actuator.close()
            await self.activator.close()
            await self.events.close()
            if self._cache is not None:
                self._cache.close()
            log.info("stopped; no engine process left")
