"""The pure eviction policy: LRU, never pinned or in-flight, never over budget, a clear error when
the incoming model cannot fit."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_cache.errors import BudgetError
from model_cache.eviction import CacheEntry, choose_evictions


def e(name: str, size: int, used: float, pins: int = 0, in_flight: bool = False) -> CacheEntry:
    return CacheEntry(name, name.ljust(64, "0"), size, used, pins, in_flight)


@pytest.mark.parametrize(
    ("entries", "budget", "incoming", "evicted"),
    [
        ([], 100, 100, []),
        ([e("a", 50, 1)], 100, 50, []),
        ([e("a", 50, 1), e("b", 50, 2)], 100, 1, ["a"]),
        ([e("a", 50, 2), e("b", 50, 1)], 100, 1, ["b"]),
        ([e("a", 10, 1), e("b", 10, 2), e("c", 80, 3)], 100, 15, ["a", "b"]),
        ([e("a", 50, 1, pins=1), e("b", 50, 2)], 100, 50, ["b"]),
        ([e("a", 50, 1, in_flight=True), e("b", 50, 2)], 100, 50, ["b"]),
        ([e("b", 30, 1), e("a", 30, 1)], 60, 30, ["a"]),  # tie on last use: by name
    ],
)
def test_table(entries: list[CacheEntry], budget: int, incoming: int, evicted: list[str]) -> None:
    assert [v.name for v in choose_evictions(entries, budget, incoming)] == evicted


def test_cannot_fit_names_the_numbers_and_the_holders() -> None:
    entries = [e("pinned", 60, 1, pins=2), e("idle", 30, 0)]
    with pytest.raises(BudgetError) as err:
        choose_evictions(entries, 100, 50)
    msg = str(err.value)
    assert "incoming_bytes = 50 does not fit: budget_bytes = 100" in msg
    assert "60 bytes are pinned or being pulled (pinned@" in msg
    assert "at most 40 bytes can be made free" in msg
    assert err.value.status == 507


def test_bigger_than_the_whole_budget() -> None:
    with pytest.raises(BudgetError):
        choose_evictions([], 100, 101)


entries_st = st.lists(
    st.builds(
        CacheEntry,
        name=st.sampled_from(["a", "b", "c", "d", "e", "f"]),
        revision=st.text("0123456789abcdef", min_size=64, max_size=64),
        size_bytes=st.integers(0, 1000),
        last_used_s=st.floats(0, 1e6, allow_nan=False),
        pins=st.integers(0, 2),
        in_flight=st.booleans(),
    ),
    max_size=12,
)


@settings(max_examples=400, deadline=None)
@given(entries=entries_st, budget=st.integers(0, 5000), incoming=st.integers(0, 3000))
def test_invariants(entries: list[CacheEntry], budget: int, incoming: int) -> None:
    held = sum(x.size_bytes for x in entries if not x.evictable)
    used = sum(x.size_bytes for x in entries)
    try:
        victims = choose_evictions(entries, budget, incoming)
    except BudgetError:
        # refused only when evicting every idle entry would still not make room
        assert held + incoming > budget
        return
    # budget respected after the evictions
    assert used - sum(v.size_bytes for v in victims) + incoming <= budget
    # never a pinned or in-flight entry
    assert all(v.pins == 0 and not v.in_flight for v in victims)
    # least recently used first: the victims are a prefix of the idle entries in LRU order
    lru = sorted(
        (x for x in entries if x.evictable), key=lambda x: (x.last_used_s, x.name, x.revision)
    )
    assert victims == lru[: len(victims)]
    # no more than needed: without the last victim it would not fit
    if victims:
        freed_but_last = sum(v.size_bytes for v in victims[:-1])
        assert used - freed_but_last + incoming > budget
