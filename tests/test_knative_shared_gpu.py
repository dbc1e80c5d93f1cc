"""The controller's warm-pool plan on shared GPUs (knative/shared_gpu.py), table by table: what
the arbiter's steps become on a cluster (sleep, wake, stop through pod-deletion-cost, retire,
start through the scale), and each revision's scale."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.policy import WarmPoolConfig
from knative.shared_gpu import EnginePod, RevisionWant, SharedPool, plan_shared

GIB = 2**30
POOLS = {"shared": SharedPool(80 * GIB)}
WARM = WarmPoolConfig(enabled=True, sleep_level=1, max_sleeping=1)
A = ("llm", "a-00001")
B = ("llm", "b-00001")
BIG = 48 * GIB  # 0.6 of the GPU: one awake at a time


def pod(name: str, rev: tuple[str, str], node: str = "n1", **kw: object) -> EnginePod:
    return EnginePod(name=name, revision=rev, node=node, address="10.0.0.1", **kw)  # type: ignore[arg-type]


def want(rev: tuple[str, str], replicas: int, awake: int | None, **kw: object) -> RevisionWant:
    fields: dict[str, object] = {"awake_bytes": BIG, "warm_pool": WARM, **kw}
    return RevisionWant(rev, "shared", replicas, awake, **fields)  # type: ignore[arg-type]


def kinds(actions: tuple[object, ...]) -> list[tuple[str, str | None]]:
    return [(a.kind, a.pod) for a in actions]  # type: ignore[attr-defined]


def test_a_wanted_model_on_a_full_gpu_sleeps_the_idle_one_first_then_starts() -> None:
    plan = plan_shared(
        [pod("a1", A, ready=True, asleep=False)],
        [want(A, 1, None), want(B, 0, 1, waiting=3)],
        POOLS,
        100.0,
    )
    assert kinds(plan.frees) == [("sleep", "a1")]
    assert kinds(plan.gains) == [("start", None)]
    assert plan.scale_after_frees == {}
    assert plan.scale_after_gains == {B: 1}  # A keeps its sleeper: awake + asleep


def test_without_waiting_requests_nothing_is_taken_from_another_model() -> None:
    plan = plan_shared(
        [pod("a1", A, ready=True, asleep=False)],
        [want(A, 1, None), want(B, 0, 1, waiting=0)],
        POOLS,
        100.0,
    )
    assert plan.frees == () and plan.gains == ()
    assert [u.model for g in plan.gpus for u in g.plan.unmet] == ["llm/b-00001"]


def test_a_sleeper_is_woken_not_a_new_pod_started_at_the_level_thaw_sent() -> None:
    for level, sent in ((1, 1), (2, 2), (None, 2)):  # unknown: level 2 (reload the weights)
        plan = plan_shared(
            [pod("a1", A, asleep=True, sleep_level=level)],
            [want(A, 1, 1, waiting=1)],
            POOLS,
            100.0,
        )
        assert [(a.kind, a.pod, a.level) for a in plan.gains] == [("wake", "a1", sent)]
        assert plan.scale_after_gains == {} and plan.scale_after_frees == {}


def test_a_stop_marks_the_pod_and_scales_down() -> None:
    cold = WarmPoolConfig()  # warm pool off: surplus engines stop
    plan = plan_shared(
        [pod("a1", A, ready=True, asleep=False), pod("a2", A, ready=True, asleep=False, load=2.0)],
        [want(A, 2, 1, warm_pool=cold)],
        POOLS,
        100.0,
    )
    assert kinds(plan.frees) == [("stop", "a1")]  # the idle one
    assert plan.scale_after_frees == {A: 1}


def test_a_ready_pod_to_stop_beside_an_unready_one_is_retired_first() -> None:
    """The ReplicaSet deletes unready pods before it reads the deletion cost: stopping ready a2
    beside sleeper a1 would delete a1. a2 sleeps (level 2) and is stopped on a later tick."""
    full = WarmPoolConfig(enabled=True, max_sleeping=1)
    plan = plan_shared(
        [
            pod("a1", A, asleep=True, sleep_level=1, since_s=50.0),
            pod("a2", A, ready=True, asleep=False),
        ],
        [want(A, 2, 0, warm_pool=full)],
        POOLS,
        100.0,
    )
    assert [(a.kind, a.pod, a.level) for a in plan.frees] == [("retire", "a2", 2)]
    assert plan.scale_after_frees == {}


def test_a_pod_slept_in_the_same_plan_counts_as_unready() -> None:
    plan = plan_shared(
        [pod("a1", A, ready=True, asleep=False), pod("a2", A, ready=True, asleep=False)],
        [want(A, 2, 0, warm_pool=WarmPoolConfig(enabled=True, max_sleeping=1))],
        POOLS,
        100.0,
    )
    assert sorted(kinds(plan.frees)) == [("retire", "a2"), ("sleep", "a1")]
    assert plan.scale_after_frees == {}  # a2 is stopped once unready, on a later tick


def test_a_pod_marked_to_stop_is_stopped_never_woken() -> None:
    plan = plan_shared(
        [pod("a1", A, asleep=True, sleep_level=2, stopping=True)],
        [want(A, 1, 1, waiting=1)],
        POOLS,
        100.0,
    )
    assert kinds(plan.frees) == [("stop", "a1")]
    assert kinds(plan.gains) == [("start", None)]
    assert plan.scale_after_frees == {A: 0} and plan.scale_after_gains == {A: 1}


def test_a_pod_being_deleted_holds_its_memory_until_gone() -> None:
    plan = plan_shared(
        [pod("a1", A, ready=True, deleting=True)],
        [want(A, 0, None), want(B, 0, 1, waiting=2)],
        POOLS,
        100.0,
    )
    assert plan.gains == ()  # a1 still holds 0.6 of the GPU
    assert [u.model for g in plan.gpus for u in g.plan.unmet] == ["llm/b-00001"]


def test_pods_asked_for_and_not_created_yet_count_as_starting() -> None:
    plan = plan_shared([], [want(A, 1, 1)], POOLS, 100.0)
    assert plan.gains == () and plan.frees == ()
    # ... and hold their memory: B cannot start beside them.
    plan = plan_shared([], [want(A, 1, 1), want(B, 0, 1, waiting=1)], POOLS, 100.0)
    assert plan.gains == ()


def test_a_wake_goes_to_the_gpu_of_the_sleeper() -> None:
    """Two nodes (one GPU each): A is awake on n1 and asleep on n2; a second awake A wakes n2's."""
    plan = plan_shared(
        [
            pod("a1", A, node="n1", ready=True, asleep=False),
            pod("a2", A, node="n2", asleep=True, sleep_level=1),
        ],
        [want(A, 2, 2, waiting=0)],
        POOLS,
        100.0,
    )
    assert kinds(plan.gains) == [("wake", "a2")]
    assert [g.gpu for g in plan.gpus if g.gains] == [("shared", "n2")]


