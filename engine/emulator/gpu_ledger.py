"""The emulated GPU's memory ledger: emulators started with the same ``--gpu-id`` share one GPU.

A real GPU refuses an engine that does not fit: vLLM fails at start when less than
``gpu_memory_utilization`` x the GPU's memory is free, and a wake whose weights and KV cache do not
fit runs out of memory. The emulator has no GPU, so the emulators of one "GPU" keep its account in
one small JSON file, ``DIR/gpu-<id>.json``, read and written under an exclusive ``flock`` on
``DIR/gpu-<id>.lock``: each emulator's entry holds the bytes it takes (awake: its
``gpu_memory_utilization`` x ``gpu_memory_bytes``; asleep: nothing). :meth:`GpuLedger.take`
refuses (:class:`GpuOutOfMemory`) what would take the GPU over its memory, so a plan that wakes
before it sleeps fails a test the way it would fail on a GPU.

Entries of processes that are gone (killed, crashed) are dropped at every transaction, so a dead
emulator never holds memory. Every emulator of one GPU must declare the same ``gpu_memory_bytes``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel.errors import ThawError

log = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class GpuOutOfMemory(ThawError):
    """Taking this memory would exceed the emulated GPU's (the message says by how much)."""


class GpuLedgerError(ThawError):
    """The ledger cannot be used as asked (a bad id, another GPU size, an unreadable file)."""


@dataclass(frozen=True)
class LedgerEntry:
    """One emulator's share of the GPU."""

    pid: int
    name: str
    bytes: int


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class GpuLedger:
    """One emulator's handle on the shared account of GPU ``gpu_id``."""

    def __init__(
        self, directory: Path, gpu_id: str, memory_bytes: int, name: str, pid: int | None = None
    ) -> None:
        if not _ID.match(gpu_id):
            raise GpuLedgerError(
                f"--gpu-id = {gpu_id!r}: accepted: 1 to 64 letters, digits, '.', '_' or '-'"
            )
        if memory_bytes <= 0:
            raise GpuLedgerError(f"--gpu-memory-bytes = {memory_bytes}, must be > 0")
        self.directory = Path(directory)
        self.gpu_id = gpu_id
        self.memory_bytes = memory_bytes
        self.name = name
        self.pid = os.getpid() if pid is None else pid
        self.path = self.directory / f"gpu-{gpu_id}.json"
        self._lock_path = self.directory / f"gpu-{gpu_id}.lock"

    # -- transactions -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The ledger's content under the exclusive lock; written back when the block ends."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                doc = self._read()
                declared = doc.get("memory_bytes")
                if declared is not None and declared != self.memory_bytes and doc["engines"]:
                    raise GpuLedgerError(
                        f"--gpu-memory-bytes = {self.memory_bytes}: GPU {self.gpu_id!r} was "
                        f"declared with {declared} bytes by the emulators already on it "
                        f"({self.path}); accepted: {declared}"
                    )
                doc["memory_bytes"] = self.memory_bytes
                doc["engines"] = {k: v for k, v in doc["engines"].items() if _alive(int(v["pid"]))}
                yield doc
                tmp = self.path.with_suffix(f".tmp-{self.pid}")
                tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
                tmp.replace(self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"memory_bytes": None, "engines": {}}
        except (OSError, ValueError) as e:
            raise GpuLedgerError(f"GPU ledger {self.path} is unreadable: {e}") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("engines"), dict):
            raise GpuLedgerError(f"GPU ledger {self.path} is not a ledger: {doc!r:.80}")
        return doc

    # -- the emulator's calls ---------------------------------------------------------------

    def hold(self, nbytes: int, why: str) -> None:
        """Hold ``nbytes`` from now on (more or less than before); raise :class:`GpuOutOfMemory`
        and keep the old amount if the GPU cannot give that much."""
        with self._locked() as doc:
            engines: dict[str, Any] = doc["engines"]
            key = str(self.pid)
            others = sum(int(v["bytes"]) for k, v in engines.items() if k != key)
            if others + nbytes > self.memory_bytes:
                free = self.memory_bytes - others
                holders = ", ".join(
                    f"{v['name']} (pid {v['pid']}) {v['bytes']}"
                    for k, v in sorted(engines.items())
                    if k != key and int(v["bytes"]) > 0
                )
                msg = (
                    f"emulated GPU {self.gpu_id!r} out of memory: {why} needs {nbytes} bytes, "
                    f"{free} of {self.memory_bytes} free (held: {holders or 'nothing'})"
                )
                log.error("gpu ledger: refused: %s", msg)
                raise GpuOutOfMemory(msg)
            engines[key] = {"pid": self.pid, "name": self.name, "bytes": nbytes}

    def release(self) -> None:
        """Give everything back (the emulator stops)."""
        with self._locked() as doc:
            doc["engines"].pop(str(self.pid), None)

    def entries(self) -> list[LedgerEntry]:
        """Every live emulator's share, by pid."""
        with self._locked() as doc:
            return [
                LedgerEntry(int(v["pid"]), str(v["name"]), int(v["bytes"]))
                for _, v in sorted(doc["engines"].items())
            ]

    def used_bytes(self) -> int:
        return sum(e.bytes for e in self.entries())
