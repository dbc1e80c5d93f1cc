"""The activator's routing choice, pure: which ready replica gets the next request.

A function of snapshots (the ready replicas with their last scraped metrics, and the activator's
own count of outstanding requests per replica), no I/O and no state, so it is tested by tables.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from activator.types import Replica


def choose_replica(
    replicas: Sequence[Replica],
    outstanding: Mapping[str, int],
    exclude: Collection[str] = (),
    max_outstanding: int | None = None,
) -> Replica | None:
    """The replica with the fewest outstanding requests (counted by the activator); ties go to
    the lower ``kv_cache_usage_ratio``, then the fewer ``num_requests_waiting`` (an unscraped
    metric counts as 0: a fresh replica is empty), then the first listed. A replica in
    ``exclude`` (tried, or ejected) or with ``max_outstanding`` requests already is skipped.
    ``None`` when every replica is skipped or there is none."""
    best: Replica | None = None
    best_key: tuple[int, float, float] | None = None
    for r in replicas:
        if r.replica_id in exclude:
            continue
        n = outstanding.get(r.replica_id, 0)
        if max_outstanding is not None and n >= max_outstanding:
            continue
        key = (
            n,
            r.kv_cache_usage_ratio if r.kv_cache_usage_ratio is not None else 0.0,
            r.num_requests_waiting if r.num_requests_waiting is not None else 0.0,
        )
        if best_key is None or key < best_key:
            best, best_key = r, key
    return best


def free_slots(
    replicas: Sequence[Replica],
    outstanding: Mapping[str, int],
    exclude: Collection[str],
    max_outstanding: int,
) -> int:
    """Requests the replicas not in ``exclude`` can take now before ``max_outstanding`` each."""
    free = 0
    for r in replicas:
        if r.replica_id not in exclude:
            free += max(0, max_outstanding - outstanding.get(r.replica_id, 0))
    return free