def test_a_start_goes_to_the_gpu_with_most_room() -> None:
    plan = plan_shared(
        [pod("a1", A, node="n1", ready=True, asleep=False), pod("b1", B, node="n2", ready=True)],
        [want(A, 1, 2, awake_bytes=20 * GIB), want(B, 1, None, awake_bytes=40 * GIB)],
        POOLS,
        100.0,
    )
    assert [g.gpu for g in plan.gpus if g.gains] == [("shared", "n1")]
    assert plan.scale_after_gains == {A: 2}


def test_a_revision_off_the_shared_pools_is_left_alone() -> None:
    w = RevisionWant(A, "h100", 1, 0, BIG)
    plan = plan_shared([pod("a1", A, ready=True)], [w], POOLS, 100.0)
    assert plan.gpus == ()


UNSHARED = {"l4": SharedPool(24 * GIB, unshared=True)}


def test_on_an_unshared_pool_the_warm_pool_sleeps_and_wakes_each_engine_on_its_own_gpu() -> None:
    """share 1: every engine has a GPU of its own, asleep too (no GPU-hours saved, the start
    latency is); a model's demand never takes another model's engine."""
    a = RevisionWant(A, "l4", 1, 0, 20 * GIB, warm_pool=WARM)
    b = RevisionWant(B, "l4", 0, 1, 20 * GIB, waiting=4, warm_pool=WARM)
    plan = plan_shared([pod("a1", A, ready=True, asleep=False)], [a, b], UNSHARED, 100.0)
    assert kinds(plan.frees) == [("sleep", "a1")]  # A's own scale-down, not room for B
    assert kinds(plan.gains) == [("start", None)]
    assert plan.scale_after_gains == {B: 1} and plan.scale_after_frees == {}
    a_busy = RevisionWant(A, "l4", 1, None, 20 * GIB, warm_pool=WARM)
    plan = plan_shared([pod("a1", A, ready=True, asleep=False)], [a_busy, b], UNSHARED, 100.0)
    assert plan.frees == () and kinds(plan.gains) == [("start", None)]


