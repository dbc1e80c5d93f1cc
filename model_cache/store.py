"""The cache directory on disk: layout, safe paths, staging, atomic commit, eviction, last use.

Layout under the cache root (``thaw cache serve --dir``)::

    .lock                                  flock held by the one process that writes (agent, pull)
    models/<name>/<revision>/...           complete revisions, each with its thaw-manifest.json;
                                           the manifest's mtime is the revision's last use
    .partial/<name>/<revision>/...         a revision being pulled: its manifest first, then each
                                           file once it is verified (sha256) and fsynced
    .partial/<name>/<revision>.parts/      in-flight files: <id>.part and <id>.journal (ranges done)
    .trash/                                evicted revisions on their way out

A revision appears under ``models/`` only by one rename of its complete, verified staging
directory, so no reader ever sees a partial file under a final name. Model names and manifest
paths are validated (``model_cache.manifest``) and every directory on the way is checked not to be
a symlink before anything is created or written; a symlink found inside the cache makes that
revision invalid (it is removed on the next scan by the writer). Owns no policy: which revision to
evict is :mod:`model_cache.eviction`'s choice, budgets and pins are :mod:`model_cache.cache`'s.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from model_cache.errors import CacheBusyError, ManifestError, UnsafePathError
from model_cache.manifest import (
    MANIFEST_NAME,
    Manifest,
    model_name_problem,
    parse_manifest,
    validate_model_name,
    validate_path,
    validate_revision,
)

log = logging.getLogger(__name__)

MODELS_DIR = "models"
PARTIAL_DIR = ".partial"
TRASH_DIR = ".trash"
LOCK_NAME = ".lock"
_REVISION_CHARS = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class StoredRevision:
    """A revision found on disk: complete (under ``models/``) or partial (under ``.partial/``)."""

    name: str
    revision: str
    path: Path
    size_bytes: int
    last_used_s: float
    complete: bool


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_revision(name: str) -> bool:
    return len(name) == 64 and set(name) <= _REVISION_CHARS


class Store:
    """One cache root. :meth:`open` with ``writer=True`` takes the root's lock for the process."""

    def __init__(self, root: Path, lock_fd: int | None) -> None:
        self.root = root
        self._lock_fd = lock_fd

    @classmethod
    def open(cls, root: Path, writer: bool = True) -> Store:
        """Open (and for a writer create) the cache at ``root``; refuses symlinked sub-dirs."""
        root = Path(os.path.abspath(root))
        if writer:
            root.mkdir(parents=True, exist_ok=True)
        elif not root.is_dir():
            raise UnsafePathError(f"dir = '{root}': no such directory", param="dir")
        lock_fd = None
        if writer:
            lock_fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(lock_fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise CacheBusyError(
                        f"dir = '{root}': another process (a running `thaw cache serve` or "
                        "`thaw cache pull`) holds the cache's lock; use its HTTP API instead",
                        param="dir",
                    ) from e
                raise
        store = cls(root, lock_fd)
        if writer:
            for sub in (MODELS_DIR, PARTIAL_DIR, TRASH_DIR):
                store._mkdir_safe(root, sub)
            store.empty_trash()
        return store

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def writer(self) -> bool:
        return self._lock_fd is not None

    # paths -----------------------------------------------------------------------------------

    def final_dir(self, name: str, revision: str) -> Path:
        return self.root / MODELS_DIR / validate_model_name(name) / validate_revision(revision)

    def staging_dir(self, name: str, revision: str) -> Path:
        return self.root / PARTIAL_DIR / validate_model_name(name) / validate_revision(revision)

    def parts_dir(self, name: str, revision: str) -> Path:
        return self.staging_dir(name, revision).with_name(f"{revision}.parts")

    @staticmethod
    def part_id(path: str) -> str:
        """The flat file name under the parts directory for manifest path ``path``."""
        return hashlib.sha256(path.encode()).hexdigest()[:32]

    def _mkdir_safe(self, base: Path, rel: str) -> Path:
        """``base/rel``, creating missing directories; every step must be a real directory."""
        cur = base
        for part in rel.split("/"):
            cur = cur / part
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                try:
                    os.mkdir(cur, 0o755)
                except FileExistsError:
                    pass
                else:
                    fsync_dir(cur.parent)
                    continue
                st = os.lstat(cur)
            if stat.S_ISLNK(st.st_mode):
                raise UnsafePathError(f"'{cur}' is a symlink; the cache refuses symlinks")
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafePathError(f"'{cur}' is not a directory")
        return cur

    def safe_file_path(self, base: Path, path: str) -> Path:
        """``base/path`` for a validated manifest path, its parent directories created safely."""
        validate_path(path, field="files[].path")
        parent, _, leaf = path.rpartition("/")
        directory = self._mkdir_safe(base, parent) if parent else base
        target = directory / leaf
        if target.is_symlink():
            raise UnsafePathError(f"'{target}' is a symlink; the cache refuses symlinks")
        return target

    # staging and commit ----------------------------------------------------------------------

    def begin(self, manifest: Manifest) -> Path:
        """Create (or reopen, to resume) the staging directory with the manifest written first."""
        name, rev = manifest.model, manifest.revision
        for i, f in enumerate(manifest.files):
            validate_path(f.path, field=f"files[{i}].path")
        staging = self._mkdir_safe(self.root, f"{PARTIAL_DIR}/{name}/{rev}")
        self._mkdir_safe(self.root, f"{PARTIAL_DIR}/{name}/{rev}.parts")
        target = staging / MANIFEST_NAME
        if target.is_symlink():
            raise UnsafePathError(f"'{target}' is a symlink; the cache refuses symlinks")
        if not target.exists():
            write_file_durably(target, manifest.to_json())
        return staging

    def staged_ok(self, name: str, revision: str, path: str, size_bytes: int) -> bool:
        """Whether ``path`` is already staged (files get there only verified) with its size."""
        target = self.staging_dir(name, revision).joinpath(*path.split("/"))
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == size_bytes

    def commit(self, manifest: Manifest, now_wall_s: float) -> Path:
        """Move the complete staging directory to its final name in one rename; fsync both
        parents. Every file must be staged with its manifest size."""
        name, rev = manifest.model, manifest.revision
        staging = self.staging_dir(name, rev)
        problems = _revision_problems(staging, manifest)
        if problems:
            raise UnsafePathError(f"cannot commit {name}@{rev}: {problems}")
        os.utime(staging / MANIFEST_NAME, (now_wall_s, now_wall_s))
        parent = self._mkdir_safe(self.root, f"{MODELS_DIR}/{name}")
        final = parent / rev
        os.rename(staging, final)
        fsync_dir(parent)
        fsync_dir(staging.parent)
        shutil.rmtree(self.parts_dir(name, rev), ignore_errors=True)
        _rmdir_if_empty(staging.parent)
        return final

    # eviction and use ------------------------------------------------------------------------

    def remove(self, name: str, revision: str, empty_trash: bool = True) -> None:
        """Remove a revision (complete or partial): renamed into ``.trash`` first, so it vanishes
        from its name at once, then deleted (now, or by :meth:`empty_trash`)."""
        for d in (
            self.final_dir(name, revision),
            self.staging_dir(name, revision),
            self.parts_dir(name, revision),
        ):
            self._trash(d)
        for parent in (self.root / MODELS_DIR / name, self.root / PARTIAL_DIR / name):
            _rmdir_if_empty(parent)
        if empty_trash:
            self.empty_trash()

    def touch(self, name: str, revision: str, now_wall_s: float) -> None:
        manifest = self.final_dir(name, revision) / MANIFEST_NAME
        os.utime(manifest, (now_wall_s, now_wall_s), follow_symlinks=False)

    def _trash(self, d: Path) -> None:
        if not os.path.lexists(d):
            return
        dest = self.root / TRASH_DIR / uuid.uuid4().hex
        os.rename(d, dest)
        fsync_dir(d.parent)

    def empty_trash(self) -> None:
        trash = self.root / TRASH_DIR
        for child in trash.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)

    # scanning --------------------------------------------------------------------------------

    def scan(self) -> list[StoredRevision]:
        """Every revision on disk. A writer removes invalid ones (symlinks, missing or resized
        files, a bad manifest) and logs why; a reader skips them, and also skips what vanishes
        while it looks (a reader may scan while the writer commits or evicts)."""
        found: list[StoredRevision] = []
        for complete, top in ((True, MODELS_DIR), (False, PARTIAL_DIR)):
            base = self.root / top
            if not base.is_dir() or base.is_symlink():
                continue
            for name_dir in sorted(base.iterdir()):
                if model_name_problem(name_dir.name) is not None or name_dir.is_symlink():
                    self._drop(name_dir, "not a model name, or a symlink")
                    continue
                try:
                    rev_dirs = sorted(name_dir.iterdir())
                except FileNotFoundError:
                    if self.writer:
                        raise
                    continue
                for rev_dir in rev_dirs:
                    if not complete and rev_dir.name.endswith(".parts"):
                        if not (name_dir / rev_dir.name.removesuffix(".parts")).is_dir():
                            self._drop(rev_dir, "parts of no staged revision")
                        continue
                    try:
                        entry = self._read_revision(name_dir.name, rev_dir, complete)
                    except FileNotFoundError:
                        if self.writer:
                            raise
                        continue
                    if entry is not None:
                        found.append(entry)
        return found

    def _read_revision(self, name: str, rev_dir: Path, complete: bool) -> StoredRevision | None:
        if rev_dir.is_symlink() or not rev_dir.is_dir() or not _is_revision(rev_dir.name):
            self._drop(rev_dir, "not a revision directory, or a symlink")
            return None
        mpath = rev_dir / MANIFEST_NAME
        try:
            if mpath.is_symlink():
                raise ManifestError("the manifest is a symlink")
            manifest = parse_manifest(mpath.read_bytes(), source=str(mpath))
            if manifest.model != name or manifest.revision != rev_dir.name:
                raise ManifestError(f"holds {manifest.model}@{manifest.revision}")
        except (OSError, ManifestError) as e:
            self._drop(rev_dir, f"bad manifest: {e}")
            return None
        if complete:
            problems = _revision_problems(rev_dir, manifest)
            if problems:
                self._drop(rev_dir, problems)
                return None
        elif _has_symlink(rev_dir):
            self._drop(rev_dir, "contains a symlink")
            return None
        return StoredRevision(
            name=name,
            revision=rev_dir.name,
            path=rev_dir,
            size_bytes=manifest.total_bytes,
            last_used_s=os.lstat(mpath).st_mtime,
            complete=complete,
        )

    def read_manifest(self, name: str, revision: str, complete: bool = True) -> Manifest:
        d = self.final_dir(name, revision) if complete else self.staging_dir(name, revision)
        return parse_manifest((d / MANIFEST_NAME).read_bytes(), source=str(d / MANIFEST_NAME))

    def _drop(self, path: Path, why: str) -> None:
        if not self.writer:
            log.warning("cache: ignoring '%s': %s", path, why)
            return
        log.warning("cache: removing '%s': %s", path, why)
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        else:
            self._trash(path)
            self.empty_trash()


