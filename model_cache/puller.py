"""Pulling one model revision from S3 into the cache's staging directory: parallel ranged GETs,
resumable, verified.

Each file is fetched in ``chunk_bytes`` ranges by a thread pool (``get_object(Range=...)``) and
written with ``pwrite`` into ``<id>.part`` under the revision's parts directory. The calling thread
takes the chunks back in order and feeds them to sha256 as they land, so hashing overlaps the
download. Completed ranges are recorded in a sidecar journal (``<id>.journal``): every
``sync_every_bytes`` the part file is fdatasync'ed and then the journal lines are appended and
fsynced, so a journal line never claims bytes that a crash could lose. A later pull of the same
revision (after a crash, a kill -9, a restart) reads the journal and fetches only what is missing,
hashing the recorded ranges back from disk. A file whose sha256 or size differs from the manifest
is refused (its part and journal deleted) and fetched again, at most ``max_attempts`` times; a
verified file is fsynced and renamed into the staging directory, and the store commits the whole
revision with one rename once every file is there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from kernel.clock import Clock
from model_cache.errors import CacheError, ChecksumError, S3Error
from model_cache.manifest import FileEntry, Manifest
from model_cache.s3 import S3Client, S3Location
from model_cache.store import Store, fsync_dir

log = logging.getLogger(__name__)

MiB = 1024 * 1024
JOURNAL_MAGIC = "thaw-journal/v1"

#: Called with a number of bytes that became available (fetched, or found done on disk).
Progress = Callable[[int], None]


class PullStoppedError(CacheError):
    """A pull stopped because the cache is closing."""

    status = 503
    type = "server_error"
    code = "shutting_down"


class PullConfig(BaseModel):
    """How a pull fetches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chunk_bytes: int = Field(
        default=8 * MiB, ge=64 * 1024, le=1024 * MiB, description="bytes per ranged GET"
    )
    concurrency: int = Field(default=8, ge=1, le=64, description="ranged GETs in flight at once")
    max_attempts: int = Field(
        default=3, ge=1, le=10, description="fetches of one file before a checksum mismatch fails"
    )
    sync_every_bytes: int = Field(
        default=64 * MiB,
        ge=64 * 1024,
        description="journal (and fdatasync) completed ranges every this many bytes",
    )
    chunk_retries: int = Field(
        default=3, ge=1, le=10, description="attempts per ranged GET on a transport error"
    )
    max_bytes_per_s: int | None = Field(
        default=None,
        ge=1,
        description="cap on the node's pull bandwidth, all pulls together (None: no cap)",
    )


@dataclass(frozen=True)
class PullStats:
    """What one pull did."""

    fetched_bytes: int  # bytes transferred from S3 by this pull (retries included)
    resumed_bytes: int  # bytes found already done on disk (journaled ranges, staged files)
    files_fetched: int


