"""The node's model cache service: ensure a model is on local disk (a hit, or one shared pull),
pin it while an engine uses it, evict least-recently-used revisions to stay under a byte budget,
and list what the node holds (for the warm pool and locality-aware placement).

Owns the in-memory index of revisions (built from the store's scan at :meth:`ModelCache.start`),
pin counts (in memory only: a restarted agent starts with none, engines pin again), single flight
(concurrent ensures of the same request share one future, and two requests resolving to the same
revision share one pull through a per-revision lock) and byte accounting: a pull reserves its
whole size before it starts, evicting idle revisions as :func:`choose_evictions` says, so the
bytes on disk never exceed the budget. Disk layout is :mod:`model_cache.store`'s, fetching is
:mod:`model_cache.puller`'s.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from kernel.clock import Clock
from model_cache.errors import (
    CacheError,
    NotCachedError,
    PinError,
    S3Error,
    SourceMismatchError,
)
from model_cache.eviction import CacheEntry, choose_evictions
from model_cache.manifest import (
    MANIFEST_NAME,
    Manifest,
    parse_manifest,
    validate_model_name,
    validate_revision,
)
from model_cache.metrics import CacheMetrics
from model_cache.puller import Progress, PullConfig, Puller, PullStoppedError
from model_cache.s3 import S3Client, S3Location, parse_s3_uri
from model_cache.store import Store
from model_cache.types import CachedModel, EnsureResult, State

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    name: str
    revision: str
    path: Path
    size_bytes: int
    last_used_s: float
    complete: bool
    pins: int = 0
    in_flight: bool = False

    def policy_view(self) -> CacheEntry:
        return CacheEntry(
            self.name, self.revision, self.size_bytes, self.last_used_s, self.pins, self.in_flight
        )

    def public(self) -> CachedModel:
        state: State = "ready" if self.complete else ("pulling" if self.in_flight else "partial")
        return CachedModel(
            self.name,
            self.revision,
            self.path,
            self.size_bytes,
            self.last_used_s,
            self.pins,
            state,
        )


#: (name, S3 location asked for, revision asked for, refresh)
_FlightKey = tuple[str, S3Location | None, str | None, bool]

#: Threads resolving ensures (hits, manifest GETs, waiting for a pull slot); pulls themselves are
#: bounded by ``max_concurrent_pulls``, so a hit never queues behind long pulls.
_FLIGHT_THREADS = 64


@dataclass
class _Flight:
    future: Future[EnsureResult]
    pins: int = 0


class ModelCache:
    """The service. Build it, :meth:`start` it (threads start there), :meth:`close` it."""

    def __init__(
        self,
        store: Store,
        s3: S3Client | None,
        clock: Clock,
        *,
        budget_bytes: int | None = None,
        pull: PullConfig | None = None,
        default_source: S3Location | None = None,
        registry: CollectorRegistry | None = None,
        max_concurrent_pulls: int = 4,
    ) -> None:
        if budget_bytes is not None and budget_bytes < 0:
            raise ValueError(f"budget_bytes = {budget_bytes}, must be >= 0")
        self.store = store
        self.s3 = s3
        self.clock = clock
        self.budget_bytes = budget_bytes
        self.default_source = default_source
        self.pull_config = pull or PullConfig()
        self.max_concurrent_pulls = max_concurrent_pulls
        self.metrics = CacheMetrics(registry or CollectorRegistry(), self.used_bytes, budget_bytes)
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._flights: dict[_FlightKey, _Flight] = {}
        self._pull_locks: dict[tuple[str, str], threading.Lock] = {}
        self._pull_slots = threading.BoundedSemaphore(max_concurrent_pulls)
        self._puller: Puller | None = None
        self._flight_pool: ThreadPoolExecutor | None = None

    # lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Index the store (a writer's scan drops invalid revisions), enforce the budget, start
        the pools."""
        for r in self.store.scan():
            self._entries[(r.name, r.revision)] = _Entry(
                r.name, r.revision, r.path, r.size_bytes, r.last_used_s, r.complete
            )
        if self.budget_bytes is not None:
            victims = choose_evictions(
                [e.policy_view() for e in self._entries.values()], self.budget_bytes, 0
            )
            for v in victims:
                self._evict_locked(v)
            self.store.empty_trash()
        if self.s3 is not None:
            self._puller = Puller(self.s3, self.store, self.pull_config, self.clock)
            self._puller.start()
        self._flight_pool = ThreadPoolExecutor(_FLIGHT_THREADS, thread_name_prefix="ensure")

    def close(self) -> None:
        """Stop running pulls at their next chunk (kept for resume), wait for them, stop pools."""
        if self._puller is not None:
            self._puller.stop()
        if self._flight_pool is not None:
            self._flight_pool.shutdown(wait=True, cancel_futures=True)
            self._flight_pool = None
        with self._lock:
            unfinished = list(self._flights.values())
            self._flights.clear()
        for flight in unfinished:  # queued, never started: answer them rather than hang
            if not flight.future.done():
                flight.future.set_exception(
                    PullStoppedError("the cache is shutting down; ensure again after restart")
                )
        if self._puller is not None:
            self._puller.close()
            self._puller = None

    def __enter__(self) -> ModelCache:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # queries ---------------------------------------------------------------------------------

    def used_bytes(self) -> int:
        with self._lock:
            return sum(e.size_bytes for e in self._entries.values())

    def models(self) -> list[CachedModel]:
        """Every revision held, partial pulls included, by name then last use (newest first)."""
        with self._lock:
            out = [e.public() for e in self._entries.values()]
        return sorted(out, key=lambda m: (m.name, -m.last_used_s, m.revision))

    def holds(self, name: str) -> CachedModel | None:
        """The most recently used complete revision of ``name`` on this node, or None."""
        with self._lock:
            e = self._latest_locked(name)
            return e.public() if e else None

    # ensure ----------------------------------------------------------------------------------

    def ensure(
        self,
        name: str,
        s3_uri: str | None = None,
        revision: str | None = None,
        pin: bool = False,
        progress: Progress | None = None,
        refresh: bool = False,
    ) -> EnsureResult:
        return self.ensure_future(name, s3_uri, revision, pin, progress, refresh).result()

    def ensure_future(
        self,
        name: str,
        s3_uri: str | None = None,
        revision: str | None = None,
        pin: bool = False,
        progress: Progress | None = None,
        refresh: bool = False,
    ) -> Future[EnsureResult]:
        """Make ``name`` (at ``revision``, from ``s3_uri``) present on local disk.

        Which revision: ``revision`` if given; else the most recently used one on disk (no S3
        request at all: a cached model is served even while S3 is down); else, or with
        ``refresh``, the one the S3 manifest at ``s3_uri`` names (falling back to the disk if S3
        cannot be reached). Without ``s3_uri`` the cache's ``default_source`` is used
        (``<source>/<name>``). Concurrent calls with the same arguments share one future;
        ``pin`` adds one pin, applied atomically with the result. Bad input raises here, before
        anything is written; pull errors arrive through the future."""
        validate_model_name(name)
        loc = parse_s3_uri(s3_uri) if s3_uri is not None else None
        if revision is not None:
            validate_revision(revision)
        if self._flight_pool is None:
            raise RuntimeError("ModelCache.start() first")
        key: _FlightKey = (name, loc, revision, refresh)
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight(Future())
            if pin:
                flight.pins += 1
        if leader:
            self._flight_pool.submit(self._run_flight, key, flight, progress)
        return flight.future

    def _run_flight(self, key: _FlightKey, flight: _Flight, progress: Progress | None) -> None:
        try:
            result = self._resolve(key, flight, progress)
        except BaseException as e:
            with self._lock:
                self._flights.pop(key, None)
            if isinstance(e, CacheError):
                self.metrics.pull_failures.labels(key[0], e.code).inc()
            flight.future.set_exception(e)
            return
        flight.future.set_result(result)

    def _resolve(self, key: _FlightKey, flight: _Flight, progress: Progress | None) -> EnsureResult:
        name, loc, revision, refresh = key
        if loc is None and self.default_source is not None:
            loc = self.default_source.child(name)
        with self._lock:
            if revision is not None and self._complete_locked(name, revision):
                return self._hit_locked(key, flight, name, revision)
            latest = self._latest_locked(name) if revision is None and not refresh else None
            if latest is not None:
                return self._hit_locked(key, flight, name, latest.revision)
        if loc is None or self.s3 is None:
            with self._lock:
                latest = self._latest_locked(name) if revision is None else None
                if latest is not None:
                    return self._hit_locked(key, flight, name, latest.revision)
            what = f"{name}@{revision}" if revision else name
            raise NotCachedError(
                f"model {what!r} is not on this node and no S3 location is known: pass s3_uri "
                "(s3://BUCKET/PREFIX where `thaw cache push` put it) or start the agent with "
                "--s3-prefix" + ("" if self.s3 else " and --s3-endpoint"),
                param="s3_uri",
            )
        manifest = self._fetch_manifest(key, flight, loc)
        if isinstance(manifest, EnsureResult):
            return manifest
        with self._lock:
            if self._complete_locked(name, manifest.revision):
                return self._hit_locked(key, flight, name, manifest.revision)
            pull_lock = self._pull_locks.setdefault((name, manifest.revision), threading.Lock())
        with pull_lock, self._pull_slots:
            with self._lock:
                if self._complete_locked(name, manifest.revision):
                    return self._hit_locked(key, flight, name, manifest.revision)
            return self._pull(key, flight, loc, manifest, progress)

    def _fetch_manifest(
        self, key: _FlightKey, flight: _Flight, loc: S3Location
    ) -> Manifest | EnsureResult:
        name, _, revision, _ = key
        assert self.s3 is not None
        try:
            data = self.s3.get_bytes(loc, MANIFEST_NAME)
        except S3Error as e:
            with self._lock:
                latest = self._latest_locked(name) if revision is None else None
                if latest is not None:
                    log.warning("%s; serving %s@%s from disk", e.message, name, latest.revision)
                    return self._hit_locked(key, flight, name, latest.revision)
            if e.not_found:
                raise NotCachedError(
                    f"no manifest at {loc.uri}/{MANIFEST_NAME} ({e.s3_code}): publish the model "
                    f"there first with `thaw cache push DIR {loc.uri}`",
                    param="s3_uri",
                ) from e
            raise
        manifest = parse_manifest(data, source=f"{loc.uri}/{MANIFEST_NAME}")
        if manifest.model != name:
            raise SourceMismatchError(
                f"{loc.uri}/{MANIFEST_NAME} is the manifest of model {manifest.model!r}, "
                f"not {name!r}",
                param="s3_uri",
            )
        if revision is not None and manifest.revision != revision:
            raise SourceMismatchError(
                f"revision = {revision!r} is not at {loc.uri}: its manifest has revision "
                f"{manifest.revision!r}",
                param="revision",
            )
        return manifest

    def _pull(
        self,
        key: _FlightKey,
        flight: _Flight,
        loc: S3Location,
        manifest: Manifest,
        progress: Progress | None,
    ) -> EnsureResult:
        name, rev = manifest.model, manifest.revision
        assert self._puller is not None
        started_s = self.clock.monotonic()
        with self._lock:
            self._reserve_locked(manifest)
        self.store.empty_trash()
        self.metrics.misses.labels(name).inc()
        try:
            stats = self._puller.pull(loc, manifest, progress)
            final = self.store.commit(manifest, self.clock.wall())
        except BaseException as e:
            fetched = getattr(e, "fetched_bytes", 0)
            self.metrics.fetched_bytes.inc(fetched)
            with self._lock:
                entry = self._entries.get((name, rev))
                if entry is not None:
                    entry.in_flight = False
            raise
        pull_s = self.clock.monotonic() - started_s
        self.metrics.fetched_bytes.inc(stats.fetched_bytes)
        self.metrics.resumed_bytes.inc(stats.resumed_bytes)
        self.metrics.pull_seconds.observe(pull_s)
        log.info(
            "pulled %s@%s from %s: %d bytes fetched, %d resumed, %.2f s",
            name,
            rev[:12],
            loc.uri,
            stats.fetched_bytes,
            stats.resumed_bytes,
            pull_s,
        )
        with self._lock:
            entry = self._entries[(name, rev)]
            entry.complete, entry.in_flight, entry.path = True, False, final
            entry.last_used_s = self.clock.wall()
            entry.pins += flight.pins
            self._flights.pop(key, None)
            return EnsureResult(
                name=name,
                revision=rev,
                path=final,
                tier="miss",
                size_bytes=entry.size_bytes,
                fetched_bytes=stats.fetched_bytes,
                resumed_bytes=stats.resumed_bytes,
                pull_s=pull_s,
                pins=entry.pins,
            )

    def _reserve_locked(self, manifest: Manifest) -> None:
        k = (manifest.model, manifest.revision)
        if self.budget_bytes is not None:
            others = [e.policy_view() for key, e in self._entries.items() if key != k]
            for victim in choose_evictions(others, self.budget_bytes, manifest.total_bytes):
                self._evict_locked(victim)
        self._entries[k] = _Entry(
            manifest.model,
            manifest.revision,
            self.store.staging_dir(*k),
            manifest.total_bytes,
            self.clock.wall(),
            complete=False,
            in_flight=True,
        )

    def _evict_locked(self, victim: CacheEntry) -> None:
        log.info(
            "evicting %s@%s (%d bytes, last used at %.0f)",
            victim.name,
            victim.revision[:12],
            victim.size_bytes,
            victim.last_used_s,
        )
        self.store.remove(victim.name, victim.revision, empty_trash=False)
        del self._entries[(victim.name, victim.revision)]
        self.metrics.evictions.labels(victim.name).inc()

    def _hit_locked(self, key: _FlightKey, flight: _Flight, name: str, rev: str) -> EnsureResult:
        entry = self._entries[(name, rev)]
        now = self.clock.wall()
        self.store.touch(name, rev, now)
        entry.last_used_s = now
        entry.pins += flight.pins
        self._flights.pop(key, None)
        self.metrics.hits.labels(name).inc()
        return EnsureResult(
            name=name,
            revision=rev,
            path=entry.path,
            tier="hit",
            size_bytes=entry.size_bytes,
            fetched_bytes=0,
            resumed_bytes=0,
            pull_s=0.0,
            pins=entry.pins,
        )

    def _complete_locked(self, name: str, rev: str) -> bool:
        e = self._entries.get((name, rev))
        return e is not None and e.complete

    def _latest_locked(self, name: str) -> _Entry | None:
        found = [e for e in self._entries.values() if e.name == name and e.complete]
        return max(found, key=lambda e: (e.last_used_s, e.revision)) if found else None

    # pins ------------------------------------------------------------------------------------

    def pin(self, name: str, revision: str | None = None) -> CachedModel:
        """One more pin on a complete revision (default: the most recently used one)."""
        with self._lock:
            entry = self._target_locked(name, revision)
            entry.pins += 1
            return entry.public()

    def unpin(self, name: str, revision: str | None = None) -> CachedModel:
        """One pin fewer; :class:`PinError` if the revision holds none."""
        with self._lock:
            if revision is None:
                pinned = [e for e in self._entries.values() if e.name == name and e.pins > 0]
                if len(pinned) == 1:
                    revision = pinned[0].revision
            entry = self._target_locked(name, revision)
            if entry.pins == 0:
                raise PinError(f"{name}@{entry.revision} is not pinned (pins = 0)", param="name")
            entry.pins -= 1
            return entry.public()

    def _target_locked(self, name: str, revision: str | None) -> _Entry:
        validate_model_name(name)
        if revision is not None:
            entry = self._entries.get((name, validate_revision(revision)))
            if entry is None or not entry.complete:
                raise NotCachedError(
                    f"{name}@{revision} is not on this node (ensure it first)", param="revision"
                )
            return entry
        latest = self._latest_locked(name)
        if latest is None:
            raise NotCachedError(f"model {name!r} is not on this node (ensure it first)", "name")
        return latest
