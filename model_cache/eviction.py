"""The eviction policy (pure): which cached models to delete so that an incoming one fits.

Owns the rule and nothing else: least recently used first, never a pinned entry (pin count > 0)
nor one being pulled, and when the incoming model cannot fit even after evicting every evictable
entry, a :class:`~model_cache.errors.BudgetError` that says why, rather than going over budget.
No I/O, no clock: ``last_used_s`` comes in with each entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from model_cache.errors import BudgetError


@dataclass(frozen=True)
class CacheEntry:
    """One model revision on disk (complete, or a partial pull), as the policy sees it."""

    name: str
    revision: str
    size_bytes: int
    last_used_s: float
    pins: int = 0
    in_flight: bool = False

    @property
    def evictable(self) -> bool:
        return self.pins == 0 and not self.in_flight


def choose_evictions(
    entries: Sequence[CacheEntry], budget_bytes: int, incoming_bytes: int
) -> list[CacheEntry]:
    """The entries to evict, oldest use first, so that ``used + incoming <= budget``.

    ``entries`` are all the bytes the cache holds or has reserved; ``incoming_bytes`` is what is
    about to be added. Raises :class:`BudgetError` when even evicting every unpinned, idle entry
    would not make room. Ties in ``last_used_s`` break by name, then revision (deterministic).
    """
    if budget_bytes < 0 or incoming_bytes < 0:
        raise ValueError(
            f"budget_bytes = {budget_bytes}, incoming_bytes = {incoming_bytes}: must be >= 0"
        )
    used = sum(e.size_bytes for e in entries)
    excess = used + incoming_bytes - budget_bytes
    if excess <= 0:
        return []
    candidates = sorted(
        (e for e in entries if e.evictable), key=lambda e: (e.last_used_s, e.name, e.revision)
    )
    chosen: list[CacheEntry] = []
    freed = 0
    for e in candidates:
        if freed >= excess:
            break
        chosen.append(e)
        freed += e.size_bytes
    if freed < excess:
        held = sum(e.size_bytes for e in entries if not e.evictable)
        raise BudgetError(
            f"incoming_bytes = {incoming_bytes} does not fit: budget_bytes = {budget_bytes}, "
            f"{held} bytes are pinned or being pulled ({_names(entries)}); "
            f"at most {max(budget_bytes - held, 0)} bytes can be made free",
            param="budget_bytes",
        )
    return chosen


def _names(entries: Sequence[CacheEntry]) -> str:
    held = [f"{e.name}@{e.revision[:12]}" for e in entries if not e.evictable]
    return ", ".join(held) if held else "none"
