"""The fleet file's ``share`` (engines per GPU): accepted at 1 (the default, a whole GPU per
engine), refused above in the fleet file's one error format until the simulator prices shared
pools (issue 13's part B)."""

from __future__ import annotations

import pytest

from sim.fleet import FleetError, example_fleet_path, parse_fleet


def test_pools_are_unshared_by_default() -> None:
    fleet = parse_fleet(example_fleet_path().read_text())
    assert {p.share for p in fleet.pools} == {1}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "4",
            "pools[0].share (line 23): value 4: thaw sim does not price shared pools yet "
            "(engines per GPU, the GPU-memory arbiter's sleeps and wakes); accepted: 1",
        ),
        ("0", "pools[0].share (line 23): value 0: must be >= 1"),
    ],
)
def test_a_shared_pool_is_refused_naming_the_field(value: str, expected: str) -> None:
    text = example_fleet_path().read_text()
    text = text.replace("cost_per_hour_usd:", f"share: {value}\n    cost_per_hour_usd:", 1)
    with pytest.raises(FleetError) as e:
        parse_fleet(text, "fleet.yaml")
    assert any(line.startswith(expected) for line in e.value.errors), e.value.errors