def test_on_an_unshared_pool_more_engines_wake_the_sleepers_then_start_each_on_a_new_gpu() -> None:
    a = RevisionWant(A, "l4", 2, 3, 20 * GIB, warm_pool=WARM)
    plan = plan_shared(
        [pod("a1", A, ready=True, asleep=False), pod("a2", A, asleep=True, sleep_level=1)],
        [a],
        UNSHARED,
        100.0,
    )
    assert sorted(kinds(plan.gains), key=str) == [("start", None), ("wake", "a2")]
    assert plan.scale_after_gains == {A: 3}


# -- invariants -------------------------------------------------------------------------------


REVS = (A, B, ("llm", "c-00001"))


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[EnginePod], list[RevisionWant]]:
    pods: list[EnginePod] = []
    wants: list[RevisionWant] = []
    for r, rev in enumerate(REVS):
        n = draw(st.integers(0, 3))
        for i in range(n):
            state = draw(st.sampled_from(["ready", "starting", "asleep", "deleting"]))
            pods.append(
                EnginePod(
                    name=f"{rev[1]}-{i}",
                    revision=rev,
                    node=draw(st.sampled_from(["n1", "n2"])),
                    address=f"10.0.{r}.{i}",
                    ready=(state in ("ready", "asleep") and draw(st.booleans()))
                    or state == "ready",
                    deleting=state == "deleting",
                    asleep=state == "asleep",
                    sleep_level=draw(st.sampled_from([1, 2, None])) if state == "asleep" else None,
                    stopping=draw(st.booleans()) and state == "asleep",
                    load=draw(st.sampled_from([0.0, 0.0, 2.0])),
                    since_s=float(draw(st.integers(0, 1000))),
                )
            )
        live = sum(1 for p in pods if p.revision == rev and not p.deleting)
        wants.append(
            RevisionWant(
                rev,
                "shared",
                live + draw(st.integers(0, 1)),
                draw(st.one_of(st.none(), st.integers(0, 3))),
                draw(st.sampled_from([20 * GIB, 30 * GIB, 48 * GIB])),
                draw(st.integers(0, 3)),
                WarmPoolConfig(
                    enabled=draw(st.booleans()),
                    max_sleeping=draw(st.integers(0, 2)),
                    sleep_ttl_s=float(draw(st.integers(1, 2000))),
                ),
            )
        )
    return pods, wants


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_plan_invariants(world: tuple[list[EnginePod], list[RevisionWant]]) -> None:
    """Every action names a pod of its revision once; wakes are of sleepers Thaw did not mark
    to stop; sleeps and retires are of awake pods; a retire is of a ready pod beside an unready
    one; each revision's scale is its replicas less its stops plus its starts."""
    pods, wants = world
    plan = plan_shared(pods, wants, POOLS, 1000.0)
    by_name = {p.name: p for p in pods}
    named = [a.pod for a in (*plan.frees, *plan.gains) if a.pod is not None]
    assert len(named) == len(set(named)), plan
    for a in plan.gains:
        if a.kind == "wake":
            p = by_name[a.pod or ""]
            assert p.asleep and not p.stopping and not p.deleting and p.revision == a.revision
    for a in plan.frees:
        if a.kind in ("sleep", "retire"):
            p = by_name[a.pod or ""]
            assert not p.asleep and not p.deleting and p.revision == a.revision
        if a.kind == "retire":
            assert by_name[a.pod or ""].ready
    for w in wants:
        stops = sum(1 for a in plan.frees if a.kind == "stop" and a.revision == w.revision)
        starts = sum(1 for a in plan.gains if a.kind == "start" and a.revision == w.revision)
        mid = plan.scale_after_frees.get(w.revision, w.spec_replicas)
        assert mid == w.spec_replicas - stops
        assert plan.scale_after_gains.get(w.revision, mid) == mid + starts
