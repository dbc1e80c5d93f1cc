"""The activator's routing choice (pure): least outstanding, then KV usage, then waiting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from activator.routing import choose_replica
from activator.types import Replica


def r(rid: str, kv: float | None = None, waiting: float | None = None) -> Replica:
    return Replica(replica_id=rid, base_url=f"http://{rid}", kv_cache_usage_ratio=kv,
                   num_requests_waiting=waiting)  # fmt: skip


CASES = [
    # (name, replicas, outstanding, exclude, expected)
    ("none ready", [], {}, (), None),
    ("the only one", [r("a")], {}, (), "a"),
    ("fewest outstanding wins", [r("a"), r("b")], {"a": 2, "b": 1}, (), "b"),
    ("outstanding beats kv", [r("a", kv=0.0), r("b", kv=0.9)], {"a": 1}, (), "b"),
    ("tie: lower kv", [r("a", kv=0.5), r("b", kv=0.2)], {}, (), "b"),
    ("tie on kv: fewer waiting", [r("a", 0.2, 3), r("b", 0.2, 1)], {}, (), "b"),
    ("kv beats waiting", [r("a", 0.1, 9), r("b", 0.2, 0)], {}, (), "a"),
    ("unscraped counts as empty", [r("a", 0.3, 0), r("b")], {}, (), "b"),
    ("full tie: first listed", [r("a", 0.1, 1), r("b", 0.1, 1)], {"a": 1, "b": 1}, (), "a"),
    ("excluded is skipped", [r("a"), r("b", kv=0.9)], {}, ("a",), "b"),
    ("all excluded", [r("a"), r("b")], {}, ("a", "b"), None),
    ("outstanding of others ignored", [r("a")], {"zzz": 0, "a": 5}, (), "a"),
]


@pytest.mark.parametrize(
    ("replicas", "outstanding", "exclude", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_choose_replica(
    replicas: list[Replica],
    outstanding: dict[str, int],
    exclude: tuple[str, ...],
    expected: str | None,
) -> None:
    got = choose_replica(replicas, outstanding, exclude)
    assert (got.replica_id if got else None) == expected


REPLICAS = st.lists(
    st.builds(
        r,
        st.sampled_from("abcdefgh"),
        st.none() | st.floats(0, 1),
        st.none() | st.floats(0, 100),
    ),
    max_size=8,
    unique_by=lambda x: x.replica_id,
)


@given(
    replicas=REPLICAS,
    outstanding=st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 5)),
    exclude=st.sets(st.sampled_from("abcdefgh")),
)
def test_the_choice_is_minimal_and_never_excluded(
    replicas: list[Replica], outstanding: dict[str, int], exclude: set[str]
) -> None:
    def key(x: Replica) -> tuple[int, float, float]:
        return (
            outstanding.get(x.replica_id, 0),
            x.kv_cache_usage_ratio or 0.0,
            x.num_requests_waiting or 0.0,
        )

    allowed = [x for x in replicas if x.replica_id not in exclude]
    got = choose_replica(replicas, outstanding, exclude)
    if not allowed:
        assert got is None
    else:
        assert got is not None and got in allowed
        assert all(key(got) <= key(x) for x in allowed)
