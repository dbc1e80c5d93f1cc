"""The fleet file's ``share`` (engines per GPU): 1 by default (a whole GPU per engine); above 1 an
engine takes its share of the GPU's memory, so a model whose weights and longest context do not fit
that share is refused, naming the pool, the share and the figures."""

from __future__ import annotations

import pytest

from sim.fleet import FleetError, example_fleet_path, parse_fleet


def test_pools_are_unshared_by_default() -> None:
    fleet = parse_fleet(example_fleet_path().read_text())
    assert {p.share for p in fleet.pools} == {1}


def shared_h100(value: str) -> str:
    text = example_fleet_path().read_text()
    return text.replace("cost_per_hour_usd:", f"share: {value}\n    cost_per_hour_usd:", 1)


def test_a_pool_shared_two_ways_holds_the_8b_model() -> None:
    fleet = parse_fleet(shared_h100("2"), "fleet.yaml")
    assert fleet.pool("h100").share == 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "4",
            "models[0].pools[1] = 'h100': KV capacity 24923 tokens = (gpu_memory_bytes "
            "85899345920 x the engine's share of a GPU shared 4 ways "
            "(models[].gpu_memory_utilization_ratio, else speed.memory_utilization_ratio / "
            "share) 0.225 - weights_bytes 16060522496) / kv_bytes_per_token 131072, must be >= "
            "perf.max_model_len_tokens (32768)",
        ),
        ("0", "pools[0].share (line 23): value 0: must be >= 1"),
        ("65", "pools[0].share (line 23): value 65: must be <= 64"),
    ],
)
def test_a_share_that_cannot_hold_a_model_is_refused_naming_the_field(
    value: str, expected: str
) -> None:
    with pytest.raises(FleetError) as e:
        parse_fleet(shared_h100(value), "fleet.yaml")
    assert any(line.startswith(expected) for line in e.value.errors), e.value.errors