def write_file_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary name: write, fsync, rename, fsync the dir."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsync_dir(path.parent)


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _has_symlink(top: Path) -> bool:
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for n in (*dirnames, *filenames):
            if os.path.islink(os.path.join(dirpath, n)):
                return True
    return False


def _revision_problems(rev_dir: Path, manifest: Manifest) -> str:
    """'' if ``rev_dir`` holds exactly the manifest's files as regular files of the right sizes
    (no symlinks, nothing extra); else what is wrong."""
    expected = {f.path: f.size_bytes for f in manifest.files}
    expected[MANIFEST_NAME] = -1
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(rev_dir, followlinks=False):
        rel_dir = os.path.relpath(dirpath, rev_dir)
        for n in (*dirnames, *filenames):
            full = os.path.join(dirpath, n)
            rel = n if rel_dir == "." else f"{rel_dir}/{n}"
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                return f"'{rel}' is a symlink"
            if stat.S_ISDIR(st.st_mode):
                continue
            if rel not in expected:
                return f"'{rel}' is not in the manifest"
            if expected[rel] >= 0 and st.st_size != expected[rel]:
                return f"'{rel}' is {st.st_size} bytes, the manifest says {expected[rel]}"
            seen.add(rel)
    missing = sorted(set(expected) - seen)
    return f"missing {missing[:3]}" if missing else ""
