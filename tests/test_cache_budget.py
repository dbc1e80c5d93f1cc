"""Random sequences of ensures, pins and unpins against the real cache (moto's S3 server, real
disk): the bytes on disk never exceed the budget, a pinned model is never evicted, and an ensure
is refused only when the pinned models leave no room."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cache_servers import moto_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel.clock import ManualClock
from model_cache.cache import ModelCache
from model_cache.errors import BudgetError, NotCachedError, PinError
from model_cache.manifest import MANIFEST_NAME
from model_cache.puller import PullConfig
from model_cache.push import push
from model_cache.s3 import S3Client, S3Location
from model_cache.store import Store

BUDGET_BYTES = 100_000
#: model name -> file sizes; the biggest alone fits, any three of the larger ones do not
MODELS = {
    "m0": [10_000],
    "m1": [15_000, 5_000],
    "m2": [30_000],
    "m3": [45_000],
    "m4": [40_000, 20_000, 0],
}
SIZES = {name: sum(sizes) for name, sizes in MODELS.items()}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Client]:
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        c = server.client()
        src = tmp_path_factory.mktemp("src")
        for name, sizes in MODELS.items():
            for i, size in enumerate(sizes):
                (src / name / f"part{i}").parent.mkdir(parents=True, exist_ok=True)
                (src / name / f"part{i}").write_bytes(os.urandom(size))
            push(src / name, S3Location("models", name), c)
        yield c
        c.close()


def disk_bytes(root: Path) -> int:
    """Bytes of model files on disk (complete, staged and partial), manifests and journals aside."""
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for n in filenames:
            if n != MANIFEST_NAME and not n.endswith(".journal") and n != ".lock":
                total += os.lstat(os.path.join(dirpath, n)).st_size
    return total


ops = st.lists(
    st.one_of(
        st.tuples(st.just("ensure"), st.sampled_from(sorted(MODELS)), st.booleans()),
        st.tuples(st.just("unpin"), st.sampled_from(sorted(MODELS)), st.just(False)),
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=ops)
def test_budget_never_exceeded_and_pinned_never_evicted(
    client: S3Client, sequence: list[tuple[str, str, bool]]
) -> None:
    clock = ManualClock(1_000_000.0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cache"
        store = Store.open(root)
        pins = dict.fromkeys(MODELS, 0)
        paths: dict[str, Path] = {}
        cache = ModelCache(
            store,
            client,
            clock,
            budget_bytes=BUDGET_BYTES,
            pull=PullConfig(chunk_bytes=64 * 1024, concurrency=2),
        )
        with cache:
            for op, name, pin in sequence:
                clock.advance(1)
                if op == "ensure":
                    pinned_elsewhere = sum(SIZES[n] for n, k in pins.items() if k and n != name)
                    try:
                        r = cache.ensure(name, f"s3://models/{name}", pin=pin)
                    except BudgetError:
                        assert cache.holds(name) is None
                        assert pinned_elsewhere + SIZES[name] > BUDGET_BYTES
                    else:
                        paths[name] = r.path
                        pins[name] += int(pin)
                        assert r.pins == pins[name]
                else:
                    try:
                        cache.unpin(name)
                    except (PinError, NotCachedError):
                        assert pins[name] == 0
                    else:
                        assert pins[name] > 0
                        pins[name] -= 1
                assert disk_bytes(root) <= BUDGET_BYTES
                assert cache.used_bytes() <= BUDGET_BYTES
                for n, k in pins.items():
                    if k:
                        held = cache.holds(n)
                        assert held is not None and held.pins == k
                        assert (
                            sum(
                                f.stat().st_size
                                for f in paths[n].iterdir()
                                if f.name != MANIFEST_NAME
                            )
                            == SIZES[n]
                        )
        store.close()
