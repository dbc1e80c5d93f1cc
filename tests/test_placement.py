"""Placement: fit, locality, cost per unit of demand, capacity, and the reason when nothing fits."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoscaler.placement import (
    PlacementModel,
    PlacementNode,
    PlacementPool,
    choose,
    fits,
    place,
)

GB = 1_000_000_000
M8 = PlacementModel("llama-8b", weights_bytes=16 * GB, min_kv_bytes=2 * GB)
M70 = PlacementModel("llama-70b", weights_bytes=140 * GB, min_kv_bytes=8 * GB)


def pool(
    name: str,
    mem_gb: int = 80,
    cost: float = 2.0,
    capacity: int = 8,
    nodes: tuple[PlacementNode, ...] = (),
    gpus: int = 1,
) -> PlacementPool:
    return PlacementPool(
        name,
        gpu_memory_bytes=mem_gb * GB,
        cost_per_hour_usd=cost,
        capacity_replicas=capacity,
        gpus_per_replica=gpus,
        nodes=nodes,
    )


def node(name: str, cached: Iterable[str] = (), sleeping: Iterable[str] = ()) -> PlacementNode:
    return PlacementNode(name, cached=frozenset(cached), sleeping=frozenset(sleeping))


def test_fits_counts_weights_plus_min_kv() -> None:
    assert fits(M8, pool("l4", mem_gb=24))
    assert not fits(M8, pool("tiny", mem_gb=17))  # weights alone fit, KV does not
    assert not fits(M70, pool("h100", mem_gb=80))
    assert fits(M70, pool("h100x2", mem_gb=80, gpus=2))


def test_cached_beats_uncached_at_equal_cost() -> None:
    pools = [
        pool("a", nodes=(node("a1"),)),
        pool("b", nodes=(node("b1"), node("b2", cached={"llama-8b"}))),
    ]
    p = place(M8, pools)
    assert p is not None
    assert (p.pool, p.node, p.tier) == ("b", "b2", "local_disk")


def test_wake_beats_local_disk_beats_remote() -> None:
    nodes = (node("n1"), node("n2", cached={"llama-8b"}), node("n3", sleeping={"llama-8b"}))
    p = place(M8, [pool("a", nodes=nodes)])
    assert p is not None and (p.node, p.tier) == ("n3", "wake")
    p = place(M8, [pool("a", nodes=nodes[:2])])
    assert p is not None and (p.node, p.tier) == ("n2", "local_disk")


def test_cheaper_wins_when_both_cached() -> None:
    pools = [
        pool("h100", cost=4.0, nodes=(node("h1", cached={"llama-8b"}),)),
        pool("l40s", mem_gb=48, cost=1.5, nodes=(node("l1", cached={"llama-8b"}),)),
    ]
    p = place(M8, pools)
    assert p is not None and p.pool == "l40s"


def test_cached_beats_cheaper_uncached() -> None:
    pools = [
        pool("cheap", cost=1.0, nodes=(node("c1"),)),
        pool("dear", cost=3.0, nodes=(node("d1", cached={"llama-8b"}),)),
    ]
    p = place(M8, pools)
    assert p is not None and p.pool == "dear"


def test_cost_per_unit_of_demand_served() -> None:
    # h100 costs 2x but serves 3x: cheaper per unit when the demand fills it ...
    pools = [pool("h100", cost=4.0), pool("l40s", mem_gb=48, cost=2.0)]
    rates = {"h100": 30.0, "l40s": 10.0}
    p = place(M8, pools, serve_rate=rates, demand=100.0)
    assert p is not None and p.pool == "h100"
    # ... but a trickle of demand fills neither, and the cheaper replica wins.
    p = place(M8, pools, serve_rate=rates, demand=5.0)
    assert p is not None and p.pool == "l40s"


def test_capacity_respected() -> None:
    pools = [pool("cheap", cost=1.0, capacity=2), pool("dear", cost=3.0, capacity=2)]
    p = place(M8, pools, used={"cheap": 2})
    assert p is not None and p.pool == "dear"
    choice = choose(M8, pools, used={"cheap": 2, "dear": 2})
    assert choice.placement is None
    assert "cheap: full: 2 of 2 replicas" in choice.reason


def test_node_capacity_respected() -> None:
    nodes = (
        PlacementNode("n1", cached=frozenset({"llama-8b"}), capacity_replicas=1),
        PlacementNode("n2", capacity_replicas=1),
    )
    p = place(M8, [pool("a", nodes=nodes)], used_nodes={("a", "n1"): 1})
    assert p is not None and (p.node, p.tier) == ("n2", "remote")


def test_nothing_fits_is_none_with_a_reason() -> None:
    pools = [pool("l4", mem_gb=24), pool("a100", mem_gb=80)]
    choice = choose(M70, pools)
    assert choice.placement is None
    assert place(M70, pools) is None
    assert "llama-70b: no pool can take it" in choice.reason
    assert "l4: does not fit: needs 148000000000 bytes" in choice.reason
    assert "a100: does not fit" in choice.reason
    assert choose(M8, []).reason == "llama-8b: no pool can take it (no pools)"


def test_reason_names_pool_node_and_tier() -> None:
    choice = choose(M8, [pool("a", nodes=(node("n1", cached={"llama-8b"}),))])
    assert choice.reason.startswith("a/n1: fits")
    assert "loads from local_disk" in choice.reason


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gpu_memory_bytes": 0}, "gpu_memory_bytes = 0, must be > 0"),
        ({"gpus_per_replica": 0}, "gpus_per_replica = 0, must be >= 1"),
        ({"cost_per_hour_usd": -1.0}, "cost_per_hour_usd = -1.0, must be >= 0"),
        ({"capacity_replicas": -1}, "capacity_replicas = -1, must be >= 0"),
        ({"usable_memory_ratio": 1.5}, "usable_memory_ratio = 1.5, must be in"),
    ],
)
def test_bad_pool_is_refused(kwargs: dict[str, float], message: str) -> None:
    base: dict[str, float] = {"gpu_memory_bytes": GB, "cost_per_hour_usd": 1.0}
    base["capacity_replicas"] = 1
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        PlacementPool("p", **base)  # type: ignore[arg-type]


def test_bad_model_and_demand_are_refused() -> None:
    with pytest.raises(ValueError, match="weights_bytes = 0, must be > 0"):
        PlacementModel("m", weights_bytes=0)
    with pytest.raises(ValueError, match=r"demand = -1\.0, must be >= 0"):
        choose(M8, [pool("a")], demand=-1.0)


pools_st = st.lists(
    st.builds(
        PlacementPool,
        name=st.sampled_from(["a", "b", "c", "d", "e"]),
        gpu_memory_bytes=st.integers(1, 200 * GB),
        cost_per_hour_usd=st.floats(0, 50),
        capacity_replicas=st.integers(0, 4),
        gpus_per_replica=st.integers(1, 4),
        nodes=st.lists(
            st.builds(
                PlacementNode,
                name=st.sampled_from(["n1", "n2", "n3"]),
                cached=st.frozensets(st.sampled_from(["m", "other"])),
                sleeping=st.frozensets(st.sampled_from(["m", "other"])),
            ),
            max_size=3,
        ).map(tuple),
        usable_memory_ratio=st.floats(0.5, 1.0),
    ),
    max_size=5,
)


@given(
    pools=pools_st,
    weights=st.integers(1, 300 * GB),
    kv=st.integers(0, 20 * GB),
    used=st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e"]), st.integers(0, 5)),
    demand=st.none() | st.floats(0, 1000),
)
def test_never_lands_where_it_does_not_fit_or_is_full(
    pools: list[PlacementPool],
    weights: int,
    kv: int,
    used: dict[str, int],
    demand: float | None,
) -> None:
    model = PlacementModel("m", weights_bytes=weights, min_kv_bytes=kv)
    choice = choose(model, pools, used, demand=demand)
    candidates = [p for p in pools if fits(model, p) and used.get(p.name, 0) < p.capacity_replicas]
    if choice.placement is None:
        assert not candidates
        assert choice.reason
        return
    chosen = [p for p in pools if p.name == choice.placement.pool]
    assert any(fits(model, p) for p in chosen)
    assert model.weights_bytes + model.min_kv_bytes <= max(p.replica_memory_bytes for p in chosen)
    assert used.get(choice.placement.pool, 0) < max(p.capacity_replicas for p in chosen)
    # nothing with a faster load tier was left behind on a pool that could take it
    best_tier = min(
        ["wake", "local_disk", "remote"].index(n.tier("m") if n else "remote")
        for p in candidates
        for n in (p.nodes or (None,))
    )
    assert ["wake", "local_disk", "remote"].index(choice.placement.tier) == best_tier