def chunk_grid(size_bytes: int, chunk_bytes: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges covering ``size_bytes`` in ``chunk_bytes`` steps."""
    return [(s, min(s + chunk_bytes, size_bytes)) for s in range(0, size_bytes, chunk_bytes)]


class Journal:
    """The sidecar journal of one part file: a header line, then one ``start end`` line per
    completed range."""

    def __init__(self, path: Path, header: str) -> None:
        self.path = path
        self.header = header
        self.done: set[tuple[int, int]] = set()
        self._pending: list[tuple[int, int]] = []
        self.pending_bytes = 0
        self._fd = -1

    def open(self) -> bool:
        """Open; True when an existing journal with the same header was loaded (resume)."""
        resumed = False
        try:
            text = self.path.read_text("ascii", errors="replace")
        except FileNotFoundError:
            text = ""
        lines = text.split("\n")
        if lines and lines[0] == self.header:
            resumed = True
            for line in lines[1:-1]:  # the last piece has no newline: torn or empty
                a, _, b = line.partition(" ")
                if a.isdigit() and b.isdigit():
                    self.done.add((int(a), int(b)))
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        if not resumed:
            flags |= os.O_TRUNC
        self._fd = os.open(self.path, flags, 0o644)
        if not resumed:
            _write_all(self._fd, f"{self.header}\n".encode())
            os.fsync(self._fd)
        return resumed

    def add(self, start: int, end: int) -> None:
        self._pending.append((start, end))
        self.pending_bytes += end - start

    def commit(self, data_fd: int) -> None:
        """Make the data durable, then record the pending ranges durably."""
        if not self._pending:
            return
        os.fdatasync(data_fd)
        _write_all(self._fd, "".join(f"{s} {e}\n" for s, e in self._pending).encode())
        os.fsync(self._fd)
        self.done.update(self._pending)
        self._pending.clear()
        self.pending_bytes = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    parts = []
    while size > 0:
        b = os.pread(fd, size, offset)
        if not b:
            raise OSError(f"short read at offset {offset}")
        parts.append(b)
        size -= len(b)
        offset += len(b)
    return b"".join(parts)


class RateLimiter:
    """Spaces requests so that bytes per second stay at most ``rate``: each acquire books the
    next free slot of ``n / rate`` seconds and waits for it (a stop event cuts the wait short)."""

    def __init__(self, bytes_per_s: int, clock: Clock, stopping: threading.Event) -> None:
        self.bytes_per_s = bytes_per_s
        self.clock = clock
        self._stopping = stopping
        self._lock = threading.Lock()
        self._next_s: float | None = None

    def acquire(self, n: int) -> None:
        with self._lock:
            now = self.clock.monotonic()
            start = now if self._next_s is None else max(now, self._next_s)
            self._next_s = start + n / self.bytes_per_s
        if start > now:
            self._stopping.wait(start - now)


class Puller:
    """Fetches revisions with one shared pool of ``concurrency`` ranged-GET threads."""

    def __init__(self, s3: S3Client, store: Store, config: PullConfig, clock: Clock) -> None:
        self.s3 = s3
        self.store = store
        self.config = config
        self._pool: ThreadPoolExecutor | None = None
        self._stopping = threading.Event()
        self._limiter = (
            RateLimiter(config.max_bytes_per_s, clock, self._stopping)
            if config.max_bytes_per_s
            else None
        )

    def start(self) -> None:
        if self._pool is None:
            self._stopping.clear()
            self._pool = ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="pull")

    def stop(self) -> None:
        """Make running pulls stop at their next chunk (what they did stays, to be resumed)."""
        self._stopping.set()

    def close(self) -> None:
        self.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def pull(
        self, loc: S3Location, manifest: Manifest, progress: Progress | None = None
    ) -> PullStats:
        """Stage every file of ``manifest`` from ``loc`` (verified), resuming what is on disk.

        The caller commits the staging directory (:meth:`Store.commit`)."""
        progress = progress or (lambda n: None)
        staging = self.store.begin(manifest)
        parts = self.store.parts_dir(manifest.model, manifest.revision)
        fetched = resumed = files = 0
        for f in manifest.files:
            if self.store.staged_ok(manifest.model, manifest.revision, f.path, f.size_bytes):
                resumed += f.size_bytes
                progress(f.size_bytes)
                continue
            dest = self.store.safe_file_path(staging, f.path)
            part = parts / f"{Store.part_id(f.path)}.part"
            for attempt in range(1, self.config.max_attempts + 1):
                try:
                    got, had = self._pull_file(loc, f, part, dest, progress)
                except ChecksumError as e:
                    fetched += e.fetched_bytes
                    if attempt == self.config.max_attempts:
                        raise ChecksumError(
                            f"{loc.key(f.path)}: {e.message} (refused after {attempt} "
                            f"attempt{'s' if attempt > 1 else ''}; the object in "
                            f"{loc.uri} does not match its manifest)",
                            param=f.path,
                            fetched_bytes=fetched,
                        ) from e
                    log.warning("%s; fetching it again (attempt %d)", e.message, attempt + 1)
                    continue
                fetched += got
                resumed += had
                files += 1
                break
        return PullStats(fetched_bytes=fetched, resumed_bytes=resumed, files_fetched=files)

    def _pull_file(
        self, loc: S3Location, f: FileEntry, part: Path, dest: Path, progress: Progress
    ) -> tuple[int, int]:
        """Fetch one file into ``part``, verify, fsync, rename to ``dest``.
        Returns (bytes fetched, bytes resumed)."""
        assert self._pool is not None, "Puller.start() first"
        cfg = self.config
        journal = Journal(
            part.with_suffix(".journal"),
            f"{JOURNAL_MAGIC} {f.size_bytes} {f.sha256} {cfg.chunk_bytes}",
        )
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        futures: dict[int, Future[bytes]] = {}
        fetched = resumed = 0
        digest = hashlib.sha256()
        try:
            if not journal.open():
                os.ftruncate(fd, 0)
            elif journal.done:
                log.info(
                    "resuming %s: %d of %d bytes already on disk",
                    f.path,
                    sum(e - s for s, e in journal.done),
                    f.size_bytes,
                )
            os.ftruncate(fd, f.size_bytes)
            chunks = chunk_grid(f.size_bytes, cfg.chunk_bytes)
            todo = iter([c for c in chunks if c not in journal.done])
            window = cfg.concurrency + 2

            def refill() -> None:
                while len(futures) < window:
                    nxt = next(todo, None)
                    if nxt is None:
                        return
                    assert self._pool is not None
                    futures[nxt[0]] = self._pool.submit(self._fetch, loc, f, fd, *nxt)

            refill()
            for start, end in chunks:
                if self._stopping.is_set():
                    journal.commit(fd)
                    raise PullStoppedError(
                        f"the pull of {f.path} stopped: the cache is shutting down "
                        "(what was fetched is kept and resumed by the next ensure)"
                    )
                if (start, end) in journal.done:
                    digest.update(_pread_all(fd, end - start, start))
                    resumed += end - start
                    progress(end - start)
                    continue
                data = futures.pop(start).result()
                refill()
                digest.update(data)
                fetched += len(data)
                progress(len(data))
                journal.add(start, end)
                if journal.pending_bytes >= cfg.sync_every_bytes:
                    journal.commit(fd)
            journal.commit(fd)
            got = digest.hexdigest()
            if got != f.sha256:
                raise ChecksumError(
                    f"{f.path}: sha256 {got} differs from the manifest's {f.sha256}",
                    param=f.path,
                    fetched_bytes=fetched,
                )
            os.fsync(fd)
        except BaseException as e:
            for fut in futures.values():
                fut.cancel()
            wait(list(futures.values()))  # no pwrite may outlive the fd
            os.close(fd)
            journal.close()
            if isinstance(e, ChecksumError):
                e.fetched_bytes = max(e.fetched_bytes, fetched)
                part.unlink(missing_ok=True)
                journal.path.unlink(missing_ok=True)
            raise
        os.close(fd)
        journal.close()
        os.rename(part, dest)
        fsync_dir(dest.parent)
        journal.path.unlink(missing_ok=True)
        return fetched, resumed

    def _fetch(self, loc: S3Location, f: FileEntry, fd: int, start: int, end: int) -> bytes:
        """One ranged GET, written in place; retried on transport errors."""
        if self._limiter is not None:
            self._limiter.acquire(end - start)
        for attempt in range(1, self.config.chunk_retries + 1):
            try:
                data, total = self.s3.get_range(loc, f.path, start, end)
                break
            except S3Error as e:
                if e.s3_code or attempt == self.config.chunk_retries:
                    raise
                log.warning("%s; retrying the range (attempt %d)", e.message, attempt + 1)
        if total != f.size_bytes:
            raise ChecksumError(
                f"{f.path}: the object is {total} bytes, the manifest says {f.size_bytes}",
                param=f.path,
            )
        if len(data) != end - start:
            raise ChecksumError(
                f"{f.path}: range {start}-{end - 1} returned {len(data)} bytes", param=f.path
            )
        _pwrite_all(fd, data, start)
        return data
