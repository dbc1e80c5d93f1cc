"""The cache's answers as plain values (no I/O), shared by the service, the agent's JSON and the
agent's HTTP client: what a node holds (:class:`CachedModel`) and what an ensure did
(:class:`EnsureResult`), plus the mapping of an ensure's tier to a cold start's load tier."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kernel.vocab import LoadTier

Tier = Literal["hit", "miss"]
State = Literal["ready", "pulling", "partial"]


@dataclass(frozen=True)
class CachedModel:
    """One revision the node holds: ``ready`` (complete, under ``path``), ``pulling`` (a pull is
    running) or ``partial`` (an interrupted pull; the next ensure resumes it)."""

    name: str
    revision: str
    path: Path
    size_bytes: int
    last_used_s: float
    pins: int
    state: State

    @property
    def pinned(self) -> bool:
        return self.pins > 0


@dataclass(frozen=True)
class EnsureResult:
    """The answer to an ensure: where the model is and how it got there."""

    name: str
    revision: str
    path: Path
    tier: Tier  # hit: already on local disk; miss: pulled from S3 (possibly resumed)
    size_bytes: int
    fetched_bytes: int
    resumed_bytes: int
    pull_s: float
    pins: int


#: The cold-start load tier an ensure stands for (``thaw_cold_starts_total{tier}``): a hit loads
#: from the node's disk, a miss pulled from S3 first. (``wake`` never reaches the cache.)
COLD_START_TIER: dict[Tier, LoadTier] = {
    "hit": "local_disk",
    "miss": "remote",
}


def cached_model_to_json(m: CachedModel) -> dict[str, Any]:
    """The agent's JSON for one revision (``GET /v1/models``)."""
    return {
        "id": m.name,
        "object": "model",
        "name": m.name,
        "revision": m.revision,
        "path": str(m.path),
        "size_bytes": m.size_bytes,
        "last_used": m.last_used_s,
        "pins": m.pins,
        "pinned": m.pinned,
        "state": m.state,
    }


def cached_model_from_json(d: dict[str, Any]) -> CachedModel:
    return CachedModel(
        name=str(d["name"]),
        revision=str(d["revision"]),
        path=Path(d["path"]),
        size_bytes=int(d["size_bytes"]),
        last_used_s=float(d["last_used"]),
        pins=int(d["pins"]),
        state=d["state"],
    )


def ensure_result_to_json(r: EnsureResult) -> dict[str, Any]:
    """The agent's JSON for an ensure (``POST /v1/models/{name}/ensure``)."""
    return {
        "name": r.name,
        "revision": r.revision,
        "path": str(r.path),
        "tier": r.tier,
        "size_bytes": r.size_bytes,
        "fetched_bytes": r.fetched_bytes,
        "resumed_bytes": r.resumed_bytes,
        "pull_s": r.pull_s,
        "pins": r.pins,
    }


def ensure_result_from_json(d: dict[str, Any]) -> EnsureResult:
    return EnsureResult(
        name=str(d["name"]),
        revision=str(d["revision"]),
        path=Path(d["path"]),
        tier=d["tier"],
        size_bytes=int(d["size_bytes"]),
        fetched_bytes=int(d["fetched_bytes"]),
        resumed_bytes=int(d["resumed_bytes"]),
        pull_s=float(d["pull_s"]),
        pins=int(d["pins"]),
    )
